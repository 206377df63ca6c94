"""Targets in users' terms: total parameters, memory at a context length, the KV cache (hf_prune/engine/targets.py,
the KV budget of hf_prune/engine/allocation.py). Every figure a level reaches is checked against the sliced model
itself: parameters counted from its weights, the KV cache from its config's per-layer KV heads."""

from __future__ import annotations

import pytest
import torch

from hf_prune import PruneConfig, apply_plan, prune
from hf_prune.engine import Pruner
from hf_prune.engine.allocation import Constraints, allocate
from hf_prune.engine.structures import LayerScores
from hf_prune.errors import PruningError
from hf_prune.format.geometry import ModelGeometry, config_shapes, head_dim_of

from conftest import tiny_causal_lm, tiny_qwen2

RUN = dict(num_samples=8, seq_len=32, steps=2, compensation=None, method="gisp")


def _ids(vocab: int = 128) -> torch.Tensor:
    return torch.randint(3, vocab, (8, 32), generator=torch.Generator().manual_seed(0))


def _decoder(model) -> int:
    return sum(p.numel() for layer in model.model.layers for p in layer.parameters())


def _kv_heads(model) -> int:
    """KV heads of every layer, as the model's own config states them (what a cache is built from)."""
    return sum(s.num_key_value_heads for s in config_shapes(model.config))


