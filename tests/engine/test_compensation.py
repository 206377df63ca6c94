"""Weight compensation: the refit equals an independent least-squares solution, never makes a layer worse,
reproduces saved checkpoints, and lowers held-out perplexity on real weights."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from conftest import head_dim, stdlib_corpus, tiny_causal_lm, tiny_qwen2

from hf_prune import CalibrationMix, PruneConfig, PruningPlan, apply_plan, compensate, evaluate_perplexity, prune
from hf_prune.errors import PruningError
from hf_prune.data.windows import CalibrationWindows
from hf_prune.engine.compensation import AUTO_DAMPINGS, MAX_FOLDS, WINDOW_FOLDS, choose_damping, refit

CALIB = torch.randint(3, 128, (16, 32), generator=torch.Generator().manual_seed(0))  # 512 tokens > 96 MLP inputs
PLAN = PruningPlan.from_dict({"layers": [
    {"query_heads": [0, 1, 4, 6], "mlp_channels": list(range(0, 96, 2))},
    {"query_heads": [2, 3, 5, 7], "mlp_channels": list(range(40))},
]})


@pytest.fixture
def model():
    return tiny_qwen2(seed=4, num_hidden_layers=2).double()


def _inputs(module, run) -> torch.Tensor:
    """The rows a module's input held while ``run()`` ran (all tokens), captured by a hook of this test."""
    seen = []
    handle = module.register_forward_pre_hook(lambda m, args: seen.append(args[0].reshape(-1, args[0].shape[-1])))
    try:
        with torch.no_grad():
            run()
    finally:
        handle.remove()
    return torch.cat(seen)


def _kept_columns(plan_layer, head_dim=8):
    heads = [h * head_dim + i for h in plan_layer.query_heads for i in range(head_dim)]
    return heads, plan_layer.mlp_channels


def _ridge(x_all, x_kept, weight, damping):
    """min ||x_all W^T - x_kept W'^T||^2 + lam ||W'||^2 by torch.linalg.lstsq on the augmented system."""
    lam = damping * (x_all * x_all).sum(0).mean()
    a = torch.cat([x_kept, lam.sqrt() * torch.eye(x_kept.shape[1], dtype=x_kept.dtype)])
    b = torch.cat([x_all @ weight.T, torch.zeros(x_kept.shape[1], weight.shape[0], dtype=x_kept.dtype)])
    return torch.linalg.lstsq(a, b).solution.T


@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_dense_target_equals_lstsq_weight_by_weight(family, damping):
    model = tiny_causal_lm(family, seed=4, num_hidden_layers=2).double()
    out = compensate(model, PLAN, CALIB, compensation_target="dense", compensation_damping=damping,
                     compensation_toward="zero", compensation_samples=16, show_progress=False)
    assert type(out).__name__ == f"Pruned{type(model).__name__}"
    for i, (dense, pruned, keep) in enumerate(zip(model.model.layers, out.model.layers, PLAN.layers)):
        heads, channels = _kept_columns(keep, head_dim(model.config))
        x = _inputs(dense.self_attn.o_proj, lambda: model(CALIB))
        expected = _ridge(x, x[:, heads], dense.self_attn.o_proj.weight, damping)
        torch.testing.assert_close(pruned.self_attn.o_proj.weight, expected, rtol=1e-6, atol=1e-9)
        x = _inputs(dense.mlp.down_proj, lambda: model(CALIB))
        expected = _ridge(x, x[:, channels], dense.mlp.down_proj.weight, damping)
        torch.testing.assert_close(pruned.mlp.down_proj.weight, expected, rtol=1e-6, atol=1e-9)


def _ridge_toward(x_all, x_kept, weight, kept_weight, damping):
    """min ||x_all W^T - x_kept W'^T||^2 + lam ||W' - kept_weight||^2 by lstsq: the penalty as extra rows
    sqrt(lam) I W'^T = sqrt(lam) kept_weight^T."""
    lam = damping * (x_all * x_all).sum(0).mean()
    a = torch.cat([x_kept, lam.sqrt() * torch.eye(x_kept.shape[1], dtype=x_kept.dtype)])
    b = torch.cat([x_all @ weight.T, lam.sqrt() * kept_weight.T])
    return torch.linalg.lstsq(a, b).solution.T


