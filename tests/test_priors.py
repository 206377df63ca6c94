"""``attention_weight`` / ``layer_balance`` = "auto": priors chosen per model by held-back calibration loss."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from test_push import make_tiny_base
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_prune import CalibrationMix, PruneConfig, compensate, prune
from hf_prune.cli import build_parser, config_from_args
from hf_prune.engine.allocation import allocate
from hf_prune.engine.presets import AUTO_ATTENTION_WEIGHTS, AUTO_LAYER_BALANCES
from hf_prune.engine.priors import candidates, holdout_windows
from hf_prune.engine.pruner import Pruner
from hf_prune.engine.structures import ModelGeometry
from hf_prune.errors import PruningError
from hf_prune.format.slicing import apply_plan

FAST = dict(num_samples=8, seq_len=32, batch_size=4, compensation=None, show_progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    paths = make_tiny_base(tmp_path_factory.mktemp("priors"))
    model = AutoModelForCausalLM.from_pretrained(paths["base"]).eval()
    return model, AutoTokenizer.from_pretrained(paths["base"]), CalibrationMix.parse(paths["calibration"])


def _loss(model, windows: torch.Tensor) -> float:
    """Mean next-token cross-entropy over windows, computed here without the engine's helpers."""
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1]
    per_window = F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none").mean(1)
    return float(per_window.mean())


def test_config_accepts_auto_and_the_cli_parses_it():
    config = PruneConfig(attention_weight="auto", layer_balance="auto").resolved()
    assert (config.attention_weight, config.layer_balance) == ("auto", "auto")
    for bad in ({"attention_weight": "automatic"}, {"layer_balance": -1}, {"attention_weight": 0}):
        with pytest.raises(PruningError, match="or 'auto'"):
            PruneConfig(**bad)
    args = build_parser().parse_args(["prune", "m", "--attention-weight", "auto", "--layer-balance", "1.5"])
    assert (config_from_args(args).attention_weight, config_from_args(args).layer_balance) == ("auto", 1.5)
    assert candidates("auto", 3.0) == [(w, 3.0) for w in AUTO_ATTENTION_WEIGHTS]
    assert len(candidates("auto", "auto")) == len(AUTO_ATTENTION_WEIGHTS) * len(AUTO_LAYER_BALANCES)


def test_held_back_windows_are_disjoint_from_the_scoring_windows(tiny):
    _, tokenizer, mix = tiny
    scoring = mix.sample(tokenizer, 8, 32, seed=0).input_ids
    held = holdout_windows(mix, tokenizer, 8, 32, seed=0)
    assert held.shape == (4, 32)
    assert not {tuple(r.tolist()) for r in held} & {tuple(r.tolist()) for r in scoring}
    assert torch.equal(held, holdout_windows(mix, tokenizer, 8, 32, seed=0))  # deterministic


def test_auto_picks_the_candidate_with_the_lowest_held_back_loss(tiny):
    model, tokenizer, mix = tiny
    pruner = Pruner(model, tokenizer, mix, PruneConfig(target_sparsity=(0.3,), method="gisp", steps=1,
                                                      attention_weight="auto", layer_balance="auto", **{
                                                          k: v for k, v in FAST.items() if k != "show_progress"}),
                    show_progress=False)
    geometry = ModelGeometry.of(model)
    log = pruner.step()
    chosen = log.priors
    # Independently: every candidate's plan from the same scores, sliced, its loss on the held-back windows.
    scores = pruner.criterion(model, pruner.batches, pruner.objective, show_progress=False)
    budget = int(round(0.3 * pruner.base_params))
    losses = {}
    for weight, balance in candidates("auto", "auto"):
        constraints = dataclasses.replace(pruner.constraints, attention_weight=weight, layer_balance=balance)
        plan = allocate(scores, geometry, budget, allocation="global", normalization=pruner.config.normalization,
                        constraints=constraints, tolerance=int(0.002 * pruner.base_params))
        losses[(weight, balance)] = _loss(apply_plan(model, plan), pruner.holdout)
    assert len(set(round(v, 6) for v in losses.values())) > 1  # the candidates differ on this model
    best = min(losses.values())
    assert chosen["loss"] == pytest.approx(best, rel=1e-4)
    assert losses[(chosen["attention_weight"], chosen["layer_balance"])] == pytest.approx(best, rel=1e-4)
    assert pruner.result().plans[0.3].metadata["priors"] == [
        {"attention_weight": chosen["attention_weight"], "layer_balance": chosen["layer_balance"]}]


