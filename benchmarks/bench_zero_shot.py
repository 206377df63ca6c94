"""Zero-shot accuracy on the local suite: dense vs gisp levels, and multi- vs single-domain calibration.

The suite (``hf_prune.data.zero_shot``: a next-passage choice task per domain of ``dev/``, plus ``math_answer``) is
built from the corpus into ``--suite`` first; every model is then scored on it through lm-eval
(``hf_prune.evaluate_tasks``), and on the dev perplexity of every domain. Two studies:

- ``--sparsities``: dense and ``--method`` (default gisp) at each level, calibrated on the equal mix of every domain;
- ``--single-domain``: at these sparsities, the mix vs each single-domain calibration (the same number of tokens;
  the multi-domain paper's claim is that the mix has the best mean accuracy at every ratio); ``--seeds 0,1`` repeats
  the mix and the ``--repeat-best`` best single domains (by mean accuracy in the first seed) with other windows.

    python benchmarks/bench_zero_shot.py --model qwen --sparsities 0.2,0.3,0.4,0.5 --single-domain 0.3,0.5 \\
        --out benchmarks/results/zero_shot_qwen.json

The JSON is written after every model and a rerun with the same settings resumes where it stopped; ``--report``
prints the tables (and draws the study's plot) from it. Standard errors: lm-eval's per task; the mean's is
``AccuracyReport.mean_stderr`` (tasks independent); a difference between two calibrations is counted in
``sqrt(se_a^2 + se_b^2)``, which ignores that both answer the same questions (conservative: the paired error is
smaller).

The corpus is ``$HF_PRUNE_CORPUS`` or ``../shared/corpus``; the script exits with a message when it is missing.
``--model tiny`` runs a tiny random model (a smoke test of the script, numbers meaningless).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
from common import (DOMAINS, MODELS, ROOT, add_suite_arguments, calib_file, corpus_dir, dev_files, load_model,
                    zero_shot_suite)

from hf_prune import CalibrationMix, evaluate_perplexity, evaluate_tasks, prune
from hf_prune.fileio import write_text_atomic
from hf_prune.markdown import table

#: Settings that change the numbers: a resumed run must match them.
SAME = ("model", "method", "num_samples", "seq_len", "limit", "max_records", "eval_windows", "eval_seq_len")


def mix_of(corpus: Path, domains: list[str]) -> CalibrationMix:
    return CalibrationMix({d: {"source": calib_file(corpus, d), "weight": 1.0} for d in domains})


def tiny_model():
    """A tiny random Qwen2 with the SmolLM2 tokenizer: exercises the script in seconds."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    _, tokenizer = load_model("smollm2")
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    return Qwen2ForCausalLM(config).eval(), tokenizer


def measure(model, tokenizer, suite, corpus, args, label: str) -> dict:
    """Accuracy on the suite and dev perplexity per domain."""
    t0 = time.perf_counter()
    report = evaluate_tasks(model, tokenizer, suite, limit=args.limit, batch_size=args.batch_size, label=label)
    seconds = time.perf_counter() - t0
    dev = evaluate_perplexity(model, tokenizer, dev_files(corpus), seq_len=args.eval_seq_len,
                              max_windows_per_domain=args.eval_windows, progress=False)
    per_task = report.to_dict()
    questions = sum(t["n"] for t in per_task.values())
    print(f"  {label}: mean {100 * report.mean:.1f}% ({seconds:.0f}s, {questions / seconds:.2f} questions/s), "
          f"dev mean {dev.mean:.2f}", flush=True)
    return {"per_task": per_task, "mean": report.mean, "mean_stderr": report.mean_stderr,
            "dev": dev.per_domain, "seconds": round(seconds, 1), "questions_per_s": round(questions / seconds, 3)}


class Study:
    """The results JSON, written after every model; what it already holds is not measured again."""

    def __init__(self, path: Path, args) -> None:
        self.path = path
        settings = {k: getattr(args, k) for k in SAME}
        self.data = json.loads(path.read_text()) if path.exists() else {}
        if self.data and {k: self.data["settings"].get(k) for k in SAME} != settings:
            raise SystemExit(f"{path} holds another run's settings; pass another --out or the same settings")
        self.data.setdefault("settings", settings)
        self.data.update(model=args.model, method=args.method)

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps(self.data, indent=2) + "\n")

    def has(self, keys: list[str]) -> bool:
        node = self.data
        for k in keys:
            if k not in node:
                return False
            node = node[k]
        return True

    def run(self, keys: list[str], measure_one) -> dict:
        """``self.data[keys...]``, measured by ``measure_one()`` (and saved) unless already there."""
        node = self.data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if keys[-1] not in node:
            node[keys[-1]] = measure_one()
            self.save()
        return node[keys[-1]]


