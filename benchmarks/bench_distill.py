"""What a recovery step costs: student tokens/s and peak memory of the distillation objectives against a plain LM step.

One pruned level per model (30%, magnitude: data-free, so the shapes are a real level's and no calibration pass is
paid), the same training windows for every run, each run on a fresh copy of the level:

- ``lm``: the next-token loss alone (no teacher), the plain training step;
- ``kd-legacy``: the objective as it was before the cached teacher: the teacher run at every step and the full-vocabulary
  KL of fp32 ``log_softmax`` copies of both logits (no chunks);
- ``kd-full``: ``kd_top_k=0``: the teacher at every step, the KL over chunks of positions;
- ``kd-top<k>``: the default: the teacher's top-k cached once per window before training (its pass timed apart).

Tokens/s are of the training steps after the first (the first pays for allocation); peak memory is the process's
peak resident set during the run above what it held before it (``/proc/self/clear_refs``; the script runs itself
with a fixed ``MALLOC_MMAP_THRESHOLD_`` so that freed tensors leave the resident set and one run's peak does not
hide in memory an earlier run freed). After the timed steps, the
loss on held-back calibration windows (disjoint from the training ones) is reported for every run: after so few steps
it shows only that the runs train, not which objective is better.

    python benchmarks/bench_distill.py --models smollm2,qwen --steps 4 --out benchmarks/results/distill.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

from common import DOMAINS, MODELS, calib_file, corpus_dir, load_model, status_kb

import torch
import torch.nn.functional as F
from transformers import TrainerCallback

from hf_prune import CalibrationMix, prune
from hf_prune.recovery import RecoveryConfig, recover, recovery_windows
from hf_prune.recovery.data import RecoveryWindows
from hf_prune.recovery.distill import DistillationTrainer
from hf_prune.recovery.guard import held_back_loss
from hf_prune.recovery.teacher import TeacherCache


class StepTimes(TrainerCallback):
    def __init__(self):
        self.times = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter())


def legacy_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
    """The kd objective before the cached teacher: whole-batch fp32 log_softmax of student and teacher."""
    ids = inputs["input_ids"]
    outputs = model(input_ids=ids, use_cache=False)
    logits = outputs.logits[:, :-1]
    with torch.no_grad():
        teacher = self.teacher(input_ids=ids, use_cache=False).logits[:, :-1]
    s, t = F.log_softmax(logits.float(), -1), F.log_softmax(teacher.float(), -1)
    loss = F.kl_div(s, t, log_target=True, reduction="none").sum(-1).mean()
    return (loss, outputs) if return_outputs else loss


def reset_peak() -> int:
    Path("/proc/self/clear_refs").write_text("5")
    return status_kb("VmRSS")


def run(name, student, teacher, windows, held, config, k):
    student = copy.deepcopy(student)
    timer = StepTimes()
    before = reset_peak()
    fill_seconds = None
    cache = None
    original = DistillationTrainer.compute_loss
    if name == "kd-legacy":
        DistillationTrainer.compute_loss = legacy_loss
    try:
        if name.startswith("kd-top"):
            start = time.perf_counter()
            cache = TeacherCache(windows.input_ids, k, config.temperature)
            cache.fill(teacher, torch.arange(len(windows)), config.batch_size)
            fill_seconds = time.perf_counter() - start
        options = {"method": "lm" if name == "lm" else "kd", "kd_top_k": k if name.startswith("kd-top") else 0}
        recover(student, None if name == "lm" else teacher, None, None, config.replace(**options),
                windows=RecoveryWindows(windows, None), teacher_cache=cache, show_progress=False, callbacks=[timer])
    finally:
        DistillationTrainer.compute_loss = original
    peak = status_kb("VmHWM") - before
    steps = len(timer.times) - 1
    out = {"tokens_per_s": round(steps * config.tokens_per_step / (timer.times[-1] - timer.times[0]), 1),
           "peak_extra_mib": round(peak / 1024), "held_back_loss": round(float(held_back_loss(
               student, held.input_ids, config.batch_size).mean()), 4)}
    if fill_seconds is not None:
        out["teacher_pass_s"] = round(fill_seconds, 1)
        out["teacher_pass_tokens_per_s"] = round(len(windows) * config.seq_len / fill_seconds, 1)
        out["cache_mib"] = round(cache.nbytes / 2**20, 1)
    print(f"  {name}: {out}", flush=True)
    return out


def bench_model(model_name: str, args) -> dict:
    torch.manual_seed(0)
    model, tokenizer = load_model(model_name)
    corpus = corpus_dir("bench_distill")
    mix = CalibrationMix({d: calib_file(corpus, d) for d in DOMAINS})
    config = RecoveryConfig(tokens=args.steps * args.batch_size * args.seq_len, seq_len=args.seq_len,
                            batch_size=args.batch_size, warmup=0, held_back=args.held_back, learning_rate=1e-4)
    drawn = recovery_windows(mix, tokenizer, config)
    result = prune(model, tokenizer, drawn.train.input_ids[:2], 0.3, method="magnitude", steps=1, num_samples=2,
                   seq_len=args.seq_len, compensation=None, show_progress=False)
    level = result.apply(model, 0.3, show_progress=False)
    out = {"params_dense": sum(p.numel() for p in model.parameters()),
           "params_level": sum(p.numel() for p in level.parameters()), "vocab": model.config.vocab_size, "runs": {}}
    print(f"{model_name}: {out['params_level']:,} of {out['params_dense']:,} parameters, vocab {out['vocab']:,}")
    for name in args.runs.split(","):
        name = name.replace("<k>", str(args.k))
        out["runs"][name] = run(name, level, model, drawn.train, drawn.held_back, config, args.k)
    lm = out["runs"].get("lm", {}).get("tokens_per_s")
    if lm:
        out["ratio_to_lm"] = {n: round(r["tokens_per_s"] / lm, 3) for n, r in out["runs"].items()}
    return out


def main() -> None:
    if os.environ.get("MALLOC_MMAP_THRESHOLD_") is None:  # see the module docstring (glibc reads it at start)
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="smollm2,qwen", help=f"comma-separated: {', '.join(MODELS)}")
    parser.add_argument("--runs", default="lm,kd-legacy,kd-full,kd-top<k>")
    parser.add_argument("--k", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run (the first is not timed)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--held-back", type=int, default=14)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {"settings": vars(args), "models": {}}
    for name in args.models.split(","):
        results["models"][name] = bench_model(name, args)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
