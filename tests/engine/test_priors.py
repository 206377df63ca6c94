"""``attention_weight`` / ``layer_balance`` = "auto": priors chosen per model by held-back calibration loss."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_base
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_prune import CalibrationMix, PruneConfig, compensate, prune
from hf_prune.cli import build_parser, config_from_args
from hf_prune.engine.allocation import allocate
from hf_prune.engine import priors
from hf_prune.engine import pruner as pruner_module
from hf_prune.presets import AUTO_ATTENTION_WEIGHTS, AUTO_EVIDENCE, AUTO_LAYER_BALANCES
from hf_prune.engine.priors import candidates, holdout_windows, start_priors
from hf_prune.engine.pruner import Pruner
from hf_prune.format.geometry import ModelGeometry
from hf_prune.errors import PruningError
from hf_prune.format.slicing import apply_plan

FAST = dict(num_samples=8, seq_len=32, batch_size=4, compensation=None, show_progress=False)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    paths = make_tiny_base(tmp_path_factory.mktemp("priors"))
    model = AutoModelForCausalLM.from_pretrained(paths["base"]).eval()
    return model, AutoTokenizer.from_pretrained(paths["base"]), CalibrationMix.parse(paths["calibration"])


def _per_window(model, windows: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy of each window, computed here without the engine's helpers."""
    with torch.no_grad():
        logits = model(input_ids=windows).logits[:, :-1]
    return F.cross_entropy(logits.transpose(1, 2), windows[:, 1:], reduction="none").mean(1)


def _loss(model, windows: torch.Tensor) -> float:
    return float(_per_window(model, windows).mean())


def _expected(losses: dict, stay, evidence: float = AUTO_EVIDENCE):
    """The rule, recomputed: the lowest mean loss wins only if its gain over ``stay`` exceeds ``evidence`` standard
    errors of the per-window differences; otherwise ``stay``."""
    best = min(losses, key=lambda k: float(losses[k].mean()))
    gain = losses[stay] - losses[best]
    error = float(gain.std(unbiased=True)) / len(gain) ** 0.5
    return best if best != stay and float(gain.mean()) > evidence * error else stay


def test_config_accepts_auto_and_the_cli_parses_it():
    config = PruneConfig(attention_weight="auto", layer_balance="auto").resolved()
    assert (config.attention_weight, config.layer_balance) == ("auto", "auto")
    for bad in ({"attention_weight": "automatic"}, {"layer_balance": -1}, {"attention_weight": 0}):
        with pytest.raises(PruningError, match="or 'auto'"):
            PruneConfig(**bad)
    args = build_parser().parse_args(["prune", "m", "--attention-weight", "auto", "--layer-balance", "1.5"])
    assert (config_from_args(args).attention_weight, config_from_args(args).layer_balance) == ("auto", 1.5)
    # From the method's own priors, one grid step along each "auto" prior; a fixed prior stays.
    assert start_priors(config) == (4.0, 2.0)
    assert start_priors(PruneConfig(method="llm-pruner", layer_balance="auto").resolved()) == (1.0, 0.0)
    assert candidates("auto", 3.0, (4.0, 3.0)) == [(4.0, 3.0), (2.0, 3.0), (8.0, 3.0)]
    assert candidates("auto", "auto", (4.0, 2.0)) == [(4.0, 2.0), (2.0, 2.0), (8.0, 2.0), (4.0, 1.0), (4.0, 4.0)]
    assert candidates("auto", "auto", (1.0, 4.0)) == [(1.0, 4.0), (2.0, 4.0), (1.0, 2.0)]  # a corner


def test_held_back_windows_are_disjoint_from_the_scoring_windows(tiny):
    _, tokenizer, mix = tiny
    scoring = mix.sample(tokenizer, 8, 32, seed=0).input_ids
    held = holdout_windows(mix, tokenizer, 8, 32, seed=0)
    assert held.shape == (16, 32)  # at least 16, whatever the scoring draw
    assert not {tuple(r.tolist()) for r in held} & {tuple(r.tolist()) for r in scoring}
    assert torch.equal(held, holdout_windows(mix, tokenizer, 8, 32, seed=0))  # deterministic