def run_calibration(study: Study, where: list[str], model, tokenizer, suite, corpus, domains, sparsities, seed,
                    args, label: str) -> None:
    """Prune once with this calibration (nested levels) and measure every level not measured yet (the pruning always
    runs to every level of ``sparsities``, so a resumed level is the level a whole run gives)."""
    def keys(s: float) -> list[str]:
        return [*where, str(s)] if len(where) == 1 else [*where, str(s), str(seed)]

    missing = [s for s in sparsities if not study.has(keys(s))]
    if not missing:
        return
    t0 = time.perf_counter()
    result = prune(model, tokenizer, mix_of(corpus, domains), sparsities, method=args.method,
                   num_samples=args.num_samples, seq_len=args.seq_len, seed=seed, show_progress=False)
    prune_seconds = time.perf_counter() - t0
    for s in missing:
        def one(s=s):
            pruned = result.apply(model, s)
            entry = {**measure(pruned, tokenizer, suite, corpus, args, f"{label} {s:.0%}"),
                     "sparsity": result.sparsity[s], "prune_seconds": round(prune_seconds, 1)}
            del pruned
            return entry
        study.run(keys(s), one)


def first_seed(data: dict, sparsity: str) -> str | None:
    """The study's first seed at this level (the one every calibration ran with), None before the mix ran."""
    return next(iter(data.get("study", {}).get("mix", {}).get(sparsity, {})), None)


def dev_mean(entry: dict) -> float:
    return sum(entry["dev"].values()) / len(entry["dev"])


def study_table(data: dict, sparsity: str) -> str:
    """One row per calibration (and seed): mean accuracy ± se, the gap to the mix in standard errors, the task that
    lost the most against dense, and dev perplexity (mean and worst domain)."""
    dense = data["dense"]
    reference = first_seed(data, sparsity)
    mix = data["study"]["mix"][sparsity][reference]

    def accuracy(e: dict) -> str:
        return f"{100 * e['mean']:.1f} ± {100 * e['mean_stderr']:.1f}"

    rows = [["dense", accuracy(dense), "", "", f"{dev_mean(dense):.2f}", worst_domain(dense)]]
    for calibration, levels in data["study"].items():
        for seed, e in levels.get(sparsity, {}).items():
            gap = (mix["mean"] - e["mean"]) / math.hypot(mix["mean_stderr"], e["mean_stderr"])
            task, drop = worst_drop(e, dense)
            rows.append([f"{calibration} (seed {seed})", accuracy(e),
                         "" if (calibration, seed) == ("mix", reference) else f"{gap:+.1f}",
                         f"{task} {100 * drop:+.1f}", f"{dev_mean(e):.2f}", worst_domain(e)])
    return table(["calibration", "mean acc %", "mix ahead by (se)", "largest task drop vs dense (points)",
                  "dev ppl mean", "dev ppl worst"], rows, "lrrlrl")


def worst_drop(entry: dict, dense: dict) -> tuple[str, float]:
    drops = {t: r["acc"] - dense["per_task"][t]["acc"] for t, r in entry["per_task"].items()}
    task = min(drops, key=drops.get)
    return task, drops[task]


def worst_domain(entry: dict) -> str:
    domain = max(entry["dev"], key=entry["dev"].get)
    return f"{entry['dev'][domain]:.1f} ({domain})"


def per_task_table(data: dict, sparsity: str) -> str:
    """Accuracy per task (the first seed): dense, then every calibration."""
    seed = first_seed(data, sparsity)
    columns = [("dense", data["dense"])] + [(c, levels[sparsity][seed]) for c, levels in data["study"].items()
                                           if seed in levels.get(sparsity, {})]
    rows = [[t, *(f"{100 * e['per_task'][t]['acc']:.1f} ± {100 * e['per_task'][t]['acc_stderr']:.1f}"
                  for _, e in columns)] for t in data["dense"]["per_task"]]
    return table(["task", *(c for c, _ in columns)], rows, "l" + "r" * len(columns))


def levels_table(data: dict) -> str:
    """Markdown: one row per task, one column per model; the mean last."""
    columns = [("dense", data["dense"])] + [(f"{data['method']} {float(s):.0%}", r)
                                            for s, r in data.get("levels", {}).items()]
    rows = [[t, *(f"{100 * r['per_task'][t]['acc']:.1f}" for _, r in columns)] for t in data["dense"]["per_task"]]
    rows.append(["**mean**", *(f"**{100 * r['mean']:.1f}**" for _, r in columns)])
    return table(["task", *(c for c, _ in columns)], rows, "l" + "r" * len(columns))


