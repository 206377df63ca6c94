"""Leave-one-model-out: a default chosen on one model, judged on the other (issue 16).

For each grid of settings (rows of ``quality_<model>.json``): per model and level, the best fixed setting, with the
default and the per-model choices (``auto``) as ratios to it; and for the settings measured on both models, the one
with the lowest mean dev perplexity on model A at a level, looked up on model B against B's best there. Nothing is
run: it reads the JSONs ``bench_quality.py`` wrote and prints markdown tables (and writes them as JSON with
``--out``).

    python benchmarks/leave_one_model_out.py --out benchmarks/results/leave_one_model_out.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import ROOT

from hf_prune.markdown import table

MODELS = ("smollm2", "qwen")
LEVELS = ("0.2", "0.3", "0.4", "0.5")

_D = "gisp:compensation_damping=0.0001"  # the default damping, named: older "gisp:..." rows had another default
#: grid -> setting label -> row key in each model's quality JSON. Explicit, because rows measured before a preset
#: changed keep their old names (the first rows named "gisp:layer_balance=0" were measured without compensation).
GRIDS: dict[str, dict[str, dict[str, str]]] = {
    "priors, selection only (compensation=None)": {
        "attention 4, balance 0": {"smollm2": "gisp:layer_balance=0", "qwen": "gisp:layer_balance=0"},
        "attention 4, balance 2 (gisp)": {"smollm2": "gisp:compensation=none", "qwen": "gisp:compensation=none"},
        "attention 4, balance 4": {"smollm2": "gisp:layer_balance=4", "qwen": "gisp:layer_balance=4"},
        "attention 2, balance 0": {"smollm2": "gisp:attention_weight=2:layer_balance=0"},
        "attention 1, balance 0": {"smollm2": "gisp:attention_weight=1:layer_balance=0"},
        "auto, full grid": {"smollm2": "gisp:attention_weight=auto:layer_balance=auto:compensation=none",
                            "qwen": "gisp:attention_weight=auto:layer_balance=auto:compensation=none"},
        "attention 4, balance auto, full grid": {"smollm2": "gisp:layer_balance=auto:compensation=none",
                                                 "qwen": "gisp:layer_balance=auto:compensation=none"},
    },
    "priors, with compensation (lsq, damping 1e-4)": {
        "attention 4, balance 0": {"smollm2": f"{_D}:layer_balance=0", "qwen": f"{_D}:layer_balance=0"},
        "attention 4, balance 1": {"smollm2": f"{_D}:layer_balance=1", "qwen": f"{_D}:layer_balance=1"},
        "attention 4, balance 2 (gisp)": {"smollm2": "gisp", "qwen": "gisp"},
        "attention 4, balance 4": {"smollm2": f"{_D}:layer_balance=4", "qwen": f"{_D}:layer_balance=4"},
        "attention 2, balance 0": {"smollm2": f"{_D}:attention_weight=2:layer_balance=0",
                                   "qwen": f"{_D}:attention_weight=2:layer_balance=0"},
        "attention 2, balance 2": {"smollm2": f"{_D}:attention_weight=2", "qwen": f"{_D}:attention_weight=2"},
        "attention 8, balance 2": {"smollm2": f"{_D}:attention_weight=8", "qwen": f"{_D}:attention_weight=8"},
        # auto as shipped: from the method's priors, one grid step a round on 2 paired standard errors.
        "auto": {"smollm2": "gisp:compensation_when=level:attention_weight=auto:layer_balance=auto",
                 "qwen": "gisp:compensation_when=level:attention_weight=auto:layer_balance=auto"},
        # Earlier forms of auto (superseded; kept for the comparison): every grid setting each round, lowest
        # held-back loss taken without a noise bound; the first of them judged each candidate before its refit.
        "auto, full grid": {"smollm2": f"{_D}:attention_weight=auto:layer_balance=auto",
                            "qwen": f"{_D}:attention_weight=auto:layer_balance=auto"},
        "attention 4, balance auto, full grid": {"smollm2": f"{_D}:layer_balance=auto",
                                                 "qwen": f"{_D}:layer_balance=auto"},
        "auto, full grid, judged before the refit": {"smollm2": "gisp:attention_weight=auto:layer_balance=auto"},
        "attention 4, balance auto, full grid, judged before the refit": {"smollm2": "gisp:layer_balance=auto"},
    },
}
DEFAULT = "attention 4, balance 2 (gisp)"


def load(model: str, results: Path) -> dict:
    path = results / f"quality_{model}.json"
    return json.loads(path.read_text())["methods"] if path.is_file() else {}


def means(rows: dict, key: str | None) -> dict[str, float]:
    return {lvl: r["mean"] for lvl, r in rows.get(key, {}).get("levels", {}).items()} if key else {}


def fixed(grid: dict) -> list[str]:
    """The grid's fixed settings (the per-model choices are what is judged against them)."""
    return [label for label in grid if "auto" not in label]


