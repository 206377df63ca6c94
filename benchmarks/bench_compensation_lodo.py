"""Weight compensation out of domain: leave-one-domain-out over the seven corpus domains.

    python benchmarks/bench_compensation_lodo.py --model smollm2
    python benchmarks/bench_compensation_lodo.py --model qwen --variants compensation_damping=0.0001,...

Each domain in turn is held out (a fold): scoring and the refit's statistics use the equal-weight mix of the six
others. One nested ``gisp`` run without compensation gives every level's plan (with ``compensation_when="level"``
the plans are those of no compensation); every refit variant is then applied to that same plan, and selection
only, every variant and the dense model are evaluated on all seven ``dev`` domains. The figure per domain is the
ratio of the held-out domain's perplexity with the refit to without it (same plan, same windows); the summary
per level and variant is the geometric mean of the seven held-out ratios, the worst of them, and the geometric
mean of the in-domain ratios (each fold's six calibration domains).

A variant is ``PruneConfig`` compensation overrides joined by ``:`` (``compensation_toward=kept:
compensation_damping=auto``); the base is ``compensation="lsq"`` with the library's defaults. Writes
``benchmarks/results/compensation_lodo_<model>.json`` after every measured variant (a stopped run resumes where it
stopped; the plans are cached, so variants added later reuse them) and a PNG of the held-out ratios beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from bench_quality import add_run_options, domain_mix, evaluate, parse_overrides
from common import DOMAINS, MODELS, ROOT, ChosenDampings, corpus_dir, dev_files, geometric_mean, load_model

from hf_prune import PruneConfig, PruningPlan, apply_plan, compensate, prune
from hf_prune.engine.compensation import compensation_batches
from hf_prune.fileio import cache_dir

OLD = "compensation_damping=0.0001:compensation_toward=zero"  # the refit as it shipped before this study
#: The targets: no held-out domain more than 2% worse than selection only, and a geometric mean below 1.
WORST_ALLOWED = 1.02
SETTINGS = ("num_samples", "seq_len", "steps", "batch_size", "eval_seq_len", "eval_windows", "seed",
            "compensation_samples", "sparsities")


def fold_plans(model, tokenizer, mix, held_out: str, levels: list[float], args) -> tuple[dict, float]:
    """The fold's plans, from the cache or from one nested selection-only run (and its seconds)."""
    folder = Path(args.plans_dir) / (f"{args.model}-{held_out}-steps{args.steps}-{args.num_samples}x{args.seq_len}"
                                     f"-seed{args.seed}-" + "_".join(f"{s:g}" for s in levels))
    paths = {s: folder / f"plan-{s:g}.json" for s in levels}
    if all(p.is_file() for p in paths.values()):
        return {s: PruningPlan.load(p) for s, p in paths.items()}, 0.0
    t0 = time.perf_counter()
    result = prune(model, tokenizer, mix, levels, method="gisp", steps=args.steps, num_samples=args.num_samples,
                   seq_len=args.seq_len, seed=args.seed, batch_size=args.batch_size, compensation=None,
                   show_progress=False)
    seconds = time.perf_counter() - t0
    folder.mkdir(parents=True, exist_ok=True)
    for s, p in paths.items():
        result.plans[s].save(p)
    return dict(result.plans), seconds


def run_fold(model, tokenizer, corpus, evals, held_out, levels, variants, args, record, save) -> None:
    """Measure every missing (level, variant) of one fold into ``record`` (``save()`` after each)."""
    mix = domain_mix(corpus, [d for d in DOMAINS if d != held_out])
    fold = record.setdefault(held_out, {"levels": {}})
    measure = [s for s in levels if str(s) in args.measure.split(",")] if args.measure else levels
    missing = [(s, v) for s in measure for v in ["none", *variants] if v not in fold["levels"].get(str(s), {})]
    if not missing:
        return
    plans, seconds = fold_plans(model, tokenizer, mix, held_out, levels, args)
    if seconds:
        fold["prune_seconds"] = seconds
    print(f"fold {held_out}: plans ({seconds:.0f}s)", flush=True)
    base = PruneConfig(target_sparsity=levels, seq_len=args.seq_len, seed=args.seed, batch_size=args.batch_size,
                       compensation="lsq", compensation_samples=args.compensation_samples)
    drawn: dict[int, object] = {}
    for s, variant in missing:
        t0 = time.perf_counter()
        with ChosenDampings() as chosen:
            if variant == "none":
                pruned = apply_plan(model, plans[s])
            else:
                config = base.replace(**parse_overrides(variant.split(":")))
                if config.compensation_samples not in drawn:  # one draw per fold: every variant refits these windows
                    drawn[config.compensation_samples] = compensation_batches(mix, tokenizer, config, model.device)
                pruned = compensate(model, plans[s], mix, tokenizer=tokenizer, config=config,
                                    data=drawn[config.compensation_samples], show_progress=False)
        seconds = time.perf_counter() - t0
        row = {**evaluate(pruned, tokenizer, evals, args, mix), "refit_seconds": seconds}
        if chosen.chosen:
            row["chosen_dampings"] = chosen.counts()
        del pruned
        fold["levels"].setdefault(str(s), {})[variant] = row
        save()
        print(f"  {held_out} {s:.0%} {variant}: held out {row['per_domain'][held_out]:.2f}, mean {row['mean']:.2f} "
              f"({seconds:.0f}s)", flush=True)