def plot(data: dict, path: Path) -> None:
    """Mean accuracy (± 1 se) and mean dev perplexity per calibration, one marker per level and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(data["study"])
    fig, (acc, ppl) = plt.subplots(1, 2, figsize=(11, 4))
    seeds = sorted({seed for levels in data["study"].values() for runs in levels.values() for seed in runs}, key=int)
    for i, sparsity in enumerate(sorted({s for levels in data["study"].values() for s in levels})):
        for j, seed in enumerate(seeds):
            xs, ys, es, ps = [], [], [], []
            for x, name in enumerate(names):
                e = data["study"][name].get(sparsity, {}).get(seed)
                if e:
                    xs.append(x + 0.15 * j)
                    ys.append(100 * e["mean"])
                    es.append(100 * e["mean_stderr"])
                    ps.append(dev_mean(e))
            if xs:
                style = dict(color=f"C{i}", marker="o" if j == 0 else "s", linestyle="none",
                             label=f"{float(sparsity):.0%}, seed {seed}")
                acc.errorbar(xs, ys, yerr=es, capsize=3, **style)
                ppl.plot(xs, ps, **style)
    dense = data["dense"]
    acc.axhline(100 * dense["mean"], color="grey", linestyle="--", label="dense")
    ppl.axhline(dev_mean(dense), color="grey", linestyle="--", label="dense")
    for ax, label in ((acc, "mean accuracy, % (± 1 se)"), (ppl, "mean dev perplexity (log)")):
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(label)
        ax.set_xlabel("calibration")
    ppl.set_yscale("log")
    acc.legend(fontsize=8)
    fig.suptitle(f"{data['model']}: {data['method']} calibrated on the 7-domain mix vs one domain (same tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def report(data: dict, out: Path) -> None:
    if data.get("levels"):
        print("\n" + levels_table(data))
    for sparsity in sorted({s for levels in data.get("study", {}).values() for s in levels}):
        if first_seed(data, sparsity) is not None:
            print(f"\n{float(sparsity):.0%}\n\n{study_table(data, sparsity)}\n\n{per_task_table(data, sparsity)}")
    if data.get("study"):
        plot(data, out.with_suffix(".png"))


def best_single(data: dict, sparsity: str, seed: str, n: int) -> list[str]:
    """The ``n`` single domains with the best mean accuracy at this level and seed."""
    singles = {d: levels[sparsity][seed]["mean"] for d, levels in data["study"].items()
               if d != "mix" and seed in levels.get(sparsity, {})}
    return sorted(singles, key=singles.get, reverse=True)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen", choices=(*MODELS, "tiny"))
    parser.add_argument("--method", default="gisp", help="pruning preset (gisp: with its lsq compensation)")
    parser.add_argument("--sparsities", default="0.2,0.3,0.4,0.5", help="levels of the mix ('' for none)")
    parser.add_argument("--single-domain", default="", help="sparsities for the mix-vs-single-domain study")
    parser.add_argument("--seeds", default="0", help="calibration seeds of the study; after the first, only the mix "
                        "and the --repeat-best best single domains")
    parser.add_argument("--repeat-best", type=int, default=2)
    parser.add_argument("--domains", default=",".join(DOMAINS),
                        help="the single domains of the study, in the order they are run (default: all seven)")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="questions per task at most")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-windows", type=int, default=8, help="dev perplexity windows per domain")
    parser.add_argument("--eval-seq-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0, help="calibration seed of --sparsities")
    parser.add_argument("--threads", type=int, default=2)
    add_suite_arguments(parser)
    parser.add_argument("--out", default=None)
    parser.add_argument("--report", action="store_true", help="only print the tables (and plot) of --out")
    args = parser.parse_args()
    try:  # every list checked before any work
        sparsities = [float(s) for s in args.sparsities.split(",") if s]
        single = [float(s) for s in args.single_domain.split(",") if s]
        seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError as err:
        parser.error(f"--sparsities / --single-domain take numbers, --seeds integers: {err}")
    singles = [d for d in args.domains.split(",") if d]
    if set(singles) - set(DOMAINS):
        parser.error(f"--domains: unknown {sorted(set(singles) - set(DOMAINS))}; the domains are {', '.join(DOMAINS)}")
    torch.set_num_threads(args.threads)

    out = Path(args.out or ROOT / "benchmarks" / "results" / f"zero_shot_{args.model}.json")
    if args.report:
        return report(json.loads(out.read_text()), out)
    study = Study(out, args)  # refuses another run's settings before the model is loaded
    corpus = corpus_dir("bench_zero_shot")
    suite, written = zero_shot_suite(corpus, args)
    print(f"suite: {', '.join(written)}", flush=True)
    model, tokenizer = tiny_model() if args.model == "tiny" else load_model(args.model)
    study.run(["dense"], lambda: measure(model, tokenizer, suite, corpus, args, "dense"))
    run_calibration(study, ["levels"], model, tokenizer, suite, corpus, DOMAINS, sparsities, args.seed, args,
                    args.method)
    for k, seed in enumerate(seeds if single else []):
        repeated = singles if k == 0 else best_single(study.data, str(single[0]), str(seeds[0]), args.repeat_best)
        names = ["mix", *repeated]
        for name in names:
            run_calibration(study, ["study", name], model, tokenizer, suite, corpus,
                            DOMAINS if name == "mix" else [name], single, seed, args, f"{name} seed {seed}")
    report(study.data, out)
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