def within(grid: dict[str, dict[str, str]], rows: dict[str, dict]) -> list[dict]:
    """Per model and level: the best fixed setting, and the default and each auto setting against it."""
    out = []
    for model in MODELS:
        for level in LEVELS:
            values = {label: means(rows[model], keys.get(model)).get(level) for label, keys in grid.items()}
            have = [label for label in fixed(grid) if values[label] is not None]
            if len(have) < 2:
                continue
            best = min(have, key=lambda label: values[label])
            out.append({"model": model, "level": level, "best": best, "best_value": values[best],
                        "settings_compared": have,
                        **{f"{label} / best": None if values[label] is None else values[label] / values[best]
                           for label in grid if label == DEFAULT or "auto" in label}})
    return out


def across(grid: dict[str, dict[str, str]], rows: dict[str, dict]) -> list[dict]:
    """Per level and direction: the fixed setting best on model A, judged on model B against B's best."""
    out = []
    for level in LEVELS:
        values = {m: {label: means(rows[m], keys.get(m)).get(level) for label, keys in grid.items()} for m in MODELS}
        for a, b in (MODELS, MODELS[::-1]):
            have = [label for label in fixed(grid) if values[a][label] is not None and values[b][label] is not None]
            if len(have) < 2:
                continue
            chosen = min(have, key=lambda label: values[a][label])
            best_b = min(values[b][label] for label in have)
            out.append({"level": level, "chosen_on": a, "judged_on": b, "choice": chosen,
                        "choice_vs_best": values[b][chosen] / best_b, "settings_compared": have})
    return out


def _ratio(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.3f}"


def markdown(name: str, grid: dict, report: dict) -> str:
    autos = [label for label in grid if label == DEFAULT or "auto" in label]
    within = [[r["model"], f"{float(r['level']):.0%}", f"{r['best']} ({r['best_value']:.2f})",
               *(_ratio(r[f"{a} / best"]) for a in autos)] for r in report["within"]]
    lines = [f"**{name}: each model's best fixed setting, the default and the per-model choices against it**", "",
             table(["model", "level", "best fixed", *(f"{a} / best" for a in autos)], within, "lll" + "r" * len(autos))]
    if report["across"]:
        across = [[f"{float(r['level']):.0%}", r["chosen_on"], r["choice"], f"{r['choice_vs_best']:.3f}"]
                  for r in report["across"]]
        lines += ["", f"**{name}: chosen on one model, judged on the other**", "",
                  table(["level", "chosen on", "its choice", "on the other model: choice / best there"], across,
                        "lllr")]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = {m: load(m, Path(args.results)) for m in MODELS}
    report = {name: {"within": within(grid, rows), "across": across(grid, rows)} for name, grid in GRIDS.items()}
    for name, grid in GRIDS.items():
        print(markdown(name, grid, report[name]) + "\n")
    if args.out:
        Path(args.out).write_text(json.dumps({"grids": GRIDS, "judged": report}, indent=1) + "\n")


if __name__ == "__main__":
    main()
