"""The external peer: torch-pruning (PyPI ``torch-pruning``) on the same model, calibration tokens and dev text.

    pip install --no-deps torch-pruning            # a benchmark-only dependency
    python benchmarks/peer_torch_pruning.py --model smollm2 --sparsities 0.2,0.3,0.4,0.5

As in torch-pruning's LLM example for Qwen2, with its head pruning left out (it hangs on transformers 5, see
../shared/notes/method.md): its ``GroupTaylorImportance`` scores each MLP channel group (gate/up rows + down
column, found by its dependency graph) from the gradient of the LM loss over the calibration windows, and
the same ratio of channels is removed in every layer, in one shot. The ratio is chosen so that the fraction
of decoder-layer parameters removed equals the target (attention is not pruned). Writes
``benchmarks/results/peer_torch_pruning_<model>.json`` with the same per-domain evaluation as bench_quality.py.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch_pruning as tp  # noqa: E402

from bench_quality import DOMAINS, domain_mix, evaluate  # noqa: E402
from common import MODELS, ROOT, corpus_dir, dev_files, load_model  # noqa: E402

from hf_prune.engine import decoder_params  # noqa: E402


def prune_mlp_uniform(model, ratio: float) -> None:
    """Remove ``ratio`` of every layer's MLP channels, lowest torch-pruning group Taylor score first (in place)."""
    imp = tp.importance.GroupTaylorImportance()
    hidden = model.config.hidden_size
    for layer in model.model.layers:
        mlp = layer.mlp
        graph = tp.DependencyGraph().build_dependency(mlp, example_inputs=torch.zeros(1, 2, hidden))
        width = mlp.gate_proj.out_features
        group = graph.get_pruning_group(mlp.gate_proj, tp.prune_linear_out_channels, idxs=list(range(width)))
        scores = imp(group)
        drop = scores.argsort()[: int(round(ratio * width))].tolist()
        graph.get_pruning_group(mlp.gate_proj, tp.prune_linear_out_channels, idxs=drop).prune()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2", choices=MODELS)
    parser.add_argument("--sparsities", default="0.2,0.3,0.4,0.5")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--eval-seq-len", type=int, default=128)
    parser.add_argument("--eval-windows", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    corpus = corpus_dir("peer_torch_pruning")
    calibration = domain_mix(corpus, DOMAINS)
    evals = dev_files(corpus)
    model, tokenizer = load_model(args.model)
    windows = calibration.sample(tokenizer, args.num_samples, args.seq_len, seed=args.seed)  # same as prune()

    t0 = time.perf_counter()
    model.zero_grad()
    for ids, _ in windows.iter_batches(args.batch_size):
        (model(input_ids=ids, labels=ids, use_cache=False).loss * ids.shape[0] / len(windows)).backward()
    grad_seconds = time.perf_counter() - t0

    dense_params = decoder_params(model)
    mlp_params = sum(p.numel() for layer in model.model.layers for p in layer.mlp.parameters())
    results = {}
    for s in [float(x) for x in args.sparsities.split(",")]:
        pruned = copy.deepcopy(model)
        for new, old in zip(pruned.parameters(), model.parameters()):  # deepcopy drops .grad, which Taylor reads
            new.grad = None if old.grad is None else old.grad.clone()
        prune_mlp_uniform(pruned, ratio=s * dense_params / mlp_params)
        pruned.zero_grad(set_to_none=True)
        measured = 1 - decoder_params(pruned) / dense_params
        results[str(s)] = {**evaluate(pruned, tokenizer, evals, args, calibration), "sparsity": measured}
        print(f"  torch-pruning {s:.0%}: measured {measured:.2%}, mean dev perplexity {results[str(s)]['mean']:.2f}",
              flush=True)
        del pruned
    out = ROOT / "benchmarks" / "results" / f"peer_torch_pruning_{args.model}.json"
    out.write_text(json.dumps({"settings": vars(args) | {"torch_pruning": tp.__version__},
                               "gradient_seconds": grad_seconds, "levels": results}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
