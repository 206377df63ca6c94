"""FSDP2 scoring (issue 13, point 3): 2 gloo processes on the CPU against one process on the same windows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO_ROOT, make_tiny_base, tiny_qwen2
from test_scale import _env

from hf_prune import PruneConfig
from hf_prune.errors import PruningError
from hf_prune.engine import fsdp
from hf_prune.engine.importance import TaylorImportance
from hf_prune.engine.objectives import lm_loss

# A 3-layer model whose MLP width (45) and KV rows (2 x 8) split unevenly or evenly over 2 ranks.
_MODEL = dict(num_hidden_layers=3, intermediate_size=45)

_SCORE = r"""
import json, sys, torch, torch.distributed as dist
sys.path.insert(0, {tests!r})
from conftest import tiny_qwen2
from hf_prune.engine.distributed import shard
from hf_prune.engine.fsdp import local_rows, shard_model
from hf_prune.engine.importance import TaylorImportance
from hf_prune.engine.objectives import lm_loss

dist.init_process_group("gloo")
model = tiny_qwen2(**{model!r})
ids = torch.randint(0, 128, (6, 16), generator=torch.Generator().manual_seed(0))
batches = [{{"input_ids": ids[i:i + 2]}} for i in range(0, 6, 2)]  # 3 batches: rank 1 pads with a zero-weighted one
sharded = shard_model(model)
criterion = TaylorImportance()
scores = criterion(sharded, shard(batches), lm_loss, show_progress=False)
shards = {{name: [local_rows(p)[0], list(p.to_local().shape)] for name, p in sharded.named_parameters() if "proj" in name}}
torch.save({{"scores": [(s.query_heads, s.kv_heads, s.mlp_channels) for s in scores], "buffer_elements": criterion.buffer_elements, "shards": shards,
             "grads": [p.grad is None for p in model.parameters()]}}, {out!r} + f"/rank{{dist.get_rank()}}.pt")
dist.destroy_process_group()
"""


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           *args], capture_output=True, text=True, timeout=600, env=_env(), cwd=cwd)


@pytest.mark.slow
def test_fsdp_scores_equal_one_process_with_buffers_sharded_like_the_weights(tmp_path):
    script = tmp_path / "score.py"
    script.write_text(_SCORE.format(tests=str(REPO_ROOT / "tests"), model=_MODEL, out=str(tmp_path)))
    proc = _torchrun([str(script)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]

    # The reference: one process, the same model and the same 3 batches, no process group.
    model = tiny_qwen2(**_MODEL)
    ids = torch.randint(0, 128, (6, 16), generator=torch.Generator().manual_seed(0))
    reference = TaylorImportance()(model, [{"input_ids": ids[i:i + 2]} for i in range(0, 6, 2)], lm_loss,
                                   show_progress=False)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for got in ranks:  # every rank ends with the whole set of scores
        for layer, ref in zip(got["scores"], reference):
            for a, b in zip(layer, (ref.query_heads, ref.kv_heads, ref.mlp_channels)):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
        assert all(got["grads"])  # the model handed in got no gradients: the sharded copy was scored

    # Buffer memory per rank is a shard: each rank's local chunks tile every prunable weight's rows exactly once,
    # and the buffers hold exactly those chunks (not the whole weights).
    params = {n: p for n, p in model.named_parameters() if "proj" in n}
    for name, p in params.items():
        (s0, shape0), (s1, shape1) = ranks[0]["shards"][name], ranks[1]["shards"][name]
        assert s0 == 0 and s1 == shape0[0] and shape0[0] + shape1[0] == p.shape[0], name
        assert shape0[1:] == shape1[1:] == list(p.shape[1:]), name
    total = sum(p.numel() for p in params.values())
    local = [sum(torch.Size(r["shards"][n][1]).numel() for n in params) for r in ranks]
    assert [r["buffer_elements"] for r in ranks] == local and sum(local) == total
    assert max(local) <= total // 2 + 45 * 64  # at most one row per weight more than half (uneven splits)


@pytest.mark.slow
def test_torchrun_fsdp_writes_the_plans_one_process_writes(tmp_path):
    """`torchrun --nproc-per-node 2 -m hf_prune prune ... --fsdp` (gloo, CPU): the same pruning_plan.json per level
    as one process without FSDP on the same windows (gisp, 2 rounds, compensation off)."""
    from hf_prune.cli import main

    base = make_tiny_base(tmp_path / "base")
    options = ["--sparsity", "0.2,0.4", "--num-samples", "6", "--seq-len", "32", "--batch-size", "2", "--steps", "2",
               "--compensation", "none", "--calibration", base["calibration"]]
    assert main(["prune", str(base["base"]), *options, "--output-dir", str(tmp_path / "one"), "-q"]) == 0
    proc = _torchrun(["-m", "hf_prune", "prune", str(base["base"]), *options, "--fsdp", "--output-dir",
                      str(tmp_path / "two")], tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for level in ("sparsity-20", "sparsity-40"):
        one, two = (json.loads((tmp_path / run / level / "pruning_plan.json").read_text()) for run in ("one", "two"))
        assert one["layers"] == two["layers"], level
    # One reduction of per-structure sums per round (plus the count and the padding's MAX, not counted): far
    # fewer bytes than the 4 x parameters of the data-parallel mode.
    rounds = [line for line in proc.stderr.splitlines() if "all-reduced" in line]
    assert len(rounds) == 2, proc.stderr[-3000:]
    sent = int(rounds[0].split("all-reduced ")[1].split()[0])
    model = tiny_qwen2(vocab_size=320)
    prunable = sum(p.numel() for layer in model.model.layers for n, p in layer.named_parameters() if "proj" in n)
    assert sent < prunable  # O(structures x head_dim) floats, not O(parameters)


def test_fsdp_refusals_are_one_line_and_before_scoring(monkeypatch):
    with pytest.raises(PruningError, match="torchrun"):
        fsdp.check_config(PruneConfig(fsdp=True, compensation=None).resolved())
    monkeypatch.setattr(fsdp, "world_size", lambda: 2)
    with pytest.raises(PruningError, match="compensation"):
        fsdp.check_config(PruneConfig(fsdp=True).resolved())  # gisp refits by default
    with pytest.raises(PruningError, match="taylor"):
        fsdp.check_config(PruneConfig(fsdp=True, method="wanda-sp", compensation=None).resolved())
    fsdp.check_config(PruneConfig(fsdp=True, compensation=None).resolved())  # gisp's taylor: accepted
    with pytest.raises(PruningError, match="fsdp"):
        PruneConfig(fsdp="yes")


def test_memory_plan_puts_a_shard_of_weights_and_buffers_on_each_gpu():
    from hf_prune.engine.memory import memory_plan

    config = tiny_qwen2(**_MODEL).config.to_dict()
    dense = memory_plan(config, PruneConfig(steps=1, compensation=None), dtype="bfloat16").devices[0].stages
    sharded = memory_plan(config, PruneConfig(steps=1, compensation=None, fsdp=True), dtype="bfloat16",
                          world_size=4).devices[0].stages
    one, four = dense["scoring, round 1"], sharded["scoring, round 1"]
    assert four["weights (FSDP2 shard)"] == -(-one["weights (dense)"] // 4)
    assert four["score buffers (fp32)"] == -(-one["score buffers (fp32)"] // 4)
    assert four["activations"] == one["activations"]  # each rank runs its own batches whole
    assert "weights (sliced copy)" not in four and list(sharded) == ["scoring, round 1"]
