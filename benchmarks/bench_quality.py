"""Pruning quality: per-domain dev perplexity of every method at several sparsities, in one run.

    python benchmarks/bench_quality.py --model smollm2 --sparsities 0.2,0.3,0.4,0.5
    python benchmarks/bench_quality.py --model qwen --methods gisp,wanda-sp --single-domain 0.3,0.5

Calibrates on ``../shared/corpus/calib`` (or ``$HF_PRUNE_CORPUS/calib``) and evaluates on the disjoint ``dev``
split, with the same calibration windows (same seed) for every method. Writes
``benchmarks/results/quality_<model>.json``, prints markdown tables, and draws a PNG of mean perplexity vs
sparsity (matplotlib, a benchmark-only extra) next to the JSON. Every level is summarised twice (``summary`` in
the JSON, both in the table): the mean of the per-domain perplexities, and the geometric mean of the per-domain
ratios to dense, which one high-perplexity domain cannot dominate.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from common import (DOMAINS, MODELS, ROOT, calib_file, corpus_dir, dev_files, finish_perplexity_plot, geometric_mean,
                    load_model)

from hf_prune import CalibrationMix, evaluate_perplexity, prune
from hf_prune.format.geometry import layer_shapes
from hf_prune.markdown import table as markdown_table


def domain_mix(corpus: Path, domains: list[str]) -> CalibrationMix:
    """Equal-weight calibration mix of ``domains`` from ``corpus/calib``."""
    return CalibrationMix({d: {"source": calib_file(corpus, d), "weight": 1.0} for d in domains})


def evaluate(model, tokenizer, evals, args, calibration):
    report = evaluate_perplexity(model, tokenizer, evals, seq_len=args.eval_seq_len,
                                 max_windows_per_domain=args.eval_windows, batch_size=8, progress=False,
                                 calibration=calibration)
    return {"per_domain": report.per_domain, "mean": report.mean, "worst": max(report.per_domain.values())}


def parse_overrides(items: list[str]) -> dict:
    """``["steps=4", "compensation_toward=kept"]`` -> ``{"steps": 4, "compensation_toward": "kept"}`` (numbers
    parsed, anything else kept as text)."""
    kwargs = {}
    for item in items:
        key, value = item.split("=")
        try:
            kwargs[key] = int(value) if value.isdigit() else float(value)
        except ValueError:
            kwargs[key] = value
    return kwargs


def run_method(model, tokenizer, calibration, evals, spec, sparsities, args, label=None):
    """``spec`` is a preset name, optionally with overrides: ``gisp:normalization=gisp:steps=4``."""
    t0 = time.perf_counter()
    method, *overrides = spec.split(":")
    kwargs = {"steps": args.steps} if method == "gisp" and args.steps else {}
    kwargs.update(parse_overrides(overrides))
    result = prune(model, tokenizer, calibration, sparsities, method=method, num_samples=args.num_samples,
                   seq_len=args.seq_len, seed=args.seed, batch_size=args.batch_size, show_progress=False, **kwargs)
    prune_seconds = time.perf_counter() - t0
    rows = {}
    for s in sparsities:
        t1 = time.perf_counter()
        pruned = result.apply(model, s)  # as saved: compensated when the config says so
        apply_seconds = time.perf_counter() - t1
        kept = next(e for e in result.log if e.target_sparsity == s)
        rows[str(s)] = {**evaluate(pruned, tokenizer, evals, args, calibration), "sparsity": result.sparsity[s],
                        **({"priors": result.plans[s].metadata["priors"]} if "priors" in result.plans[s].metadata
                           else {}),
                        "apply_seconds": apply_seconds,
                        "kv_cache_reduction": result.kv_cache_reduction[s],
                        "kept": {"query_heads": kept.query_heads, "kv_heads": kept.kv_heads,
                                 "mlp_channels": kept.mlp_channels,
                                 "mlp_widths": [l.intermediate_size for l in layer_shapes(pruned)]}}
        del pruned
    print(f"  {label or spec}: {prune_seconds:.0f}s " + ", ".join(
        f"{s}: {rows[str(s)]['mean']:.2f}" for s in sparsities), flush=True)
    out = {"prune_seconds": prune_seconds, "levels": rows}
    if any(e.priors for e in result.log):  # "auto" priors: what choosing cost, against each round's whole time
        out["rounds"] = [{"seconds": e.seconds, "choice_seconds": e.priors["seconds"],
                          "plans_measured": e.priors["plans_measured"], "candidates": e.priors["candidates"],
                          **{k: e.priors[k] for k in ("from", "gain", "standard_error", "moved") if k in e.priors}}
                         for e in result.log]
    return out


def add_run_options(parser: argparse.ArgumentParser, *, steps: int | None = None, eval_windows: int = 12) -> None:
    """The options ``run_method`` and ``evaluate`` read (besides ``--num-samples`` / ``--seq-len``): one definition
    for every script that calls them."""
    rounds = "the preset's" if steps is None else steps
    parser.add_argument("--steps", type=int, default=steps, help=f"gisp scoring rounds (default: {rounds})")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eval-seq-len", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=eval_windows, help="evaluation windows per domain")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)


def to_dense(row: dict, dense: dict) -> float:
    """The geometric mean over the domains of a level's perplexity ratio to dense: the summary figure that weighs
    every domain's change alike (the mean of perplexities is dominated by the highest-perplexity domain)."""
    return geometric_mean(row["per_domain"][d] / dense["per_domain"][d] for d in dense["per_domain"])


