"""Cost of scoring, measured in one run: Taylor scoring vs a plain forward+backward over the same tokens.

    python benchmarks/bench_cost.py --model smollm2          # or --model qwen

Prints and writes ``benchmarks/results/cost_<model>_b<batch size>.json``:
1. time of one Taylor scoring pass / time of one plain forward+backward (all parameters trainable, as in
   fine-tuning) over the same batches (target <= 1.25);
2. peak memory of a scoring pass / (weights + gradients) (target <= 1.5), each measured in a fresh subprocess:
   weights plus the peak RSS the pass adds on top of the loaded model (activations, gradients, buffers);
3. seconds per round of an iterative ``gisp`` run, which should fall as the model shrinks.
Token ids are random: time and memory do not depend on the text, so no corpus is needed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # spinning OpenMP threads distort timings on a shared machine

import torch  # noqa: E402
from common import MODELS, ROOT, load_model, status_kb  # noqa: E402


def batches(vocab: int, num: int, seq_len: int, batch_size: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (num, seq_len), generator=gen)
    return [{"input_ids": ids[i:i + batch_size]} for i in range(0, num, batch_size)]


def plain_forward_backward(model, data) -> None:
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = None
    for batch in data:
        model(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False).loss.backward()
    for p in model.parameters():
        p.grad = None


def taylor(model, data) -> None:
    from hf_prune.engine.importance import TaylorImportance
    from hf_prune.engine.objectives import lm_loss

    TaylorImportance()(model, data, lm_loss, show_progress=False)


def memory_child(args) -> None:
    """Runs in a subprocess: memory of one pass = weights + what the pass adds on top of the loaded model.

    Libraries are imported first and the weights copied into anonymous memory (from_pretrained may leave them
    memory-mapped), so neither import overhead nor page cache is counted.
    """
    import transformers  # noqa: F401

    import hf_prune  # noqa: F401

    model, _ = load_model(args.model)
    for p in model.parameters():
        p.data = p.data.clone()
    data = batches(model.config.vocab_size, args.num_samples, args.seq_len, args.batch_size)
    after_load = status_kb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False  # then VmHWM may include the load itself: an upper bound
    (plain_forward_backward if args.child == "plain" else taylor)(model, data)
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    extra_mb = (status_kb("VmHWM") - after_load) / 1024
    print(json.dumps({"peak_mb": param_mb + extra_mb, "extra_mb": extra_mb, "param_mb": param_mb, "hwm_reset": reset}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", choices=["plain", "taylor"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return memory_child(args)

    model, _ = load_model(args.model)
    data = batches(model.config.vocab_size, args.num_samples, args.seq_len, args.batch_size)
    plain_forward_backward(model, data[:1])  # warm-up
    times = {"plain": [], "taylor": []}
    for _ in range(args.rounds):  # interleaved, medians: robust to other load on the machine
        for name, fn in (("plain", plain_forward_backward), ("taylor", taylor)):
            t0 = time.perf_counter()
            fn(model, data)
            times[name].append(time.perf_counter() - t0)
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}

    memory = {}
    for child in ("plain", "taylor"):
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--child", child,
                              "--num-samples", str(args.num_samples), "--seq-len", str(args.seq_len),
                              "--batch-size", str(args.batch_size), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True)
        memory[child] = json.loads(out.stdout.strip().splitlines()[-1])

    from hf_prune import prune

    calibration = torch.cat([b["input_ids"] for b in data])
    result = prune(model, None, calibration, [0.5], method="gisp", steps=4, batch_size=args.batch_size,
                   show_progress=False)
    per_step = [{"sparsity_after": round(e.sparsity, 4), "seconds": round(e.seconds, 2)} for e in result.log]

    weights_grads_mb = 2 * memory["taylor"]["param_mb"]
    payload = {
        "settings": vars(args) | {"torch": torch.__version__, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")},
        "seconds": median, "time_ratio": median["taylor"] / median["plain"],
        "memory_mb": memory, "memory_ratio": memory["taylor"]["peak_mb"] / weights_grads_mb,
        "iterative_rounds": per_step,
    }
    out = ROOT / "benchmarks" / "results" / f"cost_{args.model}_b{args.batch_size}.json"
    out.write_text(json.dumps(payload, indent=1))
    print(f"| measure | value | target |\n|---|---|---|\n"
          f"| Taylor scoring / plain forward+backward (time, median of {args.rounds}) | {payload['time_ratio']:.2f} | <= 1.25 |\n"
          f"| scoring peak memory / (weights + gradients) | {payload['memory_ratio']:.2f} | <= 1.5 |\n"
          f"| plain forward+backward peak memory / (weights + gradients) | "
          f"{memory['plain']['peak_mb'] / weights_grads_mb:.2f} | (reference) |")
    print("\ngisp to 50% in 4 rounds, seconds per round: " +
          ", ".join(f"{r['seconds']}s (-> {r['sparsity_after']:.0%})" for r in per_step))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