def _memory(model, context: int, batch: int) -> int:
    """Weights in their dtype plus the KV cache (keys and values, every KV head) at ``batch x context`` tokens."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    element = next(model.parameters()).element_size()
    return weights + batch * context * 2 * _kv_heads(model) * head_dim_of(model.config) * element


# ---- the config: units, levels, names, refusals (no model) -------------------------------------------------------
def test_targets_parse_units_and_pair_kv_with_their_level():
    c = PruneConfig(target_params="3.5B,5B", target_kv_cache="0.5,0.25")
    assert c.target_params == (5 * 10**9, 35 * 10**8)  # the least pruned level first
    assert c.kv_targets() == (0.25, 0.5)  # each KV target stays with the level it was given with
    assert c.level_names() == ("params-5B-kv-25", "params-3.5B-kv-50")
    m = PruneConfig(target_memory=["12GiB", 10 * 10**9], context_length=32768, memory_batch_size=8)
    assert m.target_memory == (12 * 2**30, 10**10) and m.level_names() == ("memory-12GiB", "memory-10GB")
    assert PruneConfig(target_params=5e9).target_params == (5 * 10**9,)
    s = PruneConfig(target_sparsity=(0.4, 0.2), target_kv_cache=(0.5, 0.25))
    assert s.kv_targets() == (0.25, 0.5) and s.level_names() == ("sparsity-20-kv-25", "sparsity-40-kv-50")
    assert PruneConfig().level_names() == ("sparsity-20", "sparsity-30", "sparsity-40", "sparsity-50")
    again = PruneConfig.from_dict(c.to_dict())
    assert again == c


@pytest.mark.parametrize("options, message", [
    (dict(target_params="5Q"), "not a parameter count: '5Q'"),
    (dict(target_memory="12 parsecs"), "not a memory size"),
    (dict(target_memory="0GiB"), "must be positive"),
    (dict(target_params="5B", target_memory="12GiB"), "both given: give one size target"),
    (dict(target_params="5B", target_sparsity=0.3), "target_sparsity and target_params are both given"),
    (dict(target_kv_cache=1.0), r"in \[0, 1\)"),
    (dict(target_kv_cache="0.5,0.25"), "gives 2 values for 4 levels"),
    (dict(target_sparsity=(0.2, 0.4), target_kv_cache=(0.5, 0.25)), "shrinks from level to level"),
    (dict(target_kv_cache=0.5, method="llm-pruner"), "needs global allocation"),
    (dict(target_memory="12GiB", context_length=0), "context_length must be a positive integer"),
    (dict(target_params="5B,5B"), "more than once"),
])
def test_bad_targets_are_refused_in_one_line(options, message):
    with pytest.raises(PruningError, match=message) as err:
        PruneConfig(**options)
    assert "\n" not in str(err.value)


# ---- the KV budget inside the global ranking ---------------------------------------------------------------------
def _scores(seed: int = 0, layers: int = 4) -> list[LayerScores]:
    g = torch.Generator().manual_seed(seed)
    return [LayerScores(torch.rand(8, generator=g), torch.zeros(2), torch.rand(96, generator=g)) for _ in range(layers)]


@pytest.mark.parametrize("kv_heads", [2, 4, 6])
def test_allocation_meets_both_budgets(kv_heads):
    model = tiny_qwen2()
    geometry = ModelGeometry.of(model)
    budget = int(0.3 * geometry.total_params())
    constraints = Constraints(attention_weight=4.0, layer_balance=2.0)  # gisp's: heads are hard to remove
    plain = allocate(_scores(), geometry, budget, constraints=constraints, tolerance=int(0.002 * budget))
    plan = allocate(_scores(), geometry, budget, constraints=constraints, tolerance=int(0.002 * budget),
                    kv_heads_to_remove=kv_heads)
    sliced = apply_plan(model, plan)
    assert _kv_heads(model) - _kv_heads(apply_plan(model, plain)) < kv_heads  # at face value, fewer KV heads go
    assert _kv_heads(model) - _kv_heads(sliced) >= kv_heads
    removed = _decoder(model) - _decoder(sliced)
    assert abs(removed - budget) <= 0.005 * _decoder(model)  # the KV heads came out of the same budget


def test_the_kv_budget_takes_the_weakest_group_and_fills_the_rest_by_rank():
    model = tiny_qwen2()
    geometry = ModelGeometry.of(model)
    scores = _scores()
    for s in scores:  # every head worth more per parameter than any MLP channel: at face value no head goes
        s.query_heads[:] = 5.0
    scores[2].query_heads[4:] = 2.0  # the second KV group of layer 2 is the weakest
    budget, c = int(0.2 * geometry.total_params()), Constraints(attention_weight=4.0)
    plain = allocate(scores, geometry, budget, constraints=c, tolerance=int(0.002 * budget)).explicit(geometry.shapes)
    assert all(layer.kv_heads == [0, 1] for layer in plain.layers)
    plan = allocate(scores, geometry, budget, constraints=c, kv_heads_to_remove=1,
                    tolerance=int(0.002 * budget)).explicit(geometry.shapes)
    assert [layer.kv_heads for layer in plan.layers] == [[0, 1], [0, 1], [0], [0, 1]]
    # the rest of the budget went to MLP channels, the lowest-scored first in each layer
    for layer, s in zip(plan.layers, scores):
        gone = sorted(set(range(96)) - set(layer.mlp_channels))
        if gone:
            assert max(float(s.mlp_channels[c]) for c in gone) <= min(float(s.mlp_channels[c]) for c in layer.mlp_channels)


def test_a_kv_budget_the_ranking_meets_at_face_value_changes_nothing():
    geometry = ModelGeometry.of(tiny_qwen2())
    budget, c = int(0.3 * geometry.total_params()), Constraints(attention_weight=1.0)
    plain = allocate(_scores(), geometry, budget, constraints=c).explicit(geometry.shapes)
    removed = 8 - sum(len(layer.kv_heads) for layer in plain.layers)
    assert removed > 0
    same = allocate(_scores(), geometry, budget, constraints=c, kv_heads_to_remove=removed).explicit(geometry.shapes)
    assert same.to_dict() == plain.to_dict()


def test_uniform_allocation_refuses_a_kv_budget():
    geometry = ModelGeometry.of(tiny_qwen2())
    with pytest.raises(PruningError, match="needs global allocation"):
        allocate(_scores(), geometry, 1000, allocation="uniform", kv_heads_to_remove=2)


# ---- the Pruner: targets resolved on the model, met by every level -----------------------------------------------
def test_parameter_and_kv_targets_are_met(family):
    model = tiny_causal_lm(family)
    total, decoder = sum(p.numel() for p in model.parameters()), _decoder(model)
    asked = (int(total - 0.2 * decoder), int(total - 0.45 * decoder))
    result = prune(model, None, _ids(), PruneConfig(target_params=asked, target_kv_cache=(0.25, 0.5), **RUN),
                   show_progress=False)
    assert result.config.resolved_decoder_params == decoder
    levels = sorted(result.plans)
    previous = None
    for s, params, kv in zip(levels, asked, (0.25, 0.5)):
        sliced = apply_plan(model, result.plans[s])
        assert abs(sum(p.numel() for p in sliced.parameters()) - params) <= 0.005 * decoder
        assert 1 - _kv_heads(sliced) / _kv_heads(model) >= kv
        assert result.plans[s].metadata["level"] == result.config.name_of(s)
        assert result.plans[s].metadata["targets"] == {"params": params, "kv_cache_reduction": kv}
        kept = [set(layer.kv_heads or ()) for layer in result.plans[s].explicit(ModelGeometry.of(model).shapes).layers]
        if previous is not None:  # nested: a smaller level keeps a subset of the larger one's KV heads
            assert all(k <= p for k, p in zip(kept, previous))
        previous = kept


def test_memory_target_is_met_at_its_context():
    model = tiny_qwen2()
    context, batch = 64, 2
    dense = _memory(model, context, batch)
    for kv in (None, 0.5):
        asked = int(0.8 * dense)
        config = PruneConfig(target_memory=asked, context_length=context, memory_batch_size=batch, target_kv_cache=kv,
                             **RUN)
        result = prune(model, None, _ids(), config, show_progress=False)
        (s,) = result.plans
        sliced = apply_plan(model, result.plans[s])
        reached = _memory(sliced, context, batch)
        assert reached <= asked
        assert reached >= asked - 0.02 * dense  # not far below: the budget was spent, not wasted
        if kv:
            assert 1 - _kv_heads(sliced) / _kv_heads(model) >= kv


@pytest.mark.parametrize("options, message", [
    (dict(target_params=10**9), "is not below the model's"),
    (dict(target_params=1000), "the decoder layers hold"),
    (dict(target_memory=1000, context_length=64), "is unreachable: the embeddings and lm_head"),
    (dict(target_memory=10**9, context_length=64), "within it already"),
    (dict(target_sparsity=0.05, target_kv_cache=0.5), "takes at least .* more than the level removes"),
    (dict(target_sparsity=0.3, target_kv_cache=0.5, min_heads=8), "the constraints let at most 0%"),
])
def test_targets_the_model_cannot_reach_are_refused_before_scoring(options, message, monkeypatch):
    import hf_prune.engine.pruner as pruner

    monkeypatch.setattr(pruner.Pruner, "_score", lambda *a, **k: pytest.fail("scored"))
    with pytest.raises(PruningError, match=message) as err:
        Pruner(tiny_qwen2(), None, _ids(), PruneConfig(**{**RUN, **options}), show_progress=False)
    assert "\n" not in str(err.value)


def test_what_a_level_reached_is_measured_on_the_sliced_model():
    from hf_prune.engine.memory import ModelDims
    from hf_prune.engine.targets import measured

    model = tiny_qwen2()
    result = prune(model, None, _ids(), PruneConfig(target_sparsity=0.3, context_length=100, **RUN),
                   show_progress=False)
    sliced = apply_plan(model, result.plans[0.3])
    params = sum(p.numel() for p in sliced.parameters())
    report = measured(result.config, 0.3, ModelDims.from_model(model), ModelDims.from_model(sliced), params)
    assert report["level"] == "sparsity-30" and report["asked"] == {"sparsity": 0.3}
    assert report["reached"]["memory_bytes"] == _memory(sliced, 100, 1)
    assert report["reached"]["sparsity"] == pytest.approx(1 - _decoder(sliced) / _decoder(model))
    assert report["reached"]["kv_cache_reduction"] == pytest.approx(1 - _kv_heads(sliced) / _kv_heads(model))
    assert report["met"] == {"sparsity": abs(report["reached"]["sparsity"] - 0.3) <= 0.005}


def test_the_kv_budget_is_spread_over_the_rounds_like_the_parameters():
    from hf_prune.engine.targets import kv_heads_at

    config = PruneConfig(target_sparsity=(0.2, 0.4), target_kv_cache=(0.25, 0.5))
    # linear from (0, 0) through each level's (sparsity, KV share), rounded up to whole KV heads of 8
    assert [kv_heads_at(config, p, 8) for p in (0.05, 0.1, 0.2, 0.3, 0.4)] == [1, 1, 2, 3, 4]
    assert kv_heads_at(PruneConfig(target_sparsity=(0.2, 0.4)), 0.4, 8) == 0