def test_with_compensation_auto_judges_each_candidate_after_its_refit(tiny):
    model, tokenizer, mix = tiny
    fast = {**FAST, "compensation": "lsq", "compensation_samples": 8, "compensation_damping": 0.01}
    pruner = Pruner(model, tokenizer, mix, PruneConfig(target_sparsity=(0.2, 0.4), method="gisp", steps=2,
                                                      layer_balance="auto", **{
                                                          k: v for k, v in fast.items() if k != "show_progress"}),
                    show_progress=False)
    pruner.step()
    log = pruner.step()  # the second round: candidates compose with the first round's plan
    first = pruner.log[0]
    assert log.priors["judged_after_refit"] and first.priors["judged_after_refit"]
    # Independently: the second round's candidates from its own scores, each composed with the first round's plan
    # and refit by compensate(target="dense") on the run's compensation windows.
    current = apply_plan(model, pruner.result().plans[0.2])
    geometry = ModelGeometry.of(current)
    scores = pruner.criterion(current, pruner.batches, pruner.objective, show_progress=False)
    budget = int(round(0.4 * pruner.base_params)) - (pruner.base_params - geometry.total_params())
    losses = {}
    for weight, balance in candidates(pruner.config.attention_weight, "auto"):
        constraints = dataclasses.replace(pruner.constraints, attention_weight=weight, layer_balance=balance)
        plan = allocate(scores, geometry, budget, allocation="global", normalization=pruner.config.normalization,
                        constraints=constraints, tolerance=int(0.002 * pruner.base_params)).explicit(geometry.shapes)
        whole = pruner.result().plans[0.2].compose(plan)
        refit = compensate(model, whole, mix, tokenizer=tokenizer, config=pruner.config, compensation_target="dense",
                           show_progress=False)
        losses[balance] = _loss(refit, pruner.holdout)
        if balance == log.priors["layer_balance"]:
            sliced = _loss(apply_plan(model, whole), pruner.holdout)
    assert len({round(v, 6) for v in losses.values()}) > 1  # the candidates differ on this model
    assert log.priors["loss"] != pytest.approx(sliced, rel=1e-5)  # the refit model was judged, not the sliced one
    assert log.priors["loss"] == pytest.approx(min(losses.values()), rel=1e-4)
    assert losses[log.priors["layer_balance"]] == pytest.approx(min(losses.values()), rel=1e-4)


def test_auto_with_a_fixed_prior_only_varies_the_other(tiny):
    model, tokenizer, mix = tiny
    result = prune(model, tokenizer, mix, (0.2, 0.4), method="gisp", steps=2, attention_weight=2.0,
                   layer_balance="auto", **FAST)
    for entry in result.log:
        assert {c["attention_weight"] for c in entry.priors["candidates"]} == {2.0}
        assert entry.priors["layer_balance"] in AUTO_LAYER_BALANCES
    assert abs(result.sparsity[0.4] - 0.4) < 0.01


def test_auto_needs_a_calibration_mix_and_no_fsdp(tiny, monkeypatch):
    model, tokenizer, mix = tiny
    ids = mix.sample(tokenizer, 8, 32, seed=0).input_ids
    with pytest.raises(PruningError, match="CalibrationMix"):
        prune(model, tokenizer, ids, 0.2, layer_balance="auto", **FAST)
    from hf_prune.engine import fsdp

    monkeypatch.setattr(fsdp, "world_size", lambda: 2)  # as under torchrun
    with pytest.raises(PruningError, match="priors per model"):
        fsdp.check_config(PruneConfig(fsdp=True, compensation=None, layer_balance="auto").resolved())


def test_auto_with_compensation_is_refused_when_its_statistics_would_not_fit(tiny, monkeypatch):
    from hf_prune.engine import priors
    from hf_prune.engine.compensation import DenseStatistics

    model, tokenizer, mix = tiny
    expected = 4 * sum(layer.self_attn.o_proj.in_features ** 2 + layer.mlp.down_proj.in_features ** 2
                       for layer in model.model.layers)
    assert DenseStatistics.nbytes(model) == expected
    monkeypatch.setattr(priors, "available_bytes", lambda device: 2 * expected - 1)  # half is just too little
    with pytest.raises(PruningError, match="GiB of refit statistics"):
        prune(model, tokenizer, mix, 0.2, layer_balance="auto", **{**FAST, "compensation": "lsq"})
    monkeypatch.setattr(priors, "available_bytes", lambda device: 2 * expected)
    result = prune(model, tokenizer, mix, 0.2, steps=1, layer_balance="auto", compensation_samples=8,
                   **{**FAST, "compensation": "lsq"})
    assert result.log[0].priors["judged_after_refit"]
