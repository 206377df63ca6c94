"""Cost of scoring, measured in one run: Taylor scoring vs a plain forward+backward over the same tokens.

    python benchmarks/bench_cost.py --model smollm2          # or --model qwen

Prints and writes ``benchmarks/results/cost_<model>_b<batch size>.json``:
1. time of one Taylor scoring pass / time of one plain forward+backward (all parameters trainable, as in
   fine-tuning) over the same batches (target <= 1.25);
2. peak memory of a scoring pass / (weights + gradients) (target <= 1.5), each measured in a fresh subprocess:
   weights plus the peak RSS the pass adds on top of the loaded model (activations, gradients, buffers);
3. seconds per round of an iterative ``gisp`` run, which should fall as the model shrinks;
4. weight compensation (``hf_prune.compensate``, the default ``lsq`` refit) of the 50% level on
   ``--compensation-samples`` windows: seconds and peak memory, next to one scoring pass.
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


def _half_plan(model):
    """A fixed 50% plan (every other head slot and half the channels of each layer) for the compensation cost."""
    from hf_prune import PruningPlan
    from hf_prune.format.geometry import layer_shapes

    layers = []
    for shape in layer_shapes(model):
        per_group = shape.group_size
        heads = [h for h in range(shape.num_attention_heads) if h % per_group < max(1, per_group // 2)]
        layers.append({"query_heads": heads, "mlp_channels": list(range(0, shape.intermediate_size, 2))})
    return PruningPlan.from_dict({"layers": layers})


def compensation(model, args) -> None:
    from hf_prune import compensate

    data = batches(model.config.vocab_size, args.compensation_samples, args.seq_len, args.batch_size, seed=1)
    compensate(model, _half_plan(model), torch.cat([b["input_ids"] for b in data]), batch_size=args.batch_size,
               show_progress=False)


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
    if args.child == "compensate":
        compensation(model, args)
    else:
        (plain_forward_backward if args.child == "plain" else taylor)(model, data)
    param_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    extra_mb = (status_kb("VmHWM") - after_load) / 1024
    print(json.dumps({"peak_mb": param_mb + extra_mb, "extra_mb": extra_mb, "param_mb": param_mb, "hwm_reset": reset}))


def measure_memory(args, children) -> dict:
    """Peak memory of each pass, each in a fresh subprocess (see ``memory_child``)."""
    memory = {}
    for child in children:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--child", child,
                              "--num-samples", str(args.num_samples), "--seq-len", str(args.seq_len),
                              "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                              "--compensation-samples", str(args.compensation_samples)],
                             capture_output=True, text=True, check=True)
        memory[child] = json.loads(out.stdout.strip().splitlines()[-1])
    return memory


def compensation_cost(model, data, args, memory: dict) -> dict:
    """Seconds and peak memory of one compensation of a 50% plan, against one scoring pass timed around it
    (before and after: the mean, so load on a shared machine hits both alike)."""
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        taylor(model, data)
        times.append(time.perf_counter() - t0)
        if len(times) == 1:
            t0 = time.perf_counter()
            compensation(model, args)
            seconds = time.perf_counter() - t0
    scoring = sum(times) / len(times)
    return {"seconds": seconds, "tokens": args.compensation_samples * args.seq_len, "scoring_pass_seconds": scoring,
            "scoring_tokens": args.num_samples * args.seq_len, "seconds_vs_scoring_pass": seconds / scoring,
            "peak_mb": memory["compensate"]["peak_mb"], "scoring_peak_mb": memory["taylor"]["peak_mb"],
            "peak_vs_scoring_peak": memory["compensate"]["peak_mb"] / memory["taylor"]["peak_mb"]}


def scoring_cost(model, data, args, memory: dict) -> dict:
    """Taylor scoring vs plain forward+backward (time, memory) and seconds per round of an iterative run."""
    plain_forward_backward(model, data[:1])  # warm-up
    times = {"plain": [], "taylor": []}
    for _ in range(args.rounds):  # interleaved, medians: robust to other load on the machine
        for name, fn in (("plain", plain_forward_backward), ("taylor", taylor)):
            t0 = time.perf_counter()
            fn(model, data)
            times[name].append(time.perf_counter() - t0)
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}

    from hf_prune import prune

    calibration = torch.cat([b["input_ids"] for b in data])
    result = prune(model, None, calibration, [0.5], method="gisp", steps=4, batch_size=args.batch_size,
                   compensation=None, show_progress=False)
    per_step = [{"sparsity_after": round(e.sparsity, 4), "seconds": round(e.seconds, 2)} for e in result.log]
    weights_grads_mb = 2 * memory["taylor"]["param_mb"]
    return {"seconds": median, "time_ratio": median["taylor"] / median["plain"],
            "memory_mb": memory, "memory_ratio": memory["taylor"]["peak_mb"] / weights_grads_mb,
            "plain_memory_ratio": memory["plain"]["peak_mb"] / weights_grads_mb, "iterative_rounds": per_step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compensation-samples", type=int, default=128)
    parser.add_argument("--compensation-only", action="store_true",
                        help="measure only compensation (4.) and add it to the model's existing JSON")
    parser.add_argument("--child", choices=["plain", "taylor", "compensate"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return memory_child(args)

    out = ROOT / "benchmarks" / "results" / f"cost_{args.model}_b{args.batch_size}.json"
    model, _ = load_model(args.model)
    data = batches(model.config.vocab_size, args.num_samples, args.seq_len, args.batch_size)
    memory = measure_memory(args, ("taylor", "compensate") if args.compensation_only else ("plain", "taylor", "compensate"))
    settings = vars(args) | {"torch": torch.__version__, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}
    if args.compensation_only:
        payload = json.loads(out.read_text()) if out.is_file() else {"settings": settings}
    else:
        payload = {"settings": settings, **scoring_cost(model, data, args, memory)}
        print(f"| measure | value | target |\n|---|---|---|\n"
              f"| Taylor scoring / plain forward+backward (time, median of {args.rounds}) | {payload['time_ratio']:.2f} | <= 1.25 |\n"
              f"| scoring peak memory / (weights + gradients) | {payload['memory_ratio']:.2f} | <= 1.5 |\n"
              f"| plain forward+backward peak memory / (weights + gradients) | {payload['plain_memory_ratio']:.2f} | (reference) |")
        print("\ngisp to 50% in 4 rounds, seconds per round: " +
              ", ".join(f"{r['seconds']}s (-> {r['sparsity_after']:.0%})" for r in payload["iterative_rounds"]))
    comp = payload["compensation"] = compensation_cost(model, data, args, memory) | {"settings": settings}
    out.write_text(json.dumps(payload, indent=1))
    print(f"\ncompensation of a 50% plan on {comp['tokens']:,} tokens: {comp['seconds']:.1f}s "
          f"({comp['seconds_vs_scoring_pass']:.2f}x one scoring pass on {comp['scoring_tokens']:,} tokens), "
          f"peak {comp['peak_mb']:.0f} MB ({comp['peak_vs_scoring_peak']:.2f}x the scoring peak)")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