def test_refit_toward_the_kept_weights_equals_lstsq(model):
    """The damping pulls toward W_S, not zero (dense target: every layer on the dense model's inputs)."""
    out = compensate(model, PLAN, CALIB, compensation_target="dense", compensation_damping=0.05,
                     compensation_toward="kept", compensation_samples=16, show_progress=False)
    for dense, pruned, keep in zip(model.model.layers, out.model.layers, PLAN.layers):
        heads, channels = _kept_columns(keep)
        for proj, new, cols in ((dense.self_attn.o_proj, pruned.self_attn.o_proj, heads),
                                (dense.mlp.down_proj, pruned.mlp.down_proj, channels)):
            x = _inputs(proj, lambda: model(CALIB))
            expected = _ridge_toward(x, x[:, cols], proj.weight, proj.weight[:, cols], 0.05)
            torch.testing.assert_close(new.weight, expected, rtol=1e-6, atol=1e-9)
            plain = _ridge(x, x[:, cols], proj.weight, 0.05)
            assert (expected - plain).abs().max() > 1e-3  # the two priors give different weights here


def test_infinite_damping_toward_the_kept_weights_is_no_refit():
    x = torch.randn(50, 10, dtype=torch.float64)
    weight, keep = torch.randn(3, 10, dtype=torch.float64), torch.tensor([0, 2, 3, 7])
    assert torch.equal(refit(weight, x.T @ x, keep, math.inf, toward="kept"), weight[:, keep])
    with pytest.raises(PruningError, match="only meaningful toward the kept weights"):
        refit(weight, x.T @ x, keep, math.inf, toward="zero")


def _held_out_errors(x, t, domains, keep, grid, prior):
    """Leave-one-domain-out by brute force: fit by lstsq on the other domains' rows, sum the squared error of the
    left-out rows, for every damping of the grid (inf: the prior itself)."""
    errors = []
    for damping in grid:
        total = 0.0
        for d in sorted(set(domains)):
            inside = torch.tensor([e != d for e in domains])
            xi, ti = x[inside], t[inside]
            if math.isinf(damping):
                w = prior
            else:
                lam = damping * (xi * xi).sum(0).mean()
                a = torch.cat([xi[:, keep], lam.sqrt() * torch.eye(len(keep), dtype=x.dtype)])
                w = torch.linalg.lstsq(a, torch.cat([ti, lam.sqrt() * prior.T])).solution.T
            total += float(((t[~inside] - x[~inside][:, keep] @ w.T) ** 2).sum())
        errors.append(total)
    return errors


def _grams(x, domains, keep, weight):
    rows = {d: x[torch.tensor([e == d for e in domains])] for d in sorted(set(domains))}
    return ({d: r.T @ r for d, r in rows.items()}, {d: r[:, keep].T @ (r @ weight.T) for d, r in rows.items()})


@pytest.mark.parametrize("shared", [True, False])
def test_damping_chosen_out_of_domain_is_the_brute_force_choice(shared):
    """Removed inputs that depend on the kept ones the same way in every domain: the refit transfers and the
    smallest damping wins. A different dependence per domain: what one domain teaches misleads on another, and
    leave-one-domain-out keeps the original weights (inf). Either way the choice is the brute-force argmin."""
    g = torch.Generator().manual_seed(0)
    domains = [d for d in "abcd" for _ in range(60)]
    kept = torch.randn(240, 6, generator=g, dtype=torch.float64)
    mixing = [torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(1 if shared else 4)]
    removed = torch.cat([kept[i * 60:(i + 1) * 60] @ mixing[0 if shared else i] for i in range(4)])
    x = torch.cat([kept, removed + 0.01 * torch.randn(240, 4, generator=g, dtype=torch.float64)], 1)
    weight, keep = torch.randn(5, 10, generator=g, dtype=torch.float64), torch.arange(6)
    grams, crosses = _grams(x, domains, keep, weight)
    chosen = choose_damping(grams, crosses, keep, AUTO_DAMPINGS, prior=weight[:, keep])
    errors = _held_out_errors(x, x @ weight.T, domains, keep, AUTO_DAMPINGS, weight[:, keep])
    assert chosen == AUTO_DAMPINGS[min(range(len(errors)), key=errors.__getitem__)]
    assert chosen == (AUTO_DAMPINGS[0] if shared else math.inf)