def summary(results: dict, dense: dict) -> dict:
    """``{method: {level: {"mean", "geomean_to_dense"}}}``: the two summary figures of every measured level."""
    return {m: {s: {"mean": row["mean"], "geomean_to_dense": to_dense(row, dense)} for s, row in res["levels"].items()}
            for m, res in results.items()}


def table(results: dict, sparsities: list[float], dense: dict) -> str:
    """Mean perplexity and, in brackets, the geometric mean of the per-domain ratios to dense."""
    rows = [["dense", f"{dense['mean']:.2f} (1.000x)", *[""] * (len(sparsities) - 1)]]
    for method, res in results.items():
        rows.append([method, *(f"{res['levels'][str(s)]['mean']:.2f} ({to_dense(res['levels'][str(s)], dense):.3f}x)"
                               if str(s) in res["levels"] else "" for s in sparsities)])
    return markdown_table(["method", *(f"{s:.0%}" for s in sparsities)], rows)


def peer_series(model: str) -> dict[str, dict]:
    """The external peer's rows (``peer_torch_pruning.py``'s JSON beside ours), shaped like ours, if it was run."""
    path = ROOT / "benchmarks" / "results" / f"peer_torch_pruning_{model}.json"
    if not path.is_file():
        return {}
    return {"torch-pruning (peer)": {"levels": json.loads(path.read_text())["levels"]}}


def plotted(results: dict) -> dict:
    """The methods the plot shows: presets at their defaults, gisp without compensation, the peer (sweep variants
    stay in the JSON and the README tables; twenty lines make no readable plot)."""
    return {m: r for m, r in results.items() if ":" not in m or m == "gisp:compensation=none"}


