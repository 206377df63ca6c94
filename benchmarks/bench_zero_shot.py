"""Zero-shot accuracy on the local suite (issue 15): dense vs gisp levels, and multi- vs single-domain calibration.

The suite (``hf_prune.data.zero_shot``: a next-passage choice task per domain of ``dev/``, plus ``math_answer``) is
built from the corpus into ``--suite`` first; every model is then scored on it through lm-eval
(``hf_prune.evaluate_tasks``). Two studies:

- ``--sparsities``: dense and ``--method`` (default gisp) at each level, calibrated on the equal mix of every domain;
- ``--single-domain``: at these sparsities, the mix vs each single-domain calibration (the multi-domain paper's
  claim is that the mix has the best mean accuracy at every ratio).

    python benchmarks/bench_zero_shot.py --model qwen --sparsities 0.2,0.3,0.4,0.5 --single-domain 0.3,0.5 \\
        --out benchmarks/results/zero_shot_qwen.json

The corpus is ``$HF_PRUNE_CORPUS`` or ``../shared/corpus``; the script exits with a message when it is missing.
``--model tiny`` runs a tiny random model (a smoke test of the script, numbers meaningless).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from common import DOMAINS, MODELS, ROOT, add_suite_arguments, calib_file, corpus_dir, load_model, zero_shot_suite

from hf_prune import CalibrationMix, evaluate_tasks, prune
from hf_prune.fileio import write_text_atomic


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


def accuracy(model, tokenizer, suite, args, label: str) -> dict:
    t0 = time.perf_counter()
    report = evaluate_tasks(model, tokenizer, suite, limit=args.limit, batch_size=args.batch_size, label=label)
    print(f"  {label}: mean {100 * report.mean:.1f}% ({time.perf_counter() - t0:.0f}s)", flush=True)
    return {"per_task": report.to_dict(), "mean": report.mean}


def run_levels(model, tokenizer, suite, calibration, sparsities, args, label: str) -> dict:
    result = prune(model, tokenizer, calibration, sparsities, method=args.method, num_samples=args.num_samples,
                   seq_len=args.seq_len, seed=args.seed, show_progress=False)
    out = {}
    for s in sparsities:
        pruned = result.apply(model, s)
        out[str(s)] = {**accuracy(pruned, tokenizer, suite, args, f"{label} {s:.0%}"), "sparsity": result.sparsity[s]}
        del pruned
    return out


def table(results: dict) -> str:
    """Markdown: one row per task, one column per model; the mean last."""
    columns = [("dense", results["dense"])] + [(f"{results['method']} {float(s):.0%}", r)
                                               for s, r in results["levels"].items()]
    tasks = list(results["dense"]["per_task"])
    rows = ["| task | " + " | ".join(c for c, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
    for t in tasks:
        rows.append(f"| {t} | " + " | ".join(f"{100 * r['per_task'][t]['acc']:.1f}" for _, r in columns) + " |")
    rows.append("| **mean** | " + " | ".join(f"**{100 * r['mean']:.1f}**" for _, r in columns) + " |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen", choices=(*MODELS, "tiny"))
    parser.add_argument("--method", default="gisp", help="pruning preset (gisp: with its lsq compensation)")
    parser.add_argument("--sparsities", default="0.2,0.3,0.4,0.5")
    parser.add_argument("--single-domain", default="", help="sparsities for the mix-vs-single-domain study")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--limit", type=int, default=None, help="questions per task at most")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    add_suite_arguments(parser)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    corpus = corpus_dir("bench_zero_shot")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"zero_shot_{args.model}.json")
    suite, written = zero_shot_suite(corpus, args)
    print(f"suite: {', '.join(written)}", flush=True)
    model, tokenizer = tiny_model() if args.model == "tiny" else load_model(args.model)
    sparsities = [float(s) for s in args.sparsities.split(",") if s]
    results = {"model": args.model, "method": args.method, "settings": vars(args),
               "dense": accuracy(model, tokenizer, suite, args, "dense")}
    results["levels"] = run_levels(model, tokenizer, suite, mix_of(corpus, DOMAINS), sparsities, args, args.method)
    single = [float(s) for s in args.single_domain.split(",") if s]
    if single:
        results["single_domain"] = {d: run_levels(model, tokenizer, suite, mix_of(corpus, [d]), single, args, d)
                                    for d in DOMAINS}
    write_text_atomic(out, json.dumps(results, indent=2) + "\n")
    print("\n" + table(results) + f"\n\nwrote {out}")


if __name__ == "__main__":
    main()