def test_the_damping_walk_stops_one_past_the_best(monkeypatch):
    """The grid is walked from ``inf`` down and stops at the first damping that does worse than the best: the
    dampings solved are the chosen one, those above it and one below it (each once per fold), and the choice is the
    whole grid's (brute force). Four domains, one with 8x larger activations, each with its own (related) dependence
    of the removed inputs on the kept ones: a damping inside the grid wins."""
    from hf_prune.engine import compensation

    g = torch.Generator().manual_seed(0)
    domains = [d for d in "abcd" for _ in range(60)]
    kept = torch.randn(240, 6, generator=g, dtype=torch.float64)
    scale = torch.tensor([8.0] * 60 + [1.0] * 180, dtype=torch.float64)[:, None]
    shared = torch.randn(6, 4, generator=g, dtype=torch.float64)
    mixing = [shared + 0.7 * torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(4)]
    removed = torch.cat([kept[i * 60:(i + 1) * 60] @ mixing[i] for i in range(4)])
    x = scale * torch.cat([kept, removed + 0.3 * torch.randn(240, 4, generator=g, dtype=torch.float64)], 1)
    weight, keep = torch.randn(5, 10, generator=g, dtype=torch.float64), torch.arange(6)
    grams, crosses = _grams(x, domains, keep, weight)
    solved = []
    real = compensation.solve
    monkeypatch.setattr(compensation, "solve", lambda *a, **k: solved.append(a[3]) or real(*a, **k))
    chosen = choose_damping(grams, crosses, keep, AUTO_DAMPINGS, prior=weight[:, keep])
    errors = _held_out_errors(x, x @ weight.T, domains, keep, AUTO_DAMPINGS, weight[:, keep])
    assert chosen == AUTO_DAMPINGS[min(range(len(errors)), key=errors.__getitem__)]
    walked = sorted((d for d in AUTO_DAMPINGS if math.isfinite(d)), reverse=True)
    walked = walked[:walked.index(chosen) + 2]
    assert solved == [d for d in walked for _ in range(4)], (chosen, solved)
    assert len(walked) < len(AUTO_DAMPINGS) - 1  # it stopped before the end of the grid
    solved.clear()
    assert choose_damping(grams, crosses, keep, AUTO_DAMPINGS, prior=weight[:, keep], walk=False) == chosen
    assert len(solved) == 4 * (len(AUTO_DAMPINGS) - 1)  # walk=False: every finite damping, every fold


_MIXED = ["a", "b", "c", "a"] * 4


@pytest.mark.parametrize("labels, folds", [
    (_MIXED, _MIXED),  # domains: leave one domain out
    (None, [f"windows {i % WINDOW_FOLDS}" for i in range(16)]),  # token ids: folds of windows dealt in turn
    (["a"] * 16, [f"windows {i % WINDOW_FOLDS}" for i in range(16)]),  # one domain: the same
])
def test_auto_damping_refits_each_projection_with_its_cross_validated_choice(model, labels, folds):
    """``compensation_damping="auto"`` end to end (dense target): every projection's weight is the lstsq refit at
    the damping that brute-force leave-one-fold-out prefers on that projection's inputs; the folds are the domains,
    or folds of windows when there are fewer than two domains."""
    windows = CALIB if labels is None else CalibrationWindows(input_ids=CALIB, domains=labels)
    out = compensate(model, PLAN, windows, compensation_target="dense", compensation_damping="auto",
                     compensation_toward="kept", compensation_samples=16, batch_size=4, show_progress=False)
    rows = [f for f in folds for _ in range(CALIB.shape[1])]  # one label per token row
    for dense, pruned, keep in zip(model.model.layers, out.model.layers, PLAN.layers):
        heads, channels = _kept_columns(keep)
        for proj, new, cols in ((dense.self_attn.o_proj, pruned.self_attn.o_proj, heads),
                                (dense.mlp.down_proj, pruned.mlp.down_proj, channels)):
            x = _inputs(proj, lambda: model(CALIB))
            prior = proj.weight[:, cols].detach()
            errors = _held_out_errors(x, x @ proj.weight.detach().T, rows, torch.tensor(cols), AUTO_DAMPINGS, prior)
            best = AUTO_DAMPINGS[min(range(len(errors)), key=errors.__getitem__)]
            expected = prior if math.isinf(best) else _ridge_toward(x, x[:, cols], proj.weight, prior, best)
            torch.testing.assert_close(new.weight, expected, rtol=1e-6, atol=1e-9)


