"""What choosing the damping per projection costs: one refit of the same plan, fixed damping vs ``"auto"``.

    python benchmarks/bench_refit_cost.py --model smollm2
    python benchmarks/bench_refit_cost.py --model qwen

The plan is ``magnitude`` at ``--sparsity`` (data-free, so no scoring pass is timed; uniform allocation, every
layer keeps the same widths). On the seven-domain mix (``--compensation-samples`` windows of ``--seq-len`` tokens, one
draw shared by every run), ``compensate`` runs in one process, back to back:

- ``fixed``: ``compensation_damping=1e-4`` (one solve per projection);
- ``auto``: the default, the grid walked from the most damped end and stopped past the best;
- ``auto-full-grid``: the same choice scoring every damping of the grid (what ``"auto"`` cost before the walk).

It records the seconds of each, the dampings chosen per projection, whether ``auto`` and ``auto-full-grid`` gave
the same weights, and the dev perplexity of each refit next to selection only (8 x 128 tokens per domain). Writes
``benchmarks/results/refit_cost_<model>.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import time

import torch
from bench_quality import add_run_options, domain_mix, evaluate
from common import DOMAINS, MODELS, ROOT, ChosenDampings, corpus_dir, dev_files, load_model

from hf_prune import PruneConfig, apply_plan, compensate, prune
from hf_prune.engine import compensation
from hf_prune.engine.compensation import compensation_batches


def timed_refit(model, plan, mix, tokenizer, config, data, full_grid: bool) -> tuple[object, float, list[str]]:
    original = compensation.choose_damping
    if full_grid:
        compensation.choose_damping = functools.partial(original, walk=False)
    try:
        with ChosenDampings() as chosen:
            t0 = time.perf_counter()
            out = compensate(model, plan, mix, tokenizer=tokenizer, config=config, data=data, show_progress=False)
            seconds = time.perf_counter() - t0
        return out, seconds, [f"{where}={damping:g}" for where, damping in chosen.chosen]
    finally:
        compensation.choose_damping = original


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--compensation-samples", type=int, default=128)
    add_run_options(parser, steps=5, eval_windows=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = corpus_dir("bench_refit_cost")
    evals = dev_files(corpus)
    model, tokenizer = load_model(args.model)
    mix = domain_mix(corpus, DOMAINS)
    plan = prune(model, tokenizer, None, [args.sparsity], method="magnitude", show_progress=False).plans[args.sparsity]
    base = PruneConfig(target_sparsity=[args.sparsity], seq_len=args.seq_len, seed=args.seed, batch_size=args.batch_size,
                       compensation="lsq", compensation_samples=args.compensation_samples)
    data = compensation_batches(mix, tokenizer, base, model.device)
    runs = {"selection only": {"seconds": 0.0, **evaluate(apply_plan(model, plan), tokenizer, evals, args, mix)}}
    weights = {}
    for name, damping, full in (("fixed", 1e-4, False), ("auto", "auto", False), ("auto-full-grid", "auto", True)):
        refit, seconds, chosen = timed_refit(model, plan, mix, tokenizer, base.replace(compensation_damping=damping),
                                             data, full)
        runs[name] = {"seconds": round(seconds, 1), "chosen": chosen, **evaluate(refit, tokenizer, evals, args, mix)}
        weights[name] = refit.state_dict()
        print(f"{name}: {seconds:.0f} s, mean dev perplexity {runs[name]['mean']:.2f}", flush=True)
    same = all(torch.equal(weights["auto"][k], weights["auto-full-grid"][k]) for k in weights["auto"])
    result = {"model": args.model, "sparsity": args.sparsity, "plan": "magnitude (uniform)",
              "windows": f"{args.compensation_samples} x {args.seq_len}", "folds": len(data.folds or []),
              "threads": args.threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
              "auto_equals_full_grid": same, "auto_vs_full_grid_seconds": round(
                  runs["auto"]["seconds"] / runs["auto-full-grid"]["seconds"], 3),
              "auto_vs_fixed_seconds": round(runs["auto"]["seconds"] / runs["fixed"]["seconds"], 3), "runs": runs}
    out = args.out or ROOT / "benchmarks" / "results" / f"refit_cost_{args.model}.json"
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"| run | seconds | mean dev ppl |\n|---|---:|---:|")
    for name, row in runs.items():
        print(f"| {name} | {row['seconds']:.0f} | {row['mean']:.2f} |")
    print(f"auto = full grid: {same}; auto / full grid {result['auto_vs_full_grid_seconds']:.2f}x; "
          f"auto / fixed {result['auto_vs_fixed_seconds']:.2f}x\nwrote {out}")


if __name__ == "__main__":
    main()
