"""PruneConfig: one options object, checked at construction, serialised, and the source of the CLI's options."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from hf_prune import PruneConfig
from hf_prune.errors import PruningError
from hf_prune.cli import add_prune_arguments, build_parser, config_from_args
from hf_prune.presets import METHODS


def test_defaults_round_trip_through_dict_and_file(tmp_path):
    config = PruneConfig(target_sparsity=[0.4, 0.2], method="llm-pruner", keep_dense=[0, 5], steps=3)
    assert config.target_sparsity == (0.2, 0.4) and config.keep_dense == (0, 5)  # normalised
    assert PruneConfig.from_dict(config.to_dict()) == config
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()  # JSON-ready
    path = config.save(tmp_path)  # a folder gets prune_config.json
    assert path == tmp_path / "prune_config.json" and PruneConfig.load(tmp_path) == config


def test_resolved_fills_what_the_method_decides():
    resolved = PruneConfig(method="gisp", layer_balance=0.5).resolved()
    preset = METHODS["gisp"]
    assert (resolved.importance, resolved.allocation, resolved.normalization, resolved.steps,
            resolved.attention_weight) == (preset.importance, preset.allocation, preset.normalization, preset.steps,
                                           preset.attention_weight)
    assert resolved.layer_balance == 0.5  # an explicit value wins over the preset
    assert PruneConfig(method="gisp").fingerprint() == PruneConfig(method="gisp", steps=preset.steps).fingerprint()
    assert PruneConfig(method="gisp").fingerprint() != PruneConfig(method="gisp", steps=2).fingerprint()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"target_sparsity": 1.5}, r"target_sparsity must be in \(0, 1\)"),
        ({"target_sparsity": ()}, "names no level"),
        ({"target_sparsity": (0.3, 0.30001)}, "too close"),
        ({"target_sparsity": (0.3, 0.2, 0.3)}, "target_sparsity lists 0.3 more than once"),
        ({"method": "nope"}, "Unknown method 'nope'"),
        ({"importance": "nope"}, "Unknown importance criterion 'nope'"),
        ({"allocation": "diagonal"}, "Unknown allocation 'diagonal'"),
        ({"normalization": "z"}, "Unknown normalization 'z'"),
        ({"schedule": "cubic"}, "Unknown schedule 'cubic'"),
        ({"objective": "bleu"}, "Unknown objective 'bleu'"),
        ({"num_samples": 0}, "num_samples must be a positive integer"),
        ({"seq_len": 2.5}, "seq_len must be a positive integer"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"min_heads": -1}, "min_heads must be an integer >= 0"),
        ({"attention_weight": 0}, "attention_weight must be a number > 0"),
        ({"attention_weight": float("inf")}, "attention_weight must be a number > 0"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"compensation_damping": None}, "compensation_damping must be a number >= 0"),
        ({"layer_balance": -1}, "layer_balance must be a number >= 0"),
        ({"keep_dense": "first"}, "keep_dense must be a list of layer indices or 'gisp'"),
        ({"keep_dense": [0, -2]}, "keep_dense must be a list"),
        ({"channel_multiple": 0}, "channel_multiple must be a positive integer"),
        ({"channel_multiple": "fast"}, "channel_multiple must be a positive integer"),
    ],
)
def test_invalid_options_are_refused_at_construction(overrides, message):
    with pytest.raises(PruningError, match=message):
        PruneConfig(**overrides)
    with pytest.raises(PruningError, match=message):  # replace() checks too
        PruneConfig().replace(**overrides)


def test_unknown_options_and_unrestorable_callables_are_refused():
    with pytest.raises(PruningError, match=r"unknown PruneConfig option\(s\) \['num_sample'\]"):
        PruneConfig.coerce(None, num_sample=3)
    with pytest.raises(PruningError, match="unknown PruneConfig option"):
        PruneConfig.from_dict({"target_sparsity": [0.3], "spice": 1})
    saved = PruneConfig(objective=lambda model, batch: 0.0).to_dict()
    assert saved["objective"].startswith("callable:")
    with pytest.raises(PruningError, match="objective was a callable"):
        PruneConfig.from_dict(saved)


def test_every_option_is_on_the_command_line_with_its_default():
    prune = argparse.ArgumentParser()
    add_prune_arguments(prune)
    by_dest = {a.dest: a for a in prune._actions}
    parser = build_parser()
    for f in dataclasses.fields(PruneConfig):
        if not f.metadata["cli"]:
            # callables have no command-line form; the resolved decoder parameters are set by hf-prune itself
            assert f.name in ("objective", "resolved_decoder_params")
            continue
        if f.name == "recovery":  # a nested config: one option per RecoveryConfig field (next test)
            continue
        action = by_dest["sparsity" if f.name == "target_sparsity" else f.name]
        assert f.metadata["help"].replace("%", "%%") in action.help
        if f.name != "target_sparsity":
            assert action.default == f.default, f.name
    # Nothing on the command line gives the dataclass defaults; values map onto the fields.
    assert config_from_args(parser.parse_args(["prune", "m"])) == PruneConfig()
    args = parser.parse_args(["prune", "m", "--sparsity", "0.25,0.5*", "--method", "wanda-sp", "--keep-dense", "0,3",
                              "--attention-weight", "2", "--gradient-checkpointing", "--num-samples", "16"])
    assert config_from_args(args) == PruneConfig(target_sparsity=(0.25, 0.5), method="wanda-sp", keep_dense=(0, 3),
                                                 attention_weight=2.0, gradient_checkpointing=True, num_samples=16)


def test_every_recovery_option_is_on_the_command_line():
    from hf_prune import RecoveryConfig
    from hf_prune.errors import RecoveryError
    from hf_prune.recovery.config import cli_flag

    prune = argparse.ArgumentParser()
    add_prune_arguments(prune)
    by_flag = {s: a for a in prune._actions for s in a.option_strings}
    for f in dataclasses.fields(RecoveryConfig):
        action = by_flag[cli_flag(f)]
        assert action.dest == "recovery_" + f.name and f.metadata["help"].replace("%", "%%") in action.help
    parser = build_parser()
    assert config_from_args(parser.parse_args(["prune", "m", "--recovery", "none"])).recovery is None
    args = parser.parse_args(["prune", "m", "--recovery", "kd", "--recovery-tokens", "62.5k", "--recovery-lr", "2e-4",
                              "--recovery-lora", "--recovery-lora-r", "8", "--no-recovery-allow-repeat",
                              "--recovery-seq-len", "128"])
    assert config_from_args(args).recovery == RecoveryConfig(tokens=62_500, learning_rate=2e-4, lora=True, lora_r=8,
                                                             allow_repeat=False, seq_len=128)
    lora_auto = parser.parse_args(["prune", "m", "--recovery", "kd", "--recovery-lr", "auto", "--recovery-lora"])
    assert config_from_args(lora_auto).recovery == RecoveryConfig(learning_rate="auto", lora=True)
    # Nothing but --recovery: the RecoveryConfig defaults.
    assert config_from_args(parser.parse_args(["prune", "m", "--recovery", "lm"])).recovery == RecoveryConfig(method="lm")
    with pytest.raises(RecoveryError, match="--recovery-lr, --recovery-tokens need.s. --recovery kd or --recovery lm"):
        config_from_args(parser.parse_args(["prune", "m", "--recovery-tokens", "1M", "--recovery-lr", "1e-4"]))
