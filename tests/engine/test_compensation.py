"""Weight compensation: the refit equals an independent least-squares solution, never makes a layer worse,
reproduces saved checkpoints, and lowers held-out perplexity on real weights."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import stdlib_corpus, tiny_qwen2

from hf_prune import CalibrationMix, PruneConfig, PruningPlan, apply_plan, compensate, evaluate_perplexity, prune
from hf_prune.errors import PruningError
from hf_prune.engine.compensation import refit

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
def test_dense_target_equals_lstsq_weight_by_weight(model, damping):
    out = compensate(model, PLAN, CALIB, compensation_target="dense", compensation_damping=damping,
                     compensation_samples=16, show_progress=False)
    for i, (dense, pruned, keep) in enumerate(zip(model.model.layers, out.model.layers, PLAN.layers)):
        heads, channels = _kept_columns(keep)
        x = _inputs(dense.self_attn.o_proj, lambda: model(CALIB))
        expected = _ridge(x, x[:, heads], dense.self_attn.o_proj.weight, damping)
        torch.testing.assert_close(pruned.self_attn.o_proj.weight, expected, rtol=1e-6, atol=1e-9)
        x = _inputs(dense.mlp.down_proj, lambda: model(CALIB))
        expected = _ridge(x, x[:, channels], dense.mlp.down_proj.weight, damping)
        torch.testing.assert_close(pruned.mlp.down_proj.weight, expected, rtol=1e-6, atol=1e-9)


def test_statistics_gathered_once_refit_any_plan_as_the_dense_target_does(model):
    """What "auto" priors judge candidates by: one pass of statistics, then each plan's refit by solves only."""
    from hf_prune.engine.compensation import CompensationData, DenseStatistics

    statistics = DenseStatistics(model, CompensationData([{"input_ids": CALIB}]))
    other = PruningPlan.from_dict({"layers": [{"query_heads": [0, 1, 2, 3], "mlp_channels": list(range(96))},
                                              {"query_heads": list(range(8)), "mlp_channels": list(range(8, 72))}]})
    for plan in (PLAN, other):
        expected = compensate(model, plan, CALIB, compensation_target="dense", compensation_damping=0.01,
                              compensation_samples=16, show_progress=False)
        got = statistics.refit(plan, 0.01)
        for (name, a), b in zip(got.state_dict().items(), expected.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12, msg=name)


def test_sequential_target_fits_the_dense_layer_on_the_pruned_models_own_inputs(model):
    """Layer 1 is refit on what the *compensated* layer 0 gives it: the dense layer 1's activations on those
    hidden states (taken here from the compensated model by a hook), solved by lstsq."""
    out = compensate(model, PLAN, CALIB, compensation_target="sequential", compensation_damping=0.0,
                     compensation_samples=16, show_progress=False)
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


def _ridge_to(target, x_kept, x_all, damping):
    """min ||target - x_kept W'^T||^2 + lam ||W'||^2 (lam from x_all's Gram, as the library scales it) by lstsq."""
    lam = damping * (x_all * x_all).sum(0).mean()
    a = torch.cat([x_kept, lam.sqrt() * torch.eye(x_kept.shape[1], dtype=x_kept.dtype)])
    b = torch.cat([target, torch.zeros(x_kept.shape[1], target.shape[1], dtype=x_kept.dtype)])
    return torch.linalg.lstsq(a, b).solution.T


@pytest.mark.parametrize("damping", [0.0, 0.05])
def test_stream_target_fits_the_dense_models_hidden_states_from_the_pruned_models_inputs(model, damping):
    """Layer 1 of the `stream` refit: regressors from the compensated model's own layer-1 input, target the dense
    model's hidden states after each sublayer minus the pruned residual, solved by lstsq."""
    out = compensate(model, PLAN, CALIB, compensation_target="stream", compensation_damping=damping,
                     compensation_samples=16, show_progress=False)
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
        expected = _ridge_to((mid_d - h_p).reshape(-1, 64), x[:, heads], x, damping)
        torch.testing.assert_close(layer.self_attn.o_proj.weight, expected, rtol=1e-6, atol=1e-9)
        mid_p = h_p + attention(layer, h_p)
        after_d = mid_d + dense.mlp(dense.post_attention_layernorm(mid_d))
        x = _inputs(dense.mlp.down_proj, lambda: dense.mlp(dense.post_attention_layernorm(mid_p)))
        expected = _ridge_to((after_d - mid_p).reshape(-1, 64), x[:, channels], x, damping)
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
])
def test_bad_compensation_options_fail_before_scoring(model, kwargs, message):
    with pytest.raises(PruningError, match=message):
        prune(model, None, CALIB[:2, :16], [0.3], importance=_Spy(), show_progress=False,
              **{"compensation": "lsq", **kwargs})
    with pytest.raises(PruningError, match="compensation needs calibration data"):
        prune(model, None, None, [0.3], method="magnitude", compensation="lsq", show_progress=False)


def test_saved_level_is_reproduced_by_apply_and_by_compensate(tmp_path):
    try:
        from tests.test_push import make_tiny_base
    except ImportError:  # pragma: no cover
        from test_push import make_tiny_base
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