def summarize(folds: dict, dense: dict, levels: list[float], variants: list[str]) -> dict:
    """Per level and variant: the held-out ratios (refit / selection only), their geometric mean and worst, the
    in-domain geometric mean, and the geometric mean of the held-out perplexities over dense."""
    out = {}
    for s in levels:
        rows = {}
        for v in ["none", *variants]:
            done = [d for d in DOMAINS if d in folds and v in folds[d]["levels"].get(str(s), {})
                    and "none" in folds[d]["levels"][str(s)]]
            if not done:
                continue
            level = {d: folds[d]["levels"][str(s)] for d in done}
            held = {d: level[d][v]["per_domain"][d] / level[d]["none"]["per_domain"][d] for d in done}
            inside = [level[d][v]["per_domain"][e] / level[d]["none"]["per_domain"][e]
                      for d in done for e in DOMAINS if e != d]
            to_dense = {d: level[d][v]["per_domain"][d] / dense["per_domain"][d] for d in done}
            rows[v] = {"folds": len(done), "held_out": held, "held_out_geomean": geometric_mean(held.values()),
                       "held_out_worst": max(held.values()), "in_domain_geomean": geometric_mean(inside),
                       "held_out_to_dense": to_dense, "held_out_to_dense_geomean": geometric_mean(to_dense.values())}
            if v != "none" and len(done) == len(DOMAINS):
                rows[v]["targets_met"] = {"worst": rows[v]["held_out_worst"] <= WORST_ALLOWED,
                                          "geomean": rows[v]["held_out_geomean"] < 1.0}
        out[str(s)] = rows
    return out


def tables(summary: dict, variants: list[str]) -> str:
    """Markdown: per level, the held-out ratio of every variant per domain, then the summary rows."""
    names = {v: f"v{i + 1}" for i, v in enumerate(variants)}
    lines = ["variants: " + "; ".join(f"{names[v]} = {v}" for v in variants)]
    for s, rows in summary.items():
        shown = [v for v in variants if v in rows]
        if "none" not in rows:
            continue
        lines += ["", f"{float(s):.0%}: held-out perplexity, refit / selection only",
                  "| held out | none / dense | " + " | ".join(names[v] for v in shown) + " |",
                  "|---|---|" + "---|" * len(shown)]
        for d in rows["none"]["held_out"]:
            lines.append(f"| {d} | {rows['none']['held_out_to_dense'][d]:.3f} | " +
                         " | ".join(f"{rows[v]['held_out'][d]:.3f}" if d in rows[v]["held_out"] else "" for v in shown)
                         + " |")
        for key, label in (("held_out_geomean", "geometric mean"), ("held_out_worst", "worst"),
                           ("in_domain_geomean", "in domain (geo. mean)")):
            lines.append(f"| **{label}** | | " + " | ".join(f"{rows[v][key]:.3f}" for v in shown) + " |")
        lines.append("| to dense (geo. mean) | " + f"{rows['none']['held_out_to_dense_geomean']:.3f} | " +
                     " | ".join(f"{rows[v]['held_out_to_dense_geomean']:.3f}" for v in shown) + " |")
    return "\n".join(lines)


