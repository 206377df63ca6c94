"""The pruning engine on tiny random models: accounting, nesting, constraints, determinism, resume, errors."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_causal_lm, tiny_qwen2

import hf_prune.engine.pruner as pruner_module
from hf_prune import apply_plan, prune
from hf_prune.errors import PruningError, UnsupportedModelError
from hf_prune.engine import METHODS, decoder_params

CALIB = torch.randint(3, 128, (12, 24), generator=torch.Generator().manual_seed(0))
LEVELS = [0.2, 0.35, 0.5]


@pytest.fixture(scope="module")
def model():
    return tiny_qwen2(seed=11, num_hidden_layers=4, intermediate_size=96)


def kept_sets(plan):
    return [(set(l.query_heads), set(l.mlp_channels)) for l in plan.layers]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_sparsity_accounting_and_nesting(family, method):
    model = tiny_causal_lm(family, seed=11)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = prune(model, None, CALIB, LEVELS, method=method, steps=3 if method == "gisp" else None,
                   show_progress=False)
    assert sorted(result.plans) == LEVELS
    dense = decoder_params(model)
    for level, plan in result.plans.items():
        pruned = apply_plan(model, plan)  # also validates GQA uniformity per layer
        measured = 1 - decoder_params(pruned) / dense  # counted from the weights (Qwen3: q_norm / k_norm too)
        assert result.sparsity[level] == pytest.approx(measured, abs=1e-9)
        assert abs(measured - level) <= 0.005, (method, level, measured)
        for layer in pruned.model.layers:
            if layer.self_attn is not None:
                assert layer.self_attn.q_proj.out_features % layer.self_attn.k_proj.out_features == 0
    # Nested: each level keeps a subset of the previous level's structures.
    for low, high in zip(LEVELS, LEVELS[1:]):
        for (h_low, c_low), (h_high, c_high) in zip(kept_sets(result.plans[low]), kept_sets(result.plans[high])):
            assert h_high <= h_low and c_high <= c_low
    # The input model is untouched (scored in place, then restored).
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_kv_heads_go_when_their_group_empties(model):
    # A small attention weight makes heads cheap, so whole KV groups go on this random model.
    result = prune(model, None, CALIB, [0.6], method="gisp", steps=2, attention_weight=0.01, show_progress=False)
    plan = result.plans[0.6]
    shapes = [(len(l.query_heads), len(l.kv_heads)) for l in plan.layers]
    assert result.kv_cache_reduction[0.6] > 0
    assert result.kv_cache_reduction[0.6] == pytest.approx(
        1 - sum(kv for _, kv in shapes) / (2 * 4), abs=1e-9)
    for heads, kv in shapes:
        assert heads == 0 and kv == 0 or heads % kv == 0


def test_attention_weight_makes_heads_harder_to_remove(model):
    kept_heads = {}
    for weight in (0.01, 100.0):
        plan = prune(model, None, CALIB, [0.5], method="gisp", steps=2, attention_weight=weight,
                     show_progress=False).plans[0.5]
        kept_heads[weight] = sum(len(l.query_heads) for l in plan.layers)
    assert kept_heads[100.0] > kept_heads[0.01]


def test_constraints_are_honoured(model):
    result = prune(model, None, CALIB, [0.2, 0.3], method="gisp", steps=2, keep_dense=[0, 3], channel_multiple=8,
                   min_heads=2, tp_degree=2, show_progress=False)
    for plan in result.plans.values():
        for idx, layer in enumerate(plan.layers):
            if idx in (0, 3):
                assert layer.query_heads == list(range(8)) and layer.mlp_channels == list(range(96))
            assert len(layer.mlp_channels) % 8 == 0
            assert len(layer.query_heads) >= 2
            assert len(layer.kv_heads) % 2 == 0
    uniform = prune(model, None, CALIB, [0.3], method="llm-pruner", channel_multiple=16, show_progress=False)
    widths = {len(l.mlp_channels) for l in uniform.plans[0.3].layers}
    assert len(widths) == 1 and widths.pop() % 16 == 0  # same ratio everywhere, rounded


def test_channel_multiple_auto_aligns_wide_mlps_under_global_allocation():
    # "auto" (the default): widths in multiples of 64 when every MLP is at least 1,024 wide and allocation is global
    # (magnitude ranks globally with allocation="global"); any width otherwise.
    wide = tiny_qwen2(seed=2, intermediate_size=1024)
    aligned = dict(method="magnitude", allocation="global", show_progress=False)
    result = prune(wide, None, CALIB, [0.4], **aligned)
    widths = [len(l.mlp_channels) for l in result.plans[0.4].layers]
    assert all(w % 64 == 0 for w in widths) and min(widths) < 1024
    for model, options in ((tiny_qwen2(seed=2), aligned), (wide, {**aligned, "channel_multiple": 1}),
                           (wide, dict(method="magnitude", show_progress=False))):  # narrow; fixed to 1; uniform
        plan = prune(model, None, CALIB, [0.4], **options).plans[0.4]
        assert any(len(l.mlp_channels) % 64 for l in plan.layers)


def test_keep_dense_gisp_rule():
    model = tiny_qwen2(seed=1, num_hidden_layers=10)
    result = prune(model, None, CALIB, [0.3], method="llm-pruner", keep_dense="gisp", show_progress=False)
    layers = result.plans[0.3].layers
    for idx in (0, 9):  # int(0.1 * 10) = 1 first layer, and the last
        assert layers[idx].query_heads == list(range(8)) and len(layers[idx].mlp_channels) == 96
    assert len(layers[5].mlp_channels) < 96


def test_deterministic_under_a_seed(model):
    run = lambda method, seed: prune(model, None, CALIB, [0.3], method=method, seed=seed, steps=2 if method == "gisp" else None,  # noqa: E731
                                     show_progress=False).plans[0.3].to_dict()["layers"]
    assert run("gisp", 0) == run("gisp", 0)
    assert run("random", 0) == run("random", 0)
    assert run("random", 0) != run("random", 1)


@pytest.mark.parametrize("compensation", [None, "lsq"])
def test_resume_after_interruption_gives_the_same_plans(model, tmp_path, monkeypatch, compensation):
    # Compensating every round: the state must bring back the compensated model the next round scores.
    options = dict(compensation=compensation, compensation_when="round")
    kwargs = dict(method="gisp", steps=4, state_dir=tmp_path / "state", show_progress=False, **options)
    reference = prune(model, None, CALIB, LEVELS, method="gisp", steps=4, show_progress=False, **options)

    real_allocate, calls = pruner_module.allocate, {"n": 0}

    def interrupt_on_third_step(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_allocate(*args, **kw)

    monkeypatch.setattr(pruner_module, "allocate", interrupt_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        prune(model, None, CALIB, LEVELS, **kwargs)
    monkeypatch.setattr(pruner_module, "allocate", real_allocate)
    assert (tmp_path / "state" / "prune_state.json").is_file()

    resumed = prune(model, None, CALIB, LEVELS, **kwargs)
    assert [entry.step for entry in resumed.log] == list(range(len(reference.log)))
    for level in LEVELS:
        assert resumed.plans[level].to_dict()["layers"] == reference.plans[level].to_dict()["layers"]
    # With compensation every round, the resumed run continues from the compensated model of the last round.
    if compensation:
        assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
                                                     reference.model.state_dict().values()))
    with pytest.raises(PruningError, match="other settings"):
        prune(model, None, CALIB, [0.25], **kwargs)


class _Spy:
    """A criterion that records whether scoring ever started."""

    name = "spy"

    def __init__(self):
        self.calls = 0

    def __call__(self, model, batches, objective=None, **kw):
        self.calls += 1
        raise AssertionError("scoring must not start on bad input")


@pytest.mark.parametrize(
    "target, kwargs, message",
    [
        (0.0, {}, r"target_sparsity must be in \(0, 1\)"),
        (1.0, {}, r"target_sparsity must be in \(0, 1\)"),
        ([0.2, -0.1], {}, r"target_sparsity must be in \(0, 1\)"),
        (0.5, {"keep_dense": [0, 1, 2]}, "impossible under these constraints"),
        (0.3, {"keep_dense": [7]}, "out of range"),
        (0.3, {"method": "nope"}, "Unknown method"),
        (0.3, {"allocation": "diagonal"}, "Unknown allocation"),
        (0.3, {"tp_degree": 4}, "not divisible by tp_degree=4"),
        (0.3, {"attention_weight": 0}, "attention_weight must be a number > 0"),
        (0.3, {"calibration": CALIB[:0]}, "no tokens"),
    ],
)
def test_bad_input_fails_before_scoring(model, target, kwargs, message):
    spy = _Spy()
    calibration = kwargs.pop("calibration", CALIB)
    with pytest.raises(PruningError, match=message):
        prune(model, None, calibration, target, importance=spy, show_progress=False, **kwargs)
    assert spy.calls == 0


def test_not_qwen2_is_refused():
    with pytest.raises(UnsupportedModelError):
        prune(torch.nn.Linear(3, 3), None, CALIB, 0.3)


def test_fisher_scores_equal_a_per_sample_reference():
    """½·mean_i (Σ_structure w·g_i)², with g_i each sample's own gradient from torch.autograd.grad and the
    structures indexed by hand; the engine sees two batches (sizes 2 and 1) and must work per sample."""
    from hf_prune.engine.importance import FisherImportance
    from hf_prune.engine.objectives import lm_loss

    m = tiny_qwen2(seed=5, hidden_size=16, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=32).double()
    batch = torch.randint(3, 32, (3, 6), generator=torch.Generator().manual_seed(2))
    scores = FisherImportance()(m, [{"input_ids": batch[:2]}, {"input_ids": batch[2:]}], lm_loss,
                                show_progress=False)[0]
    attn, mlp = m.model.layers[0].self_attn, m.model.layers[0].mlp
    named = {"q": attn.q_proj.weight, "qb": attn.q_proj.bias, "k": attn.k_proj.weight, "kb": attn.k_proj.bias,
             "v": attn.v_proj.weight, "vb": attn.v_proj.bias, "o": attn.o_proj.weight,
             "gate": mlp.gate_proj.weight, "up": mlp.up_proj.weight, "down": mlp.down_proj.weight}
    d, heads, kv, channels = 4, torch.zeros(4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), \
        torch.zeros(8, dtype=torch.float64)
    for i in range(3):
        grads = torch.autograd.grad(lm_loss(m, {"input_ids": batch[i:i + 1]}), list(named.values()))
        c = {name: (p.detach() * g) for (name, p), g in zip(named.items(), grads)}  # signed, per sample
        for h in range(4):
            rows = slice(h * d, (h + 1) * d)
            heads[h] += (c["q"][rows].sum() + c["qb"][rows].sum() + c["o"][:, rows].sum()) ** 2
        for k in range(2):
            rows = slice(k * d, (k + 1) * d)
            kv[k] += sum(c[n][rows].sum() for n in ("k", "kb", "v", "vb")) ** 2
        for j in range(8):
            channels[j] += (c["gate"][j].sum() + c["up"][j].sum() + c["down"][:, j].sum()) ** 2
    for got, want in ((scores.query_heads, heads), (scores.kv_heads, kv), (scores.mlp_channels, channels)):
        torch.testing.assert_close(got.double(), want / 6, rtol=1e-5, atol=1e-12)
    assert all(p.grad is None for p in m.parameters())  # nothing left behind


def test_fisher_criterion_runs_the_whole_engine(model):
    """The second-order criterion plugs into the same global, iterative, nested pipeline by name."""
    result = prune(model, None, CALIB, LEVELS, importance="fisher", steps=2, batch_size=4, show_progress=False)
    dense = decoder_params(model)
    previous = None
    for level in LEVELS:
        pruned = apply_plan(model, result.plans[level])
        assert abs(1 - decoder_params(pruned) / dense - level) <= 0.005
        kept = kept_sets(result.plans[level])
        if previous is not None:
            assert all(h <= ph and c <= pc for (h, c), (ph, pc) in zip(kept, previous))
        previous = kept



def test_layer_balance_spreads_removal_across_layers(model):
    """Synthetic scores where layer 0's channels are 10x cheaper: at face value global allocation takes them
    all from layer 0; layer_balance prices concentrated removal up and spreads it, budget unchanged."""
    from hf_prune.engine.allocation import Constraints, allocate
    from hf_prune.engine.structures import LayerScores
    from hf_prune.format.geometry import ModelGeometry

    geometry = ModelGeometry.of(model)
    gen = torch.Generator().manual_seed(0)
    scores = [LayerScores(torch.full((s.num_attention_heads,), 1e6), torch.full((s.num_key_value_heads,), 1e6),
                          torch.rand(s.intermediate_size, generator=gen) * (0.1 if i == 0 else 1.0) + (0.1 if i == 0 else 0.5))
              for i, s in enumerate(geometry.shapes)]
    budget = 40 * geometry.channel_params
    widths = {}
    for balance in (0.0, 50.0):
        plan = allocate(scores, geometry, budget, constraints=Constraints(layer_balance=balance))
        widths[balance] = [len(l.mlp_channels) for l in plan.layers]
        assert sum(s.intermediate_size for s in geometry.shapes) - sum(widths[balance]) == 40
    assert widths[0.0][0] == 96 - 40 and widths[0.0][1:] == [96, 96, 96]
    assert max(widths[50.0]) - min(widths[50.0]) < 40 and widths[50.0][0] > 56


def test_pruner_steps_and_state_give_what_prune_gives(model):
    """The Pruner's rounds, driven by hand and interrupted through state_dict/load_state_dict, give prune()'s plans."""
    import json

    from hf_prune import PruneConfig, Pruner

    config = PruneConfig(target_sparsity=LEVELS, method="gisp", steps=4)
    reference = prune(model, None, CALIB, config, show_progress=False)
    first = Pruner(model, None, CALIB, config, show_progress=False)
    assert first.schedule == [0.125, 0.2, 0.25, 0.35, 0.375, 0.5] and not first.done
    logs = [first.step(), first.step()]
    state = json.loads(json.dumps(first.state_dict()))  # survives JSON, as in a state_dir
    second = Pruner(model, None, CALIB, config, show_progress=False)
    second.load_state_dict(state)
    while not second.done:
        logs.append(second.step())
    assert [entry.step for entry in logs] == list(range(6)) and [e.target_sparsity for e in logs] == first.schedule
    with pytest.raises(PruningError, match="every round of this run has run"):
        second.step()
    result = second.result()
    for level in LEVELS:
        assert result.plans[level].to_dict()["layers"] == reference.plans[level].to_dict()["layers"]
    other = Pruner(model, None, CALIB, config.replace(seed=1, method="llm-pruner"), show_progress=False)
    with pytest.raises(PruningError, match="other settings"):
        other.load_state_dict(state)


def test_schedule_is_pluggable(model):
    def only_targets(targets, steps):
        return list(targets)

    result = prune(model, None, CALIB, LEVELS, method="gisp", steps=2, schedule=only_targets, show_progress=False)
    assert [entry.target_sparsity for entry in result.log] == LEVELS
    assert [entry.recomputed_scores for entry in result.log] == [True, True, True]  # gisp rescores every round
    with pytest.raises(PruningError, match="must pass through every target"):
        prune(model, None, CALIB, LEVELS, schedule=lambda targets, steps: [0.1, 0.2], show_progress=False)
    with pytest.raises(PruningError, match="non-decreasing sparsities in \\(0, 1\\)"):
        prune(model, None, CALIB, LEVELS, schedule=lambda targets, steps: [0.5, 0.2, 0.35], show_progress=False)


def test_the_names_of_the_pieces_match_their_registries():
    """PruneConfig checks names against hf_prune.presets without importing torch: they must name what exists."""
    from hf_prune import presets
    from hf_prune.engine import importance, objectives, schedule

    assert tuple(importance._CRITERIA) == presets.CRITERIA
    assert tuple(objectives._OBJECTIVES) == presets.OBJECTIVES
    assert tuple(schedule._SCHEDULES) == presets.SCHEDULES
