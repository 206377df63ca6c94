"""Benchmark of the data layer: tokenisation + packing throughput, and per-domain dev perplexity.

Reads the offline multi-domain corpus (``<repo>/../shared/corpus`` or ``$HF_PRUNE_CORPUS``), laid out as
``{calib,dev}/<domain>.jsonl``. Uses SmolLM2-135M-Instruct by default, or Qwen2.5-Coder-0.5B-Instruct
(``--model qwen``, after ``bash scripts/fetch_qwen.sh``): its dev perplexity is the dense baseline that the
pruning benchmarks compare against.

    python benchmarks/bench_data.py [--model qwen] [--max-windows 32] [--seq-len 256] [--batch-size 8]

Writes ``benchmarks/results/data.json`` (``data_qwen.json`` for Qwen) and prints markdown tables.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch  # noqa: E402
from common import DOMAINS, MODELS, corpus_dir, dev_files, load_model  # noqa: E402
from common import ROOT as REPO  # noqa: E402

from hf_prune.data import CalibrationMix  # noqa: E402
from hf_prune.data.sources import load_documents  # noqa: E402
from hf_prune.data.windows import domain_token_stream, pack_windows, tokenize_documents  # noqa: E402
from hf_prune.evaluation import evaluate_perplexity  # noqa: E402

def bench_tokenisation(tok, root: Path, seq_len: int) -> dict:
    """Uncached load + tokenise + pack of each calib domain, then a cold and a warm cache round."""
    rows = {}
    for d in DOMAINS:
        src = CalibrationMix({d: str(root / "calib" / f"{d}.jsonl")})[d]
        t0 = time.perf_counter()
        docs = load_documents(src, tok)
        t1 = time.perf_counter()
        stream = tokenize_documents(docs, tok)
        windows = pack_windows(stream, seq_len)
        t2 = time.perf_counter()
        rows[d] = {
            "documents": len(docs),
            "chars": sum(map(len, docs)),
            "tokens": int(stream.numel()),
            "windows": int(windows.shape[0]),
            "load_s": round(t1 - t0, 3),
            "tokenise_pack_s": round(t2 - t1, 3),
            "tokens_per_s": round(stream.numel() / (t2 - t1)),
        }
    total_tokens = sum(r["tokens"] for r in rows.values())
    total_s = sum(r["tokenise_pack_s"] for r in rows.values())

    mix = CalibrationMix({d: str(root / "calib" / f"{d}.jsonl") for d in DOMAINS})
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        for s in mix:
            domain_token_stream(s, tok, cache=cache)
        cold = time.perf_counter() - t0
        t0 = time.perf_counter()
        for s in mix:
            domain_token_stream(s, tok, cache=cache)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        w = mix.sample(tok, 128, seq_len, seed=0, cache=cache)
        sample_s = time.perf_counter() - t0
    return {
        "per_domain": rows,
        "total_tokens": total_tokens,
        "total_tokenise_pack_s": round(total_s, 3),
        "tokens_per_s": round(total_tokens / total_s),
        "cache_cold_s": round(cold, 3),
        "cache_warm_s": round(warm, 3),
        "sample_128x{}_warm_s".format(seq_len): round(sample_s, 3),
        "sample_domain_counts": w.domain_counts,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--max-windows", type=int, default=32, help="dev windows per domain (evenly spaced)")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--model", choices=MODELS, default="smollm2",
                    help="qwen = Qwen2.5-Coder-0.5B-Instruct (bash scripts/fetch_qwen.sh first)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    args.out = args.out or REPO / "benchmarks" / "results" / ("data.json" if args.model == "smollm2" else "data_qwen.json")

    root = corpus_dir("bench_data")
    model, tok = load_model(args.model)
    name = "SmolLM2-135M-Instruct" if args.model == "smollm2" else "Qwen2.5-Coder-0.5B-Instruct"
    result: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "model": f"{name} (fp32, as Qwen2ForCausalLM)",
    }
    print("tokenising the calib split...", file=sys.stderr)
    result["tokenisation"] = bench_tokenisation(tok, root, args.seq_len)

    print("dev perplexity...", file=sys.stderr)
    calib = CalibrationMix({d: str(root / "calib" / f"{d}.jsonl") for d in DOMAINS})
    dev = dev_files(root)
    t0 = time.perf_counter()
    report = evaluate_perplexity(
        model, tok, dev, seq_len=args.seq_len, batch_size=args.batch_size,
        max_windows_per_domain=args.max_windows, calibration=calib, label=f"{name} dense",
    )
    ppl_s = time.perf_counter() - t0
    result["dev_perplexity"] = {**report.to_dict(), "max_windows_per_domain": args.max_windows, "seconds": round(ppl_s, 1)}

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")

    tk = result["tokenisation"]
    print(f"\n### Tokenisation + packing ({name} tokenizer, calib split, uncached)\n")
    print("| domain | documents | chars | tokens | chars/token | load s | tokenise+pack s | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for d, r in tk["per_domain"].items():
        print(
            f"| {d} | {r['documents']} | {r['chars']:,} | {r['tokens']:,} | {r['chars'] / r['tokens']:.2f} | "
            f"{r['load_s']:.2f} | {r['tokenise_pack_s']:.2f} | {r['tokens_per_s']:,} |"
        )
    print(f"| **all** | | | {tk['total_tokens']:,} | | | {tk['total_tokenise_pack_s']:.2f} | **{tk['tokens_per_s']:,}** |")
    print(
        f"\nToken cache, all 7 domains: cold {tk['cache_cold_s']:.2f} s, warm {tk['cache_warm_s']:.3f} s; "
        f"drawing 128 x {args.seq_len} windows from the warm cache: "
        f"{tk['sample_128x{}_warm_s'.format(args.seq_len)]:.3f} s."
    )
    print(f"\n### Dev perplexity, dense {name} ({args.max_windows} windows/domain max, {ppl_s:.0f} s)\n")
    print(report.to_markdown())
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
