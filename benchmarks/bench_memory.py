"""The memory plan against the measured peak: one scoring pass (or one compensation) in a fresh process.

    python benchmarks/bench_memory.py --model smollm2            # several settings, a table, a JSON file
    python benchmarks/bench_memory.py --model qwen

Each setting runs in its own subprocess (``--child``): libraries are imported and the weights copied into
anonymous memory first, ``/proc/self/clear_refs`` resets VmHWM, then one Taylor scoring pass as a pruning run
makes it (the per-domain loss recorder, fp32 score buffers) or one compensation of a 50% plan runs. Measured =
weights + (VmHWM - RSS after loading), as in ``bench_cost.py``; planned = :func:`hf_prune.memory_plan`'s total
for that stage on one device (the process's libraries are in neither). Token ids are random: memory does not
depend on the text. Writes ``benchmarks/results/memory_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from common import MODELS, ROOT, load_model, status_kb  # noqa: E402

#: (batch size, seq_len, gradient checkpointing, stage): the settings the benchmark compares.
SETTINGS = [(1, 128, False, "scoring"), (4, 128, False, "scoring"), (2, 512, False, "scoring"),
            (4, 256, True, "scoring"), (4, 128, False, "compensation")]


def _batches(vocab: int, num: int, seq_len: int, batch_size: int) -> list[dict]:
    ids = torch.randint(0, vocab, (num, seq_len), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": ids[i:i + batch_size], "domains": ["random"] * len(ids[i:i + batch_size])}
            for i in range(0, num, batch_size)]


def _half_plan(model):
    from hf_prune import PruningPlan
    from hf_prune.format.geometry import layer_shapes

    layers = []
    for shape in layer_shapes(model):
        heads = [h for h in range(shape.num_attention_heads) if h % shape.group_size < max(1, shape.group_size // 2)]
        layers.append({"query_heads": heads, "mlp_channels": list(range(0, shape.intermediate_size, 2))})
    return PruningPlan.from_dict({"layers": layers})


def child(args) -> dict:
    """One measurement in this (fresh) process; returns measured and planned bytes."""
    import transformers  # noqa: F401

    import hf_prune
    from hf_prune.compat import enable_activation_checkpointing
    from hf_prune.engine.batches import LossRecorder
    from hf_prune.engine.importance import TaylorImportance
    from hf_prune.engine.objectives import lm_loss

    dtype = getattr(torch, args.dtype)
    model, _ = load_model(args.model, dtype=dtype)
    for p in model.parameters():
        p.data = p.data.clone()  # from_pretrained may leave weights memory-mapped: make them counted RSS
    data = _batches(model.config.vocab_size, args.num_samples, args.seq_len, args.batch_size)
    config = hf_prune.PruneConfig(target_sparsity=0.5, batch_size=args.batch_size, seq_len=args.seq_len,
                                  num_samples=args.num_samples, gradient_checkpointing=args.gradient_checkpointing,
                                  compensation_samples=args.num_samples, steps=1, compensation="lsq")
    plan = hf_prune.memory_plan(model, config)
    after_load = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    if args.stage == "compensation":
        hf_prune.compensate(model, _half_plan(model), torch.cat([b["input_ids"] for b in data]), config=config,
                            show_progress=False)
        planned = plan.stage_total("compensation")
    else:
        if args.gradient_checkpointing:
            enable_activation_checkpointing(model)
        TaylorImportance()(model, data, LossRecorder(lm_loss), show_progress=False)
        planned = plan.stage_total("scoring, round 1")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    measured = weights + (status_kb("VmHWM") - after_load) * 1024
    return {"measured": measured, "planned": planned, "weights": weights, "ratio": planned / measured}


def run_child(model: str, batch_size: int, seq_len: int, gradient_checkpointing: bool, stage: str,
              dtype: str = "float32", num_samples: int | None = None, threads: int = 2,
              env: dict[str, str] | None = None) -> dict:
    """Runs :func:`child` in a fresh interpreter (the test calls this too); ``env`` updates its environment."""
    cmd = [sys.executable, str(Path(__file__)), "--model", model, "--child", "--batch-size", str(batch_size),
           "--seq-len", str(seq_len), "--stage", stage, "--dtype", dtype, "--threads", str(threads),
           "--num-samples", str(num_samples or 2 * batch_size)]
    if gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT, env={**os.environ, **(env or {})})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--stage", default="scoring", choices=["scoring", "compensation"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", default=None, help="indices of SETTINGS to run, e.g. 0,4 (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args)))
        return
    rows = []
    print("| stage | batch x seq_len | checkpointing | planned | measured (fixed mmap threshold) | ratio | "
          "measured (default glibc) | ratio |\n|---|---|---|---:|---:|---:|---:|---:|")
    chosen = SETTINGS if args.rows is None else [SETTINGS[int(i)] for i in args.rows.split(",")]
    for batch, seq, gc, stage in chosen:
        # A fixed mmap threshold returns every large freed block to the system at once: VmHWM then measures the
        # tensors held. glibc's default (a threshold that grows) keeps freed blocks: the RSS a user sees.
        fixed = run_child(args.model, batch, seq, gc, stage, args.dtype, threads=args.threads,
                          env={"MALLOC_MMAP_THRESHOLD_": "65536"})
        default = run_child(args.model, batch, seq, gc, stage, args.dtype, threads=args.threads)
        rows.append({"batch_size": batch, "seq_len": seq, "gradient_checkpointing": gc, "stage": stage,
                     "planned": fixed["planned"], "measured_fixed_threshold": fixed["measured"],
                     "measured_default_allocator": default["measured"], "weights": fixed["weights"]})
        mib = lambda n: f"{n / 2**20:,.0f} MiB"  # noqa: E731
        print(f"| {stage} | {batch} x {seq} | {'on' if gc else 'off'} | {mib(fixed['planned'])} | "
              f"{mib(fixed['measured'])} | {fixed['planned'] / fixed['measured']:.2f} | {mib(default['measured'])} | "
              f"{fixed['planned'] / default['measured']:.2f} |", flush=True)
    out = ROOT / "benchmarks" / "results" / f"memory_{args.model}_{args.dtype}.json"
    out.write_text(json.dumps({"model": args.model, "dtype": args.dtype, "torch": torch.__version__, "rows": rows},
                              indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