@pytest.mark.parametrize("evidence", [0.0, AUTO_EVIDENCE, float("inf")])
def test_auto_moves_to_a_neighbour_only_on_clear_held_back_evidence(tiny, monkeypatch, evidence):
    model, tokenizer, mix = tiny
    monkeypatch.setattr(priors, "AUTO_EVIDENCE", evidence)  # 0: the lowest loss wins; inf: never move
    # Started from a corner whose neighbour is measurably better on this model (from gisp's own 4 / 2 it stays).
    monkeypatch.setattr(pruner_module, "start_priors", lambda config: (8.0, 0.0))
    pruner = Pruner(model, tokenizer, mix, PruneConfig(target_sparsity=(0.3,), method="gisp", steps=1,
                                                      attention_weight="auto", layer_balance="auto", **{
                                                          k: v for k, v in FAST.items() if k != "show_progress"}),
                    show_progress=False)
    assert len(pruner.holdout) == 16  # at least 16 held back, whatever the scoring draw
    geometry = ModelGeometry.of(model)
    log = pruner.step()
    chosen = log.priors
    # Independently: each neighbour's plan from the same scores, sliced, its loss on every held-back window.
    scores = pruner.criterion(model, pruner.batches, pruner.objective, show_progress=False)
    budget = int(round(0.3 * pruner.base_params))
    losses = {}
    for weight, balance in candidates("auto", "auto", (8.0, 0.0)):
        constraints = dataclasses.replace(pruner.constraints, attention_weight=weight, layer_balance=balance)
        plan = allocate(scores, geometry, budget, allocation="global", normalization=pruner.config.normalization,
                        constraints=constraints, tolerance=int(0.002 * pruner.base_params))
        losses[(weight, balance)] = _per_window(apply_plan(model, plan), pruner.holdout)
    assert len(set(round(float(v.mean()), 6) for v in losses.values())) > 1  # the candidates differ on this model
    expected = _expected(losses, (8.0, 0.0), evidence)
    if evidence == 0.0:
        assert expected == min(losses, key=lambda k: float(losses[k].mean()))
    if evidence == float("inf"):
        assert expected == (8.0, 0.0)
    assert float(losses[(chosen["attention_weight"], chosen["layer_balance"])].mean()) == pytest.approx(
        float(losses[expected].mean()), rel=1e-4)  # the expected plan (or one equal to it) was chosen
    assert chosen["loss"] == pytest.approx(float(losses[expected].mean()), rel=1e-4)
    assert chosen["moved"] == (float(losses[expected].mean()) != pytest.approx(float(losses[8.0, 0.0].mean())))
    assert chosen["moved"] == (evidence != float("inf"))  # on this model the evidence is clear enough
    assert pruner.result().plans[0.3].metadata["priors"] == [
        {"attention_weight": chosen["attention_weight"], "layer_balance": chosen["layer_balance"]}]


def test_with_compensation_auto_judges_each_candidate_after_its_refit(tiny, monkeypatch):
    model, tokenizer, mix = tiny
    monkeypatch.setattr(priors, "AUTO_EVIDENCE", 0.0)  # the lowest loss wins: what is judged decides
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
    around = (first.priors["attention_weight"], first.priors["layer_balance"])
    assert (log.priors["from"]["attention_weight"], log.priors["from"]["layer_balance"]) == around
    for weight, balance in candidates(pruner.config.attention_weight, "auto", around):
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


def test_auto_with_a_fixed_prior_only_varies_the_other_one_step_a_round(tiny, monkeypatch):
    model, tokenizer, mix = tiny
    monkeypatch.setattr(priors, "AUTO_EVIDENCE", 0.0)  # move whenever a neighbour is better: steps happen
    config = PruneConfig(target_sparsity=(0.2, 0.4), method="gisp", steps=3, attention_weight=2.0,
                         layer_balance="auto", **{k: v for k, v in FAST.items() if k != "show_progress"})
    result = prune(model, tokenizer, mix, config=config, show_progress=False)
    at = 2.0  # gisp's own layer_balance
    for entry in result.log:
        assert {c["attention_weight"] for c in entry.priors["candidates"]} == {2.0}
        assert entry.priors["from"]["layer_balance"] == at
        step = AUTO_LAYER_BALANCES.index(entry.priors["layer_balance"]) - AUTO_LAYER_BALANCES.index(at)
        assert abs(step) <= 1
        at = entry.priors["layer_balance"]
    assert abs(result.sparsity[0.4] - 0.4) < 0.01
    # A resumed run continues from the last round's choice, not from the method's priors.
    pruner = Pruner(model, tokenizer, mix, config, show_progress=False)
    pruner.step()
    resumed = Pruner(model, tokenizer, mix, config, show_progress=False)
    resumed.load_state_dict(pruner.state_dict())
    assert resumed.priors_at == (2.0, pruner.log[0].priors["layer_balance"])


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
    from hf_prune.engine.compensation import MAX_FOLDS, DenseStatistics

    model, tokenizer, mix = tiny
    expected = 4 * sum(layer.self_attn.o_proj.in_features ** 2 + layer.mlp.down_proj.in_features ** 2
                       for layer in model.model.layers)
    assert DenseStatistics.nbytes(model) == {torch.device("cpu"): expected}
    assert DenseStatistics.nbytes(copy.deepcopy(model).double()) == {torch.device("cpu"): 2 * expected}  # fp64
    fixed = {**FAST, "compensation": "lsq", "compensation_damping": 0.01}
    monkeypatch.setattr(priors, "available_bytes", lambda device: 2 * expected - 1)  # half is just too little
    with pytest.raises(PruningError, match="GiB of refit statistics"):
        prune(model, tokenizer, mix, 0.2, layer_balance="auto", **fixed)
    monkeypatch.setattr(priors, "available_bytes", lambda device: 2 * expected)
    result = prune(model, tokenizer, mix, 0.2, steps=1, layer_balance="auto", compensation_samples=8, **fixed)
    assert result.log[0].priors["judged_after_refit"]
    # A damping chosen by cross-validation keeps one X^T X per fold: up to MAX_FOLDS times as much.
    assert DenseStatistics.nbytes(model, MAX_FOLDS) == {torch.device("cpu"): MAX_FOLDS * expected}
    with pytest.raises(PruningError, match="or compensation_damping as a number: one X\\^T X per fold"):
        prune(model, tokenizer, mix, 0.2, layer_balance="auto", **{**fixed, "compensation_damping": "auto"})
