"""Scale (issue 13): the memory plan, models dispatched by accelerate, data-parallel processes, bench_scale."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, make_tiny_base, tiny_causal_lm, tiny_qwen2

import hf_prune
from hf_prune import PruneConfig
from hf_prune.errors import InsufficientMemoryError
from hf_prune.engine.dispatch import is_dispatched
from hf_prune.engine.importance import TaylorImportance
from hf_prune.engine.memory import ModelDims, format_bytes, memory_plan, parse_size
from hf_prune.engine.objectives import lm_loss


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    env["HF_HUB_OFFLINE"] = "1"
    env.pop("HF_PRUNE_DEBUG", None)
    return env


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("scale_base"))


# ---- the memory plan ----------------------------------------------------------------------------------------
def test_plan_counts_the_parameters_of_the_model_it_describes(family):
    model = tiny_causal_lm(family)
    plan = memory_plan(model.config.to_dict(), PruneConfig(), dtype="float32")
    assert plan.model.total_params() == sum(p.numel() for p in model.parameters())
    pruned = hf_prune.apply_plan(model, hf_prune.PruningPlan.from_dict({"layers": [
        {"query_heads": [0, 1, 4, 5], "mlp_channels": list(range(40))}, {"query_heads": []}, {"mlp_channels": []}, {}]}))
    dims = ModelDims.from_config(pruned.config.to_dict(), "float32")  # per_layer_config and skips read from the config
    assert dims.total_params() == sum(p.numel() for p in pruned.parameters())
    assert ModelDims.from_model(pruned).layers == dims.layers
    assert parse_size("75GiB") == 75 * 2**30 and parse_size("80GB") == 80 * 10**9 and parse_size(1024) == 1024


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_planned_activations_match_what_autograd_saves(dtype):
    """The activation term against the bytes of every tensor a real forward saves for backward (tiny Qwen2)."""
    model = tiny_qwen2(hidden_size=128, intermediate_size=352, num_attention_heads=8, num_key_value_heads=2,
                       vocab_size=64).to(dtype)
    for name, p in model.named_parameters():
        p.requires_grad_("proj" in name)
    saved: dict[int, int] = {}
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    batch, seq = 2, 64
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        hidden = model.model(input_ids=torch.randint(0, 64, (batch, seq)), use_cache=False).last_hidden_state
    assert hidden.requires_grad
    dims = ModelDims.from_model(model)
    planned = batch * seq * sum(dims.layer_activations(i) for i in range(len(dims.layers)))
    assert planned == pytest.approx(sum(saved.values()), rel=0.15)


@pytest.mark.real
@pytest.mark.slow
def test_plan_within_20_percent_of_the_measured_peak_on_smollm2(smollm2, monkeypatch):
    """One Taylor scoring pass on SmolLM2 in a fresh process: peak of the tensors held (VmHWM) against the plan.

    glibc keeps freed blocks in its heap above a moving threshold; a fixed mmap threshold makes every large block
    go back to the system when freed, so VmHWM measures what the tensors occupy (the plan's quantity).
    """
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from bench_memory import run_child
    finally:
        sys.path.pop(0)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    result = run_child("smollm2", batch_size=2, seq_len=256, gradient_checkpointing=False, stage="scoring")
    assert result["planned"] == pytest.approx(result["measured"], rel=0.2), result


_DRY_RUN = """
import runpy, sys
sys.argv = ["hf-prune", *{args!r}]
try:
    runpy.run_module("hf_prune", run_name="__main__")
except SystemExit as exit:
    print("EXIT", exit.code, "TORCH", "torch" in sys.modules)
"""


def test_dry_run_prints_the_plan_without_loading_anything(base, tmp_path):
    args = ["prune", str(base["base"]), "--dry-run", "--batch-size", "2", "--seq-len", "64", "--output-dir",
            str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-c", _DRY_RUN.format(args=args)], capture_output=True, text=True,
                          timeout=120, env=_env(), cwd=tmp_path)
    assert "EXIT 0 TORCH False" in proc.stdout, proc.stdout + proc.stderr[-2000:]  # the plan needs no torch on CPU
    expected = memory_plan(base["base"], PruneConfig(batch_size=2, seq_len=64))
    assert f"peak {format_bytes(expected.peak)}" in proc.stdout
    assert "scoring, round 1" in proc.stdout and "compensation" in proc.stdout
    assert not (tmp_path / "out").exists()


def test_a_run_that_cannot_fit_is_refused_before_loading(base, tmp_path, monkeypatch):
    import hf_prune.loading

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(hf_prune.loading, "load_model", no_loading)
    with pytest.raises(InsufficientMemoryError, match=r"the run needs .* on cpu .* but cpu has 1 MiB; options: "
                                                      r"batch_size 1: peak .*gradient_checkpointing: peak"):
        hf_prune.prune_and_push(str(base["base"]), calibration=base["calibration"], output_dir=tmp_path / "out",
                                max_memory={"cpu": "1MiB"}, target_sparsity=0.3, num_samples=8, seq_len=32)
    assert not (tmp_path / "out").exists()


def test_plan_options_shrink_what_they_should():
    q7 = {"model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
          "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064, "dtype": "bfloat16"}
    one = PruneConfig(batch_size=1, seq_len=2048)
    plan = memory_plan(q7, one, devices=[("cuda:0", 80 * 2**30)])
    checkpointed = memory_plan(q7, one.replace(gradient_checkpointing=True), devices=[("cuda:0", 80 * 2**30)])
    assert checkpointed.devices[0].stages["scoring, round 1"]["activations"] < \
        plan.devices[0].stages["scoring, round 1"]["activations"] / 10
    split = memory_plan(q7, one, devices=[(f"cuda:{i}", 80 * 2**30) for i in range(4)])
    assert split.peak < plan.peak / 2  # layers split over 4 devices
    assert sum(d.stages["scoring, round 1"]["weights (dense)"] for d in split.devices) == \
        plan.devices[0].stages["scoring, round 1"]["weights (dense)"]


# ---- a model dispatched by accelerate -------------------------------------------------------------------------
def _dispatched(model):
    from accelerate import dispatch_model

    names = ["model.embed_tokens", "model.rotary_emb", "model.norm", "lm_head"]
    names += [f"model.layers.{i}" for i in range(len(model.model.layers))]
    # force_hooks: accelerate's device-moving hooks are attached although every entry is the CPU
    return dispatch_model(model, device_map={n: "cpu" for n in names}, force_hooks=True)


def test_scores_plans_and_compensation_on_a_dispatched_model_equal_the_plain_model():
    ids = torch.randint(0, 128, (8, 32), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": ids[i:i + 4]} for i in range(0, 8, 4)]
    plain, dispatched = tiny_qwen2().to(torch.bfloat16), _dispatched(tiny_qwen2().to(torch.bfloat16))
    assert is_dispatched(dispatched)
    for a, b in zip(TaylorImportance()(plain, batches, lm_loss, show_progress=False),
                    TaylorImportance()(dispatched, batches, lm_loss, show_progress=False)):
        assert torch.equal(a.query_heads, b.query_heads) and torch.equal(a.mlp_channels, b.mlp_channels)
    options = dict(target_sparsity=(0.2, 0.4), method="gisp", steps=2, keep_dense=[], batch_size=4,
                   compensation_samples=8, seq_len=32, show_progress=False)
    one, two = hf_prune.prune(plain, None, ids, **options), hf_prune.prune(dispatched, None, ids, **options)
    assert {s: p.layers for s, p in one.plans.items()} == {s: p.layers for s, p in two.plans.items()}
    level_one, level_two = one.apply(plain, 0.4), two.apply(dispatched, 0.4)
    assert is_dispatched(level_two)  # the sliced copy keeps accelerate's hooks
    for (name, a), (_, b) in zip(level_one.state_dict().items(), level_two.state_dict().items()):
        assert torch.equal(a, b), name


# ---- data-parallel processes ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_two_processes_write_what_one_process_writes(base, tmp_path):
    """`torchrun --nproc-per-node 2 -m hf_prune prune` (gloo, CPU) against one process on the same windows: the
    same plans, compensated weights equal to float tolerance, one reduction per prunable tensor per round."""
    from safetensors.torch import load_file

    from hf_prune.cli import main

    options = ["--sparsity", "0.2,0.4", "--num-samples", "8", "--seq-len", "32", "--batch-size", "2", "--steps", "2",
               "--compensation-samples", "8", "--calibration", base["calibration"]]
    assert main(["prune", str(base["base"]), *options, "--output-dir", str(tmp_path / "one"), "-q"]) == 0
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "hf_prune", "prune", str(base["base"]), *options, "--output-dir", str(tmp_path / "two")],
                          capture_output=True, text=True, timeout=600, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for level in ("sparsity-20", "sparsity-40"):
        one, two = (json.loads((tmp_path / run / level / "pruning_plan.json").read_text()) for run in ("one", "two"))
        assert one["layers"] == two["layers"], level
        w1, w2 = (load_file(tmp_path / run / level / "model.safetensors") for run in ("one", "two"))
        assert w1.keys() == w2.keys()
        for name in w1:
            torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=1e-5, msg=name)
    # Rank 0 alone logs: one line per round, one all-reduce per prunable tensor plus the sample count.
    rounds = [line for line in proc.stderr.splitlines() if "all-reduced" in line]
    assert len(rounds) == 2, proc.stderr[-3000:]
    model = tiny_qwen2(vocab_size=320)
    tensors = [p for layer in model.model.layers for name, p in layer.named_parameters() if "proj" in name]
    first = rounds[0].split("all-reduced ")[1].split()
    assert int(first[0]) == 4 * sum(p.numel() for p in tensors) + 8 and int(first[3]) == len(tensors) + 1


# ---- the GPU benchmark, as a CPU smoke test -------------------------------------------------------------------
def test_bench_scale_runs_a_scaled_down_shape_on_cpu(capsys):
    """benchmarks/bench_scale.py end to end on a tiny shape (not timed): scoring, plain pass, one layer's refit."""
    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
    try:
        from bench_scale import SHAPES, config_of, main
    finally:
        sys.path.pop(0)
    result = main(["--shape", "smoke", "--device", "cpu", "--seq-len", "32", "--num-samples", "4", "--batch-size", "2",
                   "--compensation-samples", "4"])
    assert result["params"] == memory_plan(config_of("smoke"), PruneConfig()).model.total_params()
    assert result["scoring_seconds_per_round"] > 0 and result["compensation_one_layer"]["refit_seconds"] > 0
    assert set(SHAPES) >= {"qwen2.5-7b", "qwen2.5-14b", "qwen2.5-32b", "qwen2.5-72b"}
    assert "one scoring round" in capsys.readouterr().out


# ---- activation-based first-order scores ----------------------------------------------------------------------
def test_activation_taylor_equals_the_signed_taylor_sum_over_each_output_projection_column():
    """sum over tokens of x * dL/dx at a structure's output = sum of W * dL/dW over its output-projection column
    (and over its k/v rows for a KV head): checked against weight gradients, in float64, without weight grads."""
    from hf_prune.engine.importance import ActivationTaylorImportance

    model = tiny_qwen2().double()
    ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": ids[:2]}, {"input_ids": ids[2:]}]
    scores = ActivationTaylorImportance()(model, batches, lm_loss, show_progress=False)
    assert all(p.grad is None for p in model.parameters())  # no weight gradient was computed
    for p in model.parameters():
        p.requires_grad_(True)
    for batch in batches:
        (lm_loss(model, batch) * 2).backward()
    d = 8
    for layer, s in zip(model.model.layers, scores):
        a, down = layer.self_attn, layer.mlp.down_proj
        signed = lambda m: (m.weight * m.weight.grad / 4)  # noqa: E731 - the mean gradient over 4 windows
        torch.testing.assert_close(s.mlp_channels.double(), signed(down).sum(0).abs(), rtol=1e-4, atol=1e-9)
        torch.testing.assert_close(s.query_heads.double(), signed(a.o_proj).view(64, -1, d).sum((0, 2)).abs(),
                                   rtol=1e-4, atol=1e-9)
        kv = sum(signed(p).sum(1) + p.bias * p.bias.grad / 4 for p in (a.k_proj, a.v_proj))
        torch.testing.assert_close(s.kv_heads.double(), kv.view(-1, d).sum(1).abs(), rtol=1e-4, atol=1e-9)
    plan = memory_plan(model.config.to_dict(), PruneConfig(importance="activation-taylor"), dtype="bfloat16")
    assert "score buffers (fp32)" not in plan.devices[0].stages["scoring, round 1"]