def test_more_domains_than_folds_share_folds_and_one_window_is_refused(model):
    from hf_prune.engine.compensation import CompensationData, RefitRule

    names = [f"d{i:02d}" for i in range(MAX_FOLDS + 3)]
    data = CompensationData([{"input_ids": CALIB[:1], "domains": [d]} for d in names], RefitRule(None, "kept"))
    assert data.folds == [f"domains {k}" for k in range(MAX_FOLDS)]
    assert [f for b in data.batches for f in b["folds"]] == [f"domains {i % MAX_FOLDS}" for i in range(len(names))]
    assert CompensationData([{"input_ids": CALIB[:1]}], RefitRule(0.01, "kept")).folds is None  # a number: no need
    with pytest.raises(PruningError, match="1 window is too few; raise compensation_samples or give a number"):
        compensate(model, PLAN, CALIB[:1], compensation_damping="auto", compensation_samples=1, show_progress=False)


def test_memory_plan_counts_a_gram_matrix_per_fold_when_the_damping_is_cross_validated(model):
    from hf_prune.engine.memory import memory_plan

    part = {d: memory_plan(model.config.to_dict(), PruneConfig(compensation_damping=d), dtype="float32")
            .devices[0].stages["compensation"]["Gram matrix and refit"] for d in (0.01, "auto")}
    widest = max(model.config.intermediate_size, model.config.num_attention_heads * 8)
    assert part[0.01] == 4 * 4 * widest**2 and part["auto"] == part[0.01] + MAX_FOLDS * 4 * widest**2


@pytest.mark.parametrize("damping, toward", [(0.01, "zero"), (0.01, "kept"), ("auto", "kept")])
def test_statistics_gathered_once_refit_any_plan_as_the_dense_target_does(model, damping, toward):
    """What "auto" priors judge candidates by: one pass of statistics, then each plan's refit by solves only, with
    the run's refit rule (the batches carry it)."""
    from hf_prune.engine.compensation import DenseStatistics, compensation_batches

    windows = CalibrationWindows(input_ids=CALIB, domains=["a", "b", "c", "a"] * 4)
    config = PruneConfig(compensation_target="dense", compensation_damping=damping, compensation_toward=toward,
                         compensation_samples=16)
    statistics = DenseStatistics(model, compensation_batches(windows, None, config, torch.device("cpu")))
    other = PruningPlan.from_dict({"layers": [{"query_heads": [0, 1, 2, 3], "mlp_channels": list(range(96))},
                                              {"query_heads": list(range(8)), "mlp_channels": list(range(8, 72))}]})
    for plan in (PLAN, other):
        expected = compensate(model, plan, windows, config=config, show_progress=False)
        got = statistics.refit(plan, damping)
        for (name, a), b in zip(got.state_dict().items(), expected.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)
    if damping != "auto":
        with pytest.raises(PruningError, match="needs statistics gathered per fold"):
            statistics.refit(PLAN, "auto")


def test_sequential_target_fits_the_dense_layer_on_the_pruned_models_own_inputs(model):
    """Layer 1 is refit on what the *compensated* layer 0 gives it: the dense layer 1's activations on those
    hidden states (taken here from the compensated model by a hook), solved by lstsq."""
    out = compensate(model, PLAN, CALIB, compensation_target="sequential", compensation_damping=0.0,
                     compensation_toward="zero", compensation_samples=16, show_progress=False)
    hidden = _inputs(out.model.layers[1], lambda: out(CALIB)).reshape(16, 32, -1)  # layer 1's input in `out`
    dense = model.model.layers[1]
    position_embeddings = model.model.rotary_emb(hidden, torch.arange(32).unsqueeze(0))

    def dense_attention():
        return dense.self_attn(hidden_states=dense.input_layernorm(hidden), attention_mask=None,
                               position_embeddings=position_embeddings)

    x = _inputs(dense.self_attn.o_proj, dense_attention)
    heads, channels = _kept_columns(PLAN.layers[1])
    expected = _ridge(x, x[:, heads], dense.self_attn.o_proj.weight, 0.0)
    torch.testing.assert_close(out.model.layers[1].self_attn.o_proj.weight, expected, rtol=1e-6, atol=1e-9)
    # The MLP's input: the dense MLP on the compensated attention's output (residual included).
    with torch.no_grad():
        layer = out.model.layers[1]
        mid = hidden + layer.self_attn(hidden_states=layer.input_layernorm(hidden), attention_mask=None,
                                       position_embeddings=position_embeddings)[0]
    x = _inputs(dense.mlp.down_proj, lambda: dense.mlp(dense.post_attention_layernorm(mid)))
    expected = _ridge(x, x[:, channels], dense.mlp.down_proj.weight, 0.0)
    torch.testing.assert_close(out.model.layers[1].mlp.down_proj.weight, expected, rtol=1e-6, atol=1e-9)


