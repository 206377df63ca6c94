"""The price of a KV-cache saving: one size target, several ``target_kv_cache`` values, quality and serving cost.

    python benchmarks/bench_kv_targets.py --model smollm2
    python benchmarks/bench_kv_targets.py --model qwen --kv 0,0.25,0.5 --context 2048 --overrides compensation=none

For each KV target, ``gisp`` (the default method, compensation on; ``--overrides`` changes its options) prunes the
model to ``--sparsity`` of its decoder parameters with ``target_kv_cache`` set (0: no KV target, the default run),
on the seven-domain calibration mix. Each level is then measured:

- dev perplexity per domain, the mean, and the geometric mean of the per-domain ratios to dense;
- the KV cache it needs at ``--context`` tokens (bytes, from its shapes) and its parameters;
- decode tokens/s after a ``--context``-token prompt (batch 1, greedy, KV cache), every level next to dense in the
  same rounds, in alternating order (``bench_format``'s timing: median of ``--rounds``);
- peak memory of that generate, each model in a fresh process (``bench_format``'s measurement: peak RSS minus the
  RSS once its weights are resident = KV cache + activations), and the peak RSS itself.

Writes ``benchmarks/results/kv_targets_<model>.json`` and a PNG beside it. The corpus is ``$HF_PRUNE_CORPUS`` or
``../shared/corpus``; the script exits with a message when it is missing. Timings on a shared machine: the JSON keeps
the 1-minute load of each round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_format: spinning OpenMP threads on a shared machine

import torch  # noqa: E402
from bench_format import bench_setting, measure_memory, prompts  # noqa: E402
from bench_quality import add_run_options, domain_mix, evaluate, parse_overrides, to_dense  # noqa: E402
from common import DOMAINS, MODELS, ROOT, corpus_dir, dev_files  # noqa: E402
from common import load_model  # noqa: E402

from hf_prune import prune  # noqa: E402
from hf_prune.engine.memory import ModelDims  # noqa: E402
from hf_prune.fileio import write_text_atomic  # noqa: E402


def prune_level(model, tokenizer, mix, sparsity: float, kv: float, args):
    """The level at ``sparsity`` with ``kv`` of the KV cache removed (0: no KV target), and the prune seconds."""
    t0 = time.perf_counter()
    result = prune(model, tokenizer, mix, [sparsity], method="gisp", steps=args.steps, num_samples=args.num_samples,
                   seq_len=args.seq_len, seed=args.seed, batch_size=args.batch_size, show_progress=False,
                   target_kv_cache=kv or None, **parse_overrides(args.overrides.split(":") if args.overrides else []))
    level = result.apply(model, result.config.target_sparsity[0])
    return level, result, time.perf_counter() - t0


def sizes(model, context: int) -> dict:
    dims = ModelDims.from_model(model)
    return {"params": sum(p.numel() for p in model.parameters()), "kv_heads": dims.kv_heads,
            "kv_cache_bytes": dims.kv_cache_bytes(context, 1)}


def plot(path: Path, levels: dict, dense: dict, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(levels)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for name in names:
        row = levels[name]
        left.plot(DOMAINS, [row["per_domain"][d] / dense["per_domain"][d] for d in DOMAINS], marker="o",
                  label=f"{name} (geo. mean {row['geomean_to_dense']:.3f}x)")
    left.set_ylabel("dev perplexity / dense")
    left.tick_params(axis="x", rotation=30)
    left.legend(fontsize=7)
    kv = [levels[n]["kv_cache_reduction"] * 100 for n in names]
    right.plot(kv, [levels[n]["decode_ratio"] for n in names], marker="o", label="decode speed-up vs dense")
    right.plot(kv, [levels[n]["geomean_to_dense"] for n in names], marker="s", label="perplexity / dense (geo. mean)")
    right.set_xlabel("KV cache removed (%)")
    right.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--kv", default="0,0.25,0.5", help="KV-cache targets (0: none)")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--context", type=int, default=2048, help="prompt tokens before decoding")
    parser.add_argument("--new-tokens", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--overrides", default="", help="PruneConfig overrides joined by ':' (compensation=none)")
    add_run_options(parser, steps=5, eval_windows=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = corpus_dir("bench_kv_targets")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"kv_targets_{args.model}.json")
    evals, mix = dev_files(corpus), domain_mix(corpus, DOMAINS)
    model, tokenizer = load_model(args.model)
    model.eval()
    dense = {**evaluate(model, tokenizer, evals, args, mix), **sizes(model, args.context)}
    print(f"dense: mean {dense['mean']:.2f}", flush=True)
    models, levels = {"dense": model}, {}
    for kv in (float(k) for k in args.kv.split(",")):
        level, result, seconds = prune_level(model, tokenizer, mix, args.sparsity, kv, args)
        name = f"kv-{kv:.0%}"
        s = result.config.target_sparsity[0]
        row = evaluate(level, tokenizer, evals, args, mix)
        levels[name] = {**row, "geomean_to_dense": to_dense(row, dense), "sparsity": result.sparsity[s],
                        "kv_cache_reduction": result.kv_cache_reduction[s], "target_kv_cache": kv,
                        "prune_seconds": seconds, **sizes(level, args.context)}
        models[name] = level.eval()
        print(f"{name}: mean {row['mean']:.2f}, {levels[name]['geomean_to_dense']:.3f}x dense, KV cache "
              f"-{levels[name]['kv_cache_reduction']:.1%} ({seconds:.0f}s)", flush=True)
    input_ids = prompts(tokenizer, 1, args.context)
    speed = bench_setting(models, input_ids, args.new_tokens, args.rounds, lambda m: print(m, flush=True))
    dense["decode_tok_s"] = speed["dense"]["decode_tok_s"]
    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "inputs.pt"
        torch.save(input_ids, inputs)
        for name, m in models.items():
            m.save_pretrained(Path(tmp) / name)
            memory = measure_memory(Path(tmp) / name, name != "dense", "float32", inputs, args.threads)
            target = dense if name == "dense" else levels[name]
            target.update(peak_rss_mb=memory["peak_rss_mb"], inference_delta_mb=memory["inference_delta_mb"])
            if name != "dense":
                target.update(decode_tok_s=speed[name]["decode_tok_s"], decode_ratio=speed[name]["decode_ratio"],
                              prefill_ratio=speed[name]["prefill_ratio"])
    result = {"model": args.model, "settings": vars(args), "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
              "loadavg_1min_per_round": speed["loadavg_1min_per_round"], "dense": dense, "levels": levels}
    write_text_atomic(out, json.dumps(result, indent=1) + "\n")
    plot(out.with_suffix(".png"), levels, dense, f"{args.model}: {args.sparsity:.0%} of decoder parameters, KV targets")
    print("| level | KV cache removed | params | mean ppl | geo. mean to dense | decode tok/s | vs dense | "
          "peak RSS MB | KV + activations MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| dense | 0% | {dense['params'] / 1e6:.1f} M | {dense['mean']:.2f} | 1.000 | {dense['decode_tok_s']:.2f} | "
          f"1.00x | {dense['peak_rss_mb']:.0f} | {dense['inference_delta_mb']:.0f} |")
    for name, r in levels.items():
        print(f"| {name} | {r['kv_cache_reduction']:.1%} | {r['params'] / 1e6:.1f} M | {r['mean']:.2f} | "
              f"{r['geomean_to_dense']:.3f} | {r['decode_tok_s']:.2f} | {r['decode_ratio']:.2f}x | "
              f"{r['peak_rss_mb']:.0f} | {r['inference_delta_mb']:.0f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