def plot(path: Path, results: dict, sparsities: list[float], dense: dict, title: str) -> None:
    """Mean dev perplexity vs sparsity, one line per method (levels a method lacks are skipped)."""
    results = plotted(results)
    if not results:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    colors = plt.get_cmap("tab20").colors
    for k, (method, res) in enumerate(results.items()):
        have = [s for s in sparsities if str(s) in res["levels"]]
        ax.plot([s * 100 for s in have], [res["levels"][str(s)]["mean"] for s in have], marker="o", label=method,
                linestyle=":" if "peer" in method else "-", color=colors[k % len(colors)],
                linewidth=2.5 if method == "gisp" else 1.2)
    finish_perplexity_plot(fig, ax, path, dense=dense["mean"], xlabel="decoder parameters removed (%)", title=title)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--methods", default="gisp,llm-pruner,wanda-sp,flap,magnitude,random")
    parser.add_argument("--sparsities", default="0.2,0.3,0.4,0.5")
    parser.add_argument("--single-domain", default="", help="sparsities for the mix-vs-single-domain study")
    parser.add_argument("--single-method", default="gisp", help="method spec of that study (default: gisp)")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    add_run_options(parser)
    parser.add_argument("--out", default=None)
    parser.add_argument("--append", action="store_true",
                        help="keep the methods already in --out and run only the missing ones")
    parser.add_argument("--plot-only", action="store_true",
                        help="redraw --out's plot and rewrite its summary from its JSON; run nothing")
    args = parser.parse_args()
    if args.plot_only:
        out = Path(args.out or ROOT / "benchmarks" / "results" / f"quality_{args.model}.json")
        saved = json.loads(out.read_text())
        levels = [float(s) for s in saved["settings"]["sparsities"].split(",") if s]
        plot(out.with_suffix(".png"), {**saved["methods"], **peer_series(args.model)}, levels, saved["dense"],
             f"{args.model}: mean dev perplexity")
        out.write_text(json.dumps({**saved, "summary": summary(saved["methods"], saved["dense"])}, indent=1))
        print(table(saved["methods"], levels, saved["dense"]))
        return
    torch.set_num_threads(args.threads)
    corpus = corpus_dir("bench_quality")
    sparsities = [float(s) for s in args.sparsities.split(",") if s]
    methods = [m for m in args.methods.split(",") if m]
    calibration = domain_mix(corpus, DOMAINS)
    evals = dev_files(corpus)

    out = Path(args.out or ROOT / "benchmarks" / "results" / f"quality_{args.model}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.read_text()) if args.append and out.is_file() else {}
    if previous.get("settings"):
        # Rows measured under other settings are not comparable: refuse rather than mix them silently.
        keys = ("num_samples", "seq_len", "steps", "batch_size", "eval_seq_len", "eval_windows", "seed")
        changed = [k for k in keys if previous["settings"].get(k) != getattr(args, k)]
        if changed:
            sys.exit(f"bench_quality: --append to {out} measured with other {', '.join(changed)}; "
                     "use the same settings or another --out")

    # Each --append run adds its own arguments to "runs": which command measured which rows stays on record.
    def run_args(given: dict) -> dict:
        return {k: given.get(k) for k in ("methods", "sparsities", "single_domain", "single_method", "threads")}

    before = previous.get("settings") or {}
    runs = before.get("runs") or ([run_args(before)] if before else [])
    settings = {**before, **vars(args), "domains": DOMAINS, "torch": torch.__version__,
                "machine": platform.processor() or platform.machine(),
                "note": "CPU, shared 2-core machine; perplexities do not depend on load",
                "runs": [*runs, run_args(vars(args))]}
    model, tokenizer = load_model(args.model)
    print(f"model {args.model}; calibration {args.num_samples} x {args.seq_len} tokens, equal-weight mix of "
          f"{len(DOMAINS)} domains; eval {args.eval_windows} x {args.eval_seq_len} tokens per dev domain", flush=True)
    t0 = time.perf_counter()
    dense = previous.get("dense") or evaluate(model, tokenizer, evals, args, calibration)
    print(f"  dense: mean {dense['mean']:.2f} ({time.perf_counter() - t0:.0f}s)", flush=True)

    results = dict(previous.get("methods", {}))
    for m in methods:
        if m not in results:
            results[m] = run_method(model, tokenizer, calibration, evals, m, sparsities, args)
            # Saved after every method: a long run that stops part-way keeps what it measured.
            out.write_text(json.dumps({**previous, "settings": settings, "dense": dense, "methods": results,
                                       "summary": summary(results, dense)}, indent=1))

    single = dict(previous.get("single_domain", {}))
    single_levels = [float(s) for s in args.single_domain.split(",") if s]
    if single_levels:
        # The linear schedule passes through every target, so the grid's gisp run (same steps, same top level)
        # prunes exactly as a mix run at these levels alone would.
        if "mix" not in single:
            method = args.single_method
            single["mix"] = results[method] if method in results and all(s in sparsities for s in single_levels) \
                and max(single_levels) == max(sparsities) else \
                run_method(model, tokenizer, calibration, evals, method, single_levels, args, f"{method} (mix)")
        for d in DOMAINS:
            if d in single:
                continue
            only = domain_mix(corpus, [d])
            single[d] = run_method(model, tokenizer, only, evals, args.single_method, single_levels, args,
                                   f"{args.single_method} ({d} only)")
            out.write_text(json.dumps({**previous, "settings": settings, "dense": dense, "methods": results,
                                       "single_domain": single}, indent=1))

    # Keys this script does not write (notes, studies merged by hand) are kept.
    out.write_text(json.dumps({**previous, "settings": settings, "dense": dense, "methods": results,
                               "single_domain": single, "summary": summary(results, dense)}, indent=1))
    print("\nMean dev perplexity over the domains (geometric mean of the per-domain ratios to dense):\n"
          + table(results, sparsities, dense))
    if single:
        head = ["calibration", *(f"{s:.0%} {k}" for s in single_levels for k in ("mean", "worst"))]
        rows = [[name, *(f"{res['levels'][str(s)][k]:.2f}" for s in single_levels for k in ("mean", "worst"))]
                for name, res in single.items()]
        print(f"\nCalibration data, {args.single_method}: mean / worst-domain perplexity\n" + markdown_table(head, rows))
    plot(out.with_suffix(".png"), {**results, **peer_series(args.model)}, sparsities, dense,
         f"{args.model}: mean dev perplexity")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