def _ridge_to(target, x_kept, x_all, damping, prior):
    """min ||target - x_kept W'^T||^2 + lam ||W' - prior||^2 (lam from x_all's Gram, as the library scales it) by
    lstsq."""
    lam = damping * (x_all * x_all).sum(0).mean()
    a = torch.cat([x_kept, lam.sqrt() * torch.eye(x_kept.shape[1], dtype=x_kept.dtype)])
    b = torch.cat([target, lam.sqrt() * prior.T])
    return torch.linalg.lstsq(a, b).solution.T


@pytest.mark.parametrize("damping, toward", [(0.0, "zero"), (0.05, "zero"), (0.05, "kept")])
def test_stream_target_fits_the_dense_models_hidden_states_from_the_pruned_models_inputs(model, damping, toward):
    """Layer 1 of the `stream` refit: regressors from the compensated model's own layer-1 input, target the dense
    model's hidden states after each sublayer minus the pruned residual, solved by lstsq."""
    out = compensate(model, PLAN, CALIB, compensation_target="stream", compensation_damping=damping,
                     compensation_toward=toward, compensation_samples=16, show_progress=False)
    h_p = _inputs(out.model.layers[1], lambda: out(CALIB)).reshape(16, 32, -1)
    h_d = _inputs(model.model.layers[1], lambda: model(CALIB)).reshape(16, 32, -1)
    dense, layer = model.model.layers[1], out.model.layers[1]
    rope = model.model.rotary_emb(h_p, torch.arange(32).unsqueeze(0))

    def attention(block, h):
        return block.self_attn(hidden_states=block.input_layernorm(h), attention_mask=None, position_embeddings=rope)[0]

    heads, channels = _kept_columns(PLAN.layers[1])
    with torch.no_grad():
        mid_d = h_d + attention(dense, h_d)
        x = _inputs(dense.self_attn.o_proj, lambda: attention(dense, h_p))
        prior = dense.self_attn.o_proj.weight[:, heads] * (toward == "kept")
        expected = _ridge_to((mid_d - h_p).reshape(-1, 64), x[:, heads], x, damping, prior)
        torch.testing.assert_close(layer.self_attn.o_proj.weight, expected, rtol=1e-6, atol=1e-9)
        mid_p = h_p + attention(layer, h_p)
        after_d = mid_d + dense.mlp(dense.post_attention_layernorm(mid_d))
        x = _inputs(dense.mlp.down_proj, lambda: dense.mlp(dense.post_attention_layernorm(mid_p)))
        prior = dense.mlp.down_proj.weight[:, channels] * (toward == "kept")
        expected = _ridge_to((after_d - mid_p).reshape(-1, 64), x[:, channels], x, damping, prior)
    torch.testing.assert_close(layer.mlp.down_proj.weight, expected, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("target", ["sequential", "dense", "stream"])
def test_nothing_removed_is_the_identity(model, target):
    keep_all = PruningPlan.from_dict({"layers": [{}, {}]})
    out = compensate(model, keep_all, CALIB, compensation_samples=16, compensation_target=target,
                     show_progress=False)
    sliced = apply_plan(model, keep_all)
    assert all(torch.equal(a, b) for a, b in zip(out.state_dict().values(), sliced.state_dict().values()))


def test_a_compensated_layer_is_never_worse_on_the_calibration_activations(model):
    out = compensate(model, PLAN, CALIB, compensation_target="dense", compensation_damping=0.0,
                     compensation_samples=16, show_progress=False)
    sliced = apply_plan(model, PLAN)
    for dense, pruned, plain, keep in zip(model.model.layers, out.model.layers, sliced.model.layers, PLAN.layers):
        heads, channels = _kept_columns(keep)
        for proj, cols, new, old in ((dense.self_attn.o_proj, heads, pruned.self_attn.o_proj, plain.self_attn.o_proj),
                                     (dense.mlp.down_proj, channels, pruned.mlp.down_proj, plain.mlp.down_proj)):
            x = _inputs(proj, lambda: model(CALIB))
            target = x @ proj.weight.T
            assert (target - x[:, cols] @ new.weight.T).norm() <= (target - x[:, cols] @ old.weight.T).norm()


def test_refit_raises_damping_when_the_system_is_singular_and_refuses_nan(caplog):
    x = torch.randn(4, 10, dtype=torch.float64)  # 4 tokens, 10 inputs: rank 4, singular at zero damping
    gram, weight = x.T @ x, torch.randn(3, 10, dtype=torch.float64)
    caplog.set_level(logging.WARNING, logger="hf_prune")
    new = refit(weight, gram, torch.arange(8), 0.0, where="layer 7 down_proj")
    assert torch.isfinite(new).all() and new.shape == (3, 8)
    assert "layer 7 down_proj: the compensation system is not positive definite at damping 0" in caplog.text
    gram[0, 0] = float("nan")
    with pytest.raises(PruningError, match="layer 7 down_proj: the calibration activations hold NaN"):
        refit(weight, gram, torch.arange(8), 0.01, where="layer 7 down_proj")


def test_bf16_model_is_compensated_in_fp32_and_stays_bf16():
    model = tiny_qwen2(seed=4, num_hidden_layers=2).to(torch.bfloat16)
    out = compensate(model, PLAN, CALIB, compensation_samples=16, show_progress=False)
    weight = out.model.layers[1].mlp.down_proj.weight
    assert weight.dtype == torch.bfloat16 and torch.isfinite(weight.float()).all()
    assert not torch.equal(weight, apply_plan(model, PLAN).model.layers[1].mlp.down_proj.weight)


def test_plans_are_unchanged_and_apply_gives_the_compensated_level(model):
    plain = prune(model, None, CALIB, [0.2, 0.4], method="gisp", steps=2, compensation=None, show_progress=False)
    comp = prune(model, None, CALIB, [0.2, 0.4], method="gisp", steps=2, compensation="lsq",
                 compensation_when="level", compensation_samples=16, show_progress=False)
    for level in (0.2, 0.4):
        assert comp.plans[level].to_dict()["layers"] == plain.plans[level].to_dict()["layers"]  # nested, as before
        assert comp.plans[level].metadata["compensation"]["method"] == "lsq"
        applied = comp.apply(model, level)
        again = compensate(model, comp.plans[level], CALIB, config=comp.config, show_progress=False)
        assert all(torch.equal(a, b) for a, b in zip(applied.state_dict().values(), again.state_dict().values()))
        sliced = apply_plan(model, comp.plans[level])
        assert not torch.equal(applied.model.layers[1].mlp.down_proj.weight, sliced.model.layers[1].mlp.down_proj.weight)


def test_compensating_every_round_scores_the_compensated_model(model):
    result = prune(model, None, CALIB, [0.4], method="gisp", steps=2, compensation="lsq", compensation_when="round",
                   compensation_samples=16, show_progress=False)
    # The run ended with the top level as saved: the model it returns equals apply().
    assert result.model is not None
    assert all(torch.equal(a, b) for a, b in zip(result.model.state_dict().values(),
                                                 result.apply(model, 0.4).state_dict().values()))


class _Spy:
    name = "spy"

    def __call__(self, model, batches, objective=None, **kw):
        raise AssertionError("scoring must not start on bad input")


@pytest.mark.parametrize("kwargs, message", [
    ({"compensation_damping": -0.1}, "compensation_damping must be a number >= 0"),
    ({"compensation_damping": 0.0}, "compensation without damping needs at least 96 calibration tokens"),
    ({"compensation": "obs"}, "Unknown compensation 'obs'"),
    ({"compensation_target": "teacher"}, "Unknown compensation_target 'teacher'"),
    ({"compensation_toward": "dense"}, "Unknown compensation_toward 'dense'"),
    ({"compensation_damping": "often"}, "compensation_damping must be a number >= 0 \\(or 'auto'\\)"),
])
def test_bad_compensation_options_fail_before_scoring(model, kwargs, message):
    with pytest.raises(PruningError, match=message):
        prune(model, None, CALIB[:2, :16], [0.3], importance=_Spy(), show_progress=False,
              **{"compensation": "lsq", **kwargs})
    with pytest.raises(PruningError, match="compensation needs calibration data"):
        prune(model, None, None, [0.3], method="magnitude", compensation="lsq", show_progress=False)


def test_saved_level_is_reproduced_by_apply_and_by_compensate(tmp_path):
    from conftest import make_tiny_base
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_prune import prune_and_push

    base = make_tiny_base(tmp_path)
    res = prune_and_push(base["base"], target_sparsity=(0.2, 0.4), calibration=base["calibration"], method="gisp",
                         steps=2, num_samples=8, seq_len=32, compensation="lsq", compensation_samples=16,
                         output_dir=tmp_path / "out", show_progress=False)
    model = AutoModelForCausalLM.from_pretrained(base["base"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(base["base"])
    for level, folder in res.folders.items():
        saved = AutoModelForCausalLM.from_pretrained(folder).state_dict()
        applied = res.result.apply(model, level).state_dict()
        plan = PruningPlan.load(folder / "pruning_plan.json")
        config = PruneConfig.load(folder)
        recomputed = compensate(model, plan, CalibrationMix.parse(base["calibration"]), tokenizer=tokenizer,
                                config=config, show_progress=False).state_dict()
        for name, tensor in saved.items():
            assert torch.equal(tensor, applied[name]) and torch.equal(tensor, recomputed[name]), name


@pytest.mark.real
@pytest.mark.slow
def test_compensation_lowers_held_out_perplexity_on_smollm2(smollm2, tmp_path):
    model, tokenizer = smollm2
    corpus = stdlib_corpus(tmp_path)
    calibration = CalibrationMix({d: {"source": str(p), "weight": 1.0} for d, p in corpus["calib"].items()})
    evals = {d: str(p) for d, p in corpus["eval"].items()}
    result = prune(model, tokenizer, calibration, 0.3, method="gisp", steps=2, num_samples=16, seq_len=128,
                   compensation="lsq", compensation_samples=64, show_progress=False)

    def held_out(m):
        return evaluate_perplexity(m, tokenizer, evals, seq_len=128, max_windows_per_domain=6, progress=False).mean

    plain, compensated = held_out(apply_plan(model, result.plans[0.3])), held_out(result.apply(model, 0.3))
    assert compensated < plain, (compensated, plain)


@pytest.mark.parametrize("options, says", [
    ({}, "damping chosen per projection by leave-one-domain-out cross-validation, toward the kept weights"),
    ({"compensation_damping": 1e-4, "compensation_toward": "zero"}, "damping 0.0001 toward zero"),
])
def test_the_card_says_how_the_damping_was_set(options, says):
    from hf_prune.job.save import _method

    assert f"(`lsq`, sequential target, {says}, 128 calibration windows)" in _method(
        PruneConfig(method="gisp", **options).resolved())


def test_batches_drawn_under_a_fixed_damping_serve_a_cross_validated_refit(model):
    """``compensate(data=...)`` refits by the config it is given, whatever rule drew the batches (the benchmarks
    draw once per fold and refit several ways)."""
    from hf_prune.engine.compensation import compensation_batches

    windows = CalibrationWindows(input_ids=CALIB, domains=_MIXED)
    config = PruneConfig(compensation_target="dense", compensation_damping="auto", compensation_samples=16)
    data = compensation_batches(windows, None, config.replace(compensation_damping=0.01), torch.device("cpu"))
    reused = compensate(model, PLAN, windows, config=config, data=data, show_progress=False)
    own = compensate(model, PLAN, windows, config=config, show_progress=False)
    for (name, a), b in zip(reused.state_dict().items(), own.state_dict().values()):
        assert torch.equal(a, b), name
