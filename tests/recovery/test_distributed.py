"""Recovery under torchrun: 2 gloo processes on the CPU, data parallel through the Trainer, against one process
with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT
from hf_prune.recovery import recover
from hf_prune.recovery.data import RecoveryWindows
from hf_prune.data.windows import CalibrationWindows

_RUN = r"""
import sys, torch, torch.distributed as dist
sys.path[:0] = [{tests!r}, {tests!r} + "/recovery"]
from test_recovery import _pair, _tokens
import test_distributed
from test_distributed import windows
from hf_prune.recovery import recover

torch.set_num_threads(1)
teacher, student = _pair()
result = recover(student, teacher, None, None, getattr(test_distributed, {options!r}), windows=windows(),
                 show_progress=False)
probe = result.lr_probe.to_dict() if result.lr_probe is not None else None
torch.save({{"weights": student.state_dict(), "held_back": result.held_back.to_dict(), "steps": result.steps,
             "world": dist.get_world_size(), "passes": result.teacher_cache.teacher_passes, "probe": probe}},
           {out!r} + f"/rank{{dist.get_rank()}}.pt")
# Left to interpreter exit, gloo's threads can abort the process ("terminate called without an active exception").
dist.destroy_process_group()
"""

# 6 steps of a global batch of 4 windows: 2 per process, the teacher's top-k cached per process; the held-back
# check every 2 steps (each process measures half of the 6 windows).
OPTIONS = {"method": "kd", "tokens": 24 * 32, "seq_len": 32, "batch_size": 4, "learning_rate": 3e-3, "kd_top_k": 16,
           "held_back": 6, "eval_steps": 2}


# The learning-rate probe: 160 steps (the fewest that probe: 2 steps per rate); each process trains every rate on its
# half of the probe's windows and measures its share of the held-back windows.
PROBE_OPTIONS = {**OPTIONS, "learning_rate": "auto", "tokens": 160 * 4 * 32, "eval_steps": 40}


def _torchrun(tmp_path, options: str) -> list[dict]:
    """The script above under ``torchrun --nproc-per-node 2`` with ``options`` (a name in this module): each
    rank's record."""
    script = tmp_path / "run.py"
    script.write_text(_RUN.format(tests=str(REPO_ROOT / "tests"), out=str(tmp_path), options=options))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script)], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]


def windows() -> RecoveryWindows:
    ids = torch.randint(3, 128, (30, 32), generator=torch.Generator().manual_seed(5))
    return RecoveryWindows(CalibrationWindows(ids[:24], ["a"] * 24), CalibrationWindows(ids[24:], ["a", "b"] * 3))


@pytest.mark.slow
def test_two_processes_train_the_weights_one_process_trains(tmp_path):
    from test_recovery import _pair

    ranks = _torchrun(tmp_path, "OPTIONS")
    teacher, student = _pair()
    one = recover(student, teacher, None, None, OPTIONS, windows=windows(), show_progress=False)
    assert [r["world"] for r in ranks] == [2, 2] and [r["steps"] for r in ranks] == [one.steps] * 2
    assert [r["passes"] for r in ranks] == [12, 12]  # each process ran the teacher on its own half of the windows
    for got in ranks:
        for name, value in student.state_dict().items():
            torch.testing.assert_close(got["weights"][name], value, rtol=1e-4, atol=1e-5, msg=name)
        h = got["held_back"]
        assert [s for s, _ in h["history"]] == [s for s, _ in one.held_back.history]
        assert h["before"] == pytest.approx(one.held_back.before, rel=1e-5)
        assert h["best"] == pytest.approx(one.held_back.best, rel=1e-4) and h["best_step"] == one.held_back.best_step


@pytest.mark.slow
def test_two_processes_probe_the_learning_rate_as_one_process(tmp_path):
    """``learning_rate="auto"`` under torchrun: every process measures the same probe losses (each its share of the
    held-back windows, reduced) and so trains with the same rate, the one a single process chooses."""
    from test_recovery import _pair

    ranks = _torchrun(tmp_path, "PROBE_OPTIONS")
    teacher, student = _pair()
    one = recover(student, teacher, None, None, PROBE_OPTIONS, windows=windows(), show_progress=False).lr_probe
    assert one is not None and one.steps == 2
    for got in ranks:
        probe = got["probe"]
        assert probe["chosen"] == one.chosen and probe["steps"] == one.steps
        assert probe["before"] == pytest.approx(one.before, rel=1e-5)
        assert [lr for lr, _ in probe["losses"]] == list(one.losses)
        assert [v for _, v in probe["losses"]] == pytest.approx(list(one.losses.values()), rel=1e-4)
    assert ranks[0]["probe"]["losses"] == ranks[1]["probe"]["losses"]


@pytest.mark.slow
def test_torchrun_prune_with_recovery_saves_what_one_process_saves(tmp_path, monkeypatch):
    """`torchrun --nproc-per-node 2 -m hf_prune prune ... --recovery kd` (gloo, CPU): every process trains each level
    (rank 0 alone evaluates and saves); the saved weights and held-back numbers are one process's."""
    import json

    from safetensors.torch import load_file

    from conftest import make_tiny_base
    from hf_prune.cli import main

    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path / "cache"))
    base = make_tiny_base(tmp_path / "base")
    options = ["--sparsity", "0.2,0.4", "--num-samples", "8", "--seq-len", "32", "--batch-size", "2", "--steps", "1",
               "--calibration", base["calibration"], "--recovery", "kd", "--recovery-tokens", "1024",
               "--recovery-seq-len", "32", "--recovery-batch-size", "4", "--recovery-held-back", "8",
               "--recovery-eval-steps", "2", "--recovery-kd-top-k", "16"]
    assert main(["prune", str(base["base"]), *options, "--output-dir", str(tmp_path / "one"), "-q"]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HF_PRUNE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "hf_prune", "prune", str(base["base"]), *options, "--output-dir",
                           str(tmp_path / "two")], capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for level in ("sparsity-20", "sparsity-40"):
        w1, w2 = (load_file(tmp_path / run / level / "model.safetensors") for run in ("one", "two"))
        assert w1.keys() == w2.keys()
        # Adam's steps (8 of at most lr = 1e-4 each) turn float noise in the reduced gradients into up to ~1e-5
        for name in w1:
            torch.testing.assert_close(w1[name], w2[name], rtol=1e-4, atol=5e-5, msg=name)
        h1, h2 = (json.loads((tmp_path / run / level / "eval_results.json").read_text())["recovery"]["held_back"]
                  for run in ("one", "two"))
        assert h1["best_step"] == h2["best_step"] and h1["before"] == pytest.approx(h2["before"], rel=1e-5)
        assert [v for _, v in h1["history"]] == pytest.approx([v for _, v in h2["history"]], rel=1e-5)
