"""Quality vs calibration budget (issue 16): the default ``gisp`` with more or longer calibration windows.

Each budget is ``WINDOWSxTOKENS`` (e.g. ``128x128``); every run uses the same equal-weight 7-domain mix, seed,
rounds and dev evaluation as ``bench_quality.py`` (whose ``run_method`` it calls). Compensation keeps its default
``compensation_samples`` windows *of each budget's length*, as a user's run would. Results go to
``calibration_budget_<model>.json`` (one row per budget, appended run by run) and a markdown table.

    python benchmarks/bench_calibration_budget.py --model smollm2 --budgets 32x128,128x128,512x128,32x512 \\
        --sparsities 0.3,0.5 --steps 5 --eval-windows 8
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
from pathlib import Path

import torch
from bench_quality import add_run_options, domain_mix, evaluate, run_method
from common import DOMAINS, MODELS, ROOT, corpus_dir, dev_files, load_model

from hf_prune.markdown import table


def parse_budget(text: str) -> tuple[int, int]:
    windows, _, tokens = text.partition("x")
    return int(windows), int(tokens)


def budget_table(rows: dict, sparsities: list[float]) -> str:
    """Mean dev perplexity per budget and level, and the seconds the pruning took."""
    body = [[key, f"{r['windows'] * r['tokens_per_window']:,}",
             *(f"{r['levels'][str(s)]['mean']:.2f}" if str(s) in r["levels"] else "" for s in sparsities),
             f"{r['prune_seconds']:.0f}"] for key, r in rows.items()]
    head = ["calibration (windows x tokens)", "scoring tokens", *(f"{s:.0%}" for s in sparsities), "prune seconds"]
    return table(head, body, "l" + "r" * (len(head) - 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--method", default="gisp", help="method spec, as bench_quality's --methods items")
    parser.add_argument("--budgets", default="32x128,128x128,512x128,32x512")
    parser.add_argument("--sparsities", default="0.3,0.5")
    add_run_options(parser, steps=5, eval_windows=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = corpus_dir("bench_calibration_budget")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"calibration_budget_{args.model}.json")
    saved = json.loads(out.read_text()) if out.is_file() else {}
    sparsities = [float(s) for s in args.sparsities.split(",") if s]
    calibration, evals = domain_mix(corpus, DOMAINS), dev_files(corpus)
    model, tokenizer = load_model(args.model)
    dense = saved.get("dense") or evaluate(model, tokenizer, evals, args, calibration)
    rows = dict(saved.get("budgets", {}))
    settings = {**vars(args), "domains": DOMAINS, "torch": torch.__version__,
                "machine": platform.processor() or platform.machine()}
    for budget in [b for b in args.budgets.split(",") if b]:
        key = f"{args.method} {budget}"
        if key in rows:
            continue
        run = copy.copy(args)
        run.num_samples, run.seq_len = parse_budget(budget)
        rows[key] = {"windows": run.num_samples, "tokens_per_window": run.seq_len,
                     **run_method(model, tokenizer, calibration, evals, args.method, sparsities, run, key)}
        # Saved after every budget: a long run that stops part-way keeps what it measured.
        out.write_text(json.dumps({"settings": settings, "dense": dense, "budgets": rows}, indent=1) + "\n")
    print("\n" + budget_table(rows, sparsities))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