def plot(path: Path, summary: dict, variants: list[str], title: str) -> None:
    """One panel per level: each domain's held-out ratio (refit / selection only) per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = [s for s, rows in summary.items() if any(v in rows for v in variants)]
    if not levels:
        return
    fig, axes = plt.subplots(1, len(levels), figsize=(5 * len(levels), 4.2), sharey=True, squeeze=False)
    width = 0.8 / max(len(variants), 1)
    for ax, s in zip(axes[0], levels):
        rows = summary[s]
        for k, v in enumerate(v for v in variants if v in rows):
            held = rows[v]["held_out"]
            ax.bar([DOMAINS.index(d) + (k - len(variants) / 2 + 0.5) * width for d in held], list(held.values()),
                   width, label=f"{v} (geo. mean {rows[v]['held_out_geomean']:.3f})")
        ax.axhline(1.0, color="grey", linewidth=1)
        ax.axhline(WORST_ALLOWED, color="red", linestyle=":", linewidth=1)
        ax.set_xticks(range(len(DOMAINS)), DOMAINS, rotation=30)
        ax.set_title(f"{float(s):.0%}")
    axes[0][0].set_ylabel("held-out perplexity: refit / selection only")
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="lower center", ncol=1, bbox_to_anchor=(0.5, -0.02 - 0.04 * len(labels)))
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--sparsities", default="0.2,0.3,0.5")
    parser.add_argument("--variants", default=OLD, help="comma-separated refit variants (besides selection only)")
    parser.add_argument("--folds", default=",".join(DOMAINS), help="the held-out domains to run (default: all)")
    parser.add_argument("--measure", default="", help="the levels to measure in this run (default: all of them; "
                                                      "the plans are always those of --sparsities)")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--compensation-samples", type=int, default=128)
    add_run_options(parser, steps=5, eval_windows=16)
    parser.add_argument("--plans-dir", default=str(cache_dir() / "bench" / "compensation_lodo"))
    parser.add_argument("--out", default=None)
    parser.add_argument("--report-only", action="store_true", help="print the tables and redraw the plot; run nothing")
    args = parser.parse_args()
    levels = [float(s) for s in args.sparsities.split(",") if s]
    variants = [v for v in args.variants.split(",") if v]
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"compensation_lodo_{args.model}.json")
    saved = json.loads(out.read_text()) if out.is_file() else {}
    if saved.get("settings"):
        # Folds measured under other settings are not comparable: refuse rather than mix them silently.
        changed = [k for k in SETTINGS if saved["settings"].get(k) != getattr(args, k)]
        if changed:
            sys.exit(f"bench_compensation_lodo: {out} was measured with other {', '.join(changed)}; "
                     "use the same settings or another --out")
    folds = saved.get("folds", {})
    known = list(dict.fromkeys([*saved.get("variants", []), *variants]))

    def report() -> None:
        summary = summarize(folds, saved["dense"], levels, known)
        out.write_text(json.dumps({**saved, "variants": known, "summary": summary, "folds": folds}, indent=1))
        print(tables(summary, known))
        plot(out.with_suffix(".png"), summary, known, f"{args.model}: leave-one-domain-out, refit / selection only")
        print(f"\nwrote {out}")

    if args.report_only:
        report()
        return
    torch.set_num_threads(args.threads)
    corpus = corpus_dir("bench_compensation_lodo")
    evals = dev_files(corpus)
    saved["settings"] = {**saved.get("settings", {}), **{k: getattr(args, k) for k in SETTINGS},
                         "domains": DOMAINS, "torch": torch.__version__,
                         "machine": platform.processor() or platform.machine(),
                         "note": "CPU, shared 2-core machine; perplexities do not depend on load"}
    model, tokenizer = load_model(args.model)
    print(f"model {args.model}; scoring {args.num_samples} x {args.seq_len} tokens and refit {args.compensation_samples}"
          f" x {args.seq_len} from the six other domains; eval {args.eval_windows} x {args.eval_seq_len} tokens per "
          "dev domain", flush=True)
    if "dense" not in saved:
        saved["dense"] = evaluate(model, tokenizer, evals, args, domain_mix(corpus, DOMAINS))

    def save() -> None:
        out.write_text(json.dumps({**saved, "variants": known, "folds": folds}, indent=1))

    save()
    for held_out in [d for d in args.folds.split(",") if d]:
        run_fold(model, tokenizer, corpus, evals, held_out, levels, variants, args, folds, save)
    report()


if __name__ == "__main__":
    main()
