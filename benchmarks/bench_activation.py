"""Activation-based first-order scores (``activation-taylor``) against weight-level Taylor (``taylor``).

    python benchmarks/bench_activation.py --model smollm2

On the same calibration windows (the shared corpus, mixed domains): the Spearman rank correlation of the two
criteria's scores (query heads, KV heads, MLP channels, over all layers), and the quality of their plans:
``gisp`` with each criterion (compensation off, so the plans alone are compared) at ``--sparsities``, mean
per-domain perplexity on the dev split. Writes ``benchmarks/results/activation_<model>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from common import DOMAINS, MODELS, ROOT, calib_file, corpus_dir, dev_files, load_model  # noqa: E402


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.argsort().argsort().double(), b.argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--sparsities", default="0.2,0.3")
    parser.add_argument("--eval-windows", type=int, default=4)
    args = parser.parse_args()
    import hf_prune
    from hf_prune.data import as_calibration
    from hf_prune.engine.batches import LossRecorder
    from hf_prune.engine.importance import get_importance
    from hf_prune.engine.objectives import lm_loss

    corpus = corpus_dir("bench_activation")
    mix = hf_prune.CalibrationMix({d: {"source": calib_file(corpus, d), "weight": 1.0} for d in DOMAINS})
    model, tokenizer = load_model(args.model)
    batches = as_calibration(mix).batches(args.num_samples, args.seq_len, 0, 4, torch.device("cpu"), tokenizer=tokenizer)
    scores, seconds = {}, {}
    for name in ("taylor", "activation-taylor"):
        t0 = time.perf_counter()
        scores[name] = get_importance(name)(model, batches, LossRecorder(lm_loss), show_progress=False)
        seconds[name] = time.perf_counter() - t0
    correlation = {}
    for field in ("query_heads", "kv_heads", "mlp_channels"):
        a = torch.cat([getattr(s, field) for s in scores["taylor"]])
        b = torch.cat([getattr(s, field) for s in scores["activation-taylor"]])
        correlation[field] = spearman(a, b)
    levels = [float(s) for s in args.sparsities.split(",")]
    evaluation = dev_files(corpus)
    dense = hf_prune.evaluate_perplexity(model, tokenizer, evaluation, seq_len=256,
                                         max_windows_per_domain=args.eval_windows, progress=False).mean
    quality = {}
    for name in ("taylor", "activation-taylor"):
        result = hf_prune.prune(model, tokenizer, mix, levels, method="gisp", importance=name, steps=args.steps,
                                num_samples=args.num_samples, seq_len=args.seq_len, compensation=None,
                                show_progress=False)
        quality[name] = {str(s): hf_prune.evaluate_perplexity(result.apply(model, s), tokenizer, evaluation,
                                                              seq_len=256, max_windows_per_domain=args.eval_windows,
                                                              progress=False).mean for s in levels}
    payload = {"settings": vars(args), "spearman": correlation, "scoring_seconds": seconds,
               "dense_mean_ppl": dense, "mean_ppl": quality}
    out = ROOT / "benchmarks" / "results" / f"activation_{args.model}.json"
    out.write_text(json.dumps(payload, indent=1))
    print(json.dumps(payload, indent=1))


if __name__ == "__main__":
    main()
