"""Accuracy evaluation speed: lm-eval's own ``HFLM`` (every choice a full sequence, logits everywhere) against
hf-prune's ``PromptSharingLM`` (each prompt once, the vocabulary head on answer tokens only), on the local suite.

Both paths score the same questions of the same suite with the same model, back to back in one process (the
reference first); the script reports questions/s of each, the speed-up, whether every task's ``acc`` and
``acc_norm`` are identical, and the largest difference between the two paths' log-likelihoods over all choices.

    python benchmarks/bench_accuracy_speed.py --model qwen --limit 8 --out benchmarks/results/accuracy_speed_qwen.json

``--no-reference`` times the new path only (to plan a study from its questions/s). The corpus is
``$HF_PRUNE_CORPUS`` or ``../shared/corpus``; the script exits with a message when it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from common import MODELS, ROOT, add_suite_arguments, corpus_dir, load_model, zero_shot_suite

from hf_prune.accuracy import _collect, _harness_model
from hf_prune.fileio import write_text_atomic


def run_path(model, tokenizer, suite, args, full_logits: bool, batch_size: int) -> dict:
    """One pass over the suite through lm-eval; per-task metrics, per-choice log-likelihoods, time."""
    from lm_eval import simple_evaluate

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    results = simple_evaluate(model=_harness_model(model, tokenizer, batch_size, full_logits),
                              tasks=suite.task_list(), num_fewshot=0, limit=args.limit, bootstrap_iters=1000,
                              log_samples=True, task_manager=suite._manager)
    seconds = time.perf_counter() - t0
    per_task = _collect(results, 0)
    questions = sum(t["n"] for t in per_task.values())
    loglik = {task: [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
              for task, samples in results["samples"].items()}
    return {"batch_size": batch_size, "seconds": seconds, "questions": questions, "questions_per_s": questions / seconds,
            "load_1min_before": load, "load_1min_after": os.getloadavg()[0], "per_task": per_task,
            "loglikelihoods": loglik}


def compare(reference: dict, new: dict) -> dict:
    same = {t: all(reference["per_task"][t].get(m) == new["per_task"][t].get(m) for m in ("acc", "acc_norm"))
            for t in reference["per_task"]}
    diffs = [abs(a - b) for t in reference["loglikelihoods"]
             for qa, qb in zip(reference["loglikelihoods"][t], new["loglikelihoods"][t]) for a, b in zip(qa, qb)]
    return {"speedup": new["questions_per_s"] / reference["questions_per_s"], "acc_identical_per_task": same,
            "all_identical": all(same.values()), "max_abs_loglik_diff": max(diffs), "choices_compared": len(diffs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen", choices=MODELS)
    parser.add_argument("--limit", type=int, default=8, help="questions per task (the suite has 8 tasks)")
    parser.add_argument("--batch-size", type=int, default=8, help="the reference's batch size (requests)")
    parser.add_argument("--new-batch-sizes", default="8", help="batch sizes to time the new path at, in order")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-reference", action="store_true", help="time the new path only")
    add_suite_arguments(parser)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    corpus = corpus_dir("bench_accuracy_speed")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"accuracy_speed_{args.model}.json")
    suite, _ = zero_shot_suite(corpus, args)
    model, tokenizer = load_model(args.model)
    model.eval()
    result = {"model": args.model, "settings": vars(args), "torch_threads": torch.get_num_threads(),
              "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count()}
    if not args.no_reference:
        result["reference_hflm"] = run_path(model, tokenizer, suite, args, True, args.batch_size)
        print(f"HFLM (batch {args.batch_size}): {result['reference_hflm']['questions_per_s']:.3f} questions/s", flush=True)
    result["prompt_sharing"] = {}
    for size in (int(b) for b in args.new_batch_sizes.split(",")):
        run = result["prompt_sharing"][str(size)] = run_path(model, tokenizer, suite, args, False, size)
        line = f"PromptSharingLM (batch {size}): {run['questions_per_s']:.3f} questions/s"
        if not args.no_reference:
            c = run["comparison"] = compare(result["reference_hflm"], run)
            line += (f"; {c['speedup']:.2f}x; acc/acc_norm identical on every task: {c['all_identical']}; "
                     f"max |loglik diff| {c['max_abs_loglik_diff']:.2e} over {c['choices_compared']} choices")
        print(line, flush=True)
    write_text_atomic(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
