"""Scoring and compensation at the real shapes of Qwen2.5-7B / 14B / 32B / 72B, random bf16 weights, on GPUs.

    python benchmarks/bench_scale.py --shape qwen2.5-7b --batch-size 1 --seq-len 2048 --num-samples 8
    python benchmarks/bench_scale.py --shape qwen2.5-32b --devices 4 --batch-size 1 --seq-len 2048
    python benchmarks/bench_scale.py --shape smoke --device cpu          # the CPU smoke test (not timed)
    python benchmarks/bench_scale.py --plan-only --devices 8 --shape qwen2.5-72b   # the memory plan alone

The model is built on the meta device and materialised directly on its device(s) with random weights: no
download, no CPU copy. With ``--devices N`` the decoder layers are split over ``cuda:0 .. cuda:N-1`` with an
explicit ``device_map`` and accelerate's hooks (embeddings on the first, lm_head on the last), as
``from_pretrained(device_map="auto")`` would place them. Then, on ``--num-samples`` windows of ``--seq-len``
random tokens:

1. one Taylor scoring round as a pruning run makes it (fp32 score buffers, the per-domain loss recorder);
2. one plain forward+backward over the same batches (every weight trainable, as in fine-tuning), for the ratio;
3. one layer's compensation (the middle layer): the Gram matrices of its o_proj and down_proj inputs over
   ``--compensation-samples`` windows, and the two least-squares refits keeping half the heads / channels.

Printed (and written with ``--out``): seconds per round, tokens/s, peak memory per device (torch's
``max_memory_allocated``) next to :func:`hf_prune.memory_plan`'s stage totals for the same devices.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

#: Sizes from the models' config.json files on the Hub (all: head_dim 128, q/k/v biases, untied lm_head).
SHAPES = {
    "qwen2.5-7b": dict(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                       intermediate_size=18944, vocab_size=152064),
    "qwen2.5-14b": dict(hidden_size=5120, num_hidden_layers=48, num_attention_heads=40, num_key_value_heads=8,
                        intermediate_size=13824, vocab_size=152064),
    "qwen2.5-32b": dict(hidden_size=5120, num_hidden_layers=64, num_attention_heads=40, num_key_value_heads=8,
                        intermediate_size=27648, vocab_size=152064),
    "qwen2.5-72b": dict(hidden_size=8192, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
                        intermediate_size=29568, vocab_size=152064),
    # The CPU smoke test: Qwen2's structure at a few thousandths of the size.
    "smoke": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=256, vocab_size=512),
}


def config_of(shape: str, dtype: str = "bfloat16") -> dict:
    """The ``config.json`` of a shape (what the memory plan reads)."""
    return {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], **SHAPES[shape], "tie_word_embeddings": False,
            "rms_norm_eps": 1e-6, "max_position_embeddings": 32768, "use_sliding_window": False, "dtype": dtype,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}}


def device_map_for(shape: str, devices: list[str]) -> dict[str, str]:
    """The memory plan's split: consecutive layers balanced by weight, embeddings first, norm and lm_head last."""
    from hf_prune.engine.memory import ModelDims, split_layers

    dmap = {"model.embed_tokens": devices[0], "model.rotary_emb": devices[0]}
    for dev, layers in zip(devices, split_layers(ModelDims.from_config(config_of(shape)), len(devices))):
        dmap.update({f"model.layers.{i}": dev for i in layers})
    dmap.update({"model.norm": devices[-1], "lm_head": devices[-1]})
    return dmap


def build(shape: str, devices: list[str], dtype: torch.dtype, seed: int = 0):
    """A Qwen2ForCausalLM of ``shape`` with random weights, materialised from the meta device on ``devices``."""
    from accelerate import dispatch_model
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from transformers.models.qwen2.modeling_qwen2 import Qwen2RotaryEmbedding

    config = Qwen2Config(**{k: v for k, v in config_of(shape).items() if k not in ("model_type", "architectures", "dtype")})
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config).to(dtype)
    dmap = device_map_for(shape, devices)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    for name, dev in dmap.items():
        module = model.get_submodule(name)
        module.to_empty(device=dev)
        for pname, p in module.named_parameters():
            with torch.no_grad():
                if pname.endswith("norm.weight") or name == "model.norm":
                    p.fill_(1.0)
                else:  # N(0, 0.02) drawn in chunks on the device (no CPU copy of the weights)
                    p.normal_(0.0, 0.02, generator=None) if p.device.type != "cpu" else p.normal_(0.0, 0.02, generator=gen)
    model.model.rotary_emb = Qwen2RotaryEmbedding(config=config).to(devices[0])  # buffers rebuilt, not empty
    model.eval()
    return dispatch_model(model, device_map=dmap, force_hooks=True) if len(set(devices)) > 1 else model


def _batches(vocab: int, num: int, seq_len: int, batch_size: int, device) -> list[dict]:
    ids = torch.randint(0, vocab, (num, seq_len), generator=torch.Generator().manual_seed(0))
    return [{"input_ids": ids[i:i + batch_size].to(device), "domains": ["random"] * len(ids[i:i + batch_size])}
            for i in range(0, num, batch_size)]


def _sync(devices: list[str]) -> None:
    for d in set(devices):
        if d.startswith("cuda"):
            torch.cuda.synchronize(d)


def _peaks(devices: list[str]) -> dict[str, int | None]:
    return {d: (torch.cuda.max_memory_allocated(d) if d.startswith("cuda") else None) for d in dict.fromkeys(devices)}


def _reset(devices: list[str]) -> None:
    for d in set(devices):
        if d.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(d)


def scoring_round(model, batches, devices, gradient_checkpointing: bool) -> tuple[float, dict]:
    from hf_prune.compat import disable_activation_checkpointing, enable_activation_checkpointing
    from hf_prune.engine.batches import LossRecorder
    from hf_prune.engine.importance import TaylorImportance
    from hf_prune.engine.objectives import lm_loss

    if gradient_checkpointing:
        enable_activation_checkpointing(model)
    _reset(devices)
    _sync(devices)
    t0 = time.perf_counter()
    scores = TaylorImportance()(model, batches, LossRecorder(lm_loss), show_progress=False)
    _sync(devices)
    seconds = time.perf_counter() - t0
    if gradient_checkpointing:
        disable_activation_checkpointing(model)
    assert all(torch.isfinite(s.mlp_channels).all() and torch.isfinite(s.query_heads).all() for s in scores)
    return seconds, _peaks(devices)


def plain_round(model, batches, devices) -> float:
    """Forward+backward with every weight trainable (fine-tuning's cost), gradients dropped afterwards."""
    for p in model.parameters():
        p.requires_grad_(True)
    _sync(devices)
    t0 = time.perf_counter()
    for batch in batches:
        model(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False).loss.backward()
    _sync(devices)
    seconds = time.perf_counter() - t0
    for p in model.parameters():
        p.grad = None
        p.requires_grad_(False)
    return seconds


@torch.no_grad()
def one_layer_compensation(model, batches, devices) -> dict:
    """Gram matrices of the middle layer's o_proj / down_proj inputs, then the two refits (half kept)."""
    from hf_prune.engine.compensation import _accumulate, refit

    layer = model.model.layers[len(model.model.layers) // 2]
    attn, mlp = layer.self_attn.o_proj, layer.mlp.down_proj
    _reset(devices)
    _sync(devices)
    t0 = time.perf_counter()
    grams: dict[str, torch.Tensor] = {}

    def keep(name):  # X^T X of the projection's input, as compensation accumulates it
        def hook(module, args):
            grams[name] = _accumulate(grams.get(name), args[0].detach(), None)
        return hook

    handles = [attn.register_forward_pre_hook(keep("attn")), mlp.register_forward_pre_hook(keep("mlp"))]
    try:
        for batch in batches:
            model(input_ids=batch["input_ids"], use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    h_attn, h_mlp = grams["attn"], grams["mlp"]
    _sync(devices)
    t1 = time.perf_counter()
    head_dim = attn.in_features // model.config.num_attention_heads
    heads = torch.arange(0, model.config.num_attention_heads, 2, device=h_attn.device)
    cols = (heads[:, None] * head_dim + torch.arange(head_dim, device=h_attn.device)).flatten()
    refit(attn.weight, h_attn, cols, 1e-4, where="o_proj")
    refit(mlp.weight, h_mlp, torch.arange(0, mlp.in_features, 2, device=h_mlp.device), 1e-4, where="down_proj")
    _sync(devices)
    return {"gram_seconds": t1 - t0, "refit_seconds": time.perf_counter() - t1, "peak_bytes": _peaks(devices)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="qwen2.5-7b", choices=sorted(SHAPES))
    parser.add_argument("--device", default="cuda", help="cuda (with --devices N) or cpu")
    parser.add_argument("--devices", type=int, default=1, help="GPUs to split the layers over")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--num-samples", type=int, default=8)
    parser.add_argument("--compensation-samples", type=int, default=8)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--plan-only", action="store_true", help="print the memory plan for these devices and stop")
    parser.add_argument("--gpu-memory", default="80GiB", help="per-GPU capacity for --plan-only (default: 80GiB)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    import hf_prune
    from hf_prune.engine.memory import format_bytes, parse_size

    devices = [f"cuda:{i}" for i in range(args.devices)] if args.device.startswith("cuda") else ["cpu"]
    run_config = hf_prune.PruneConfig(batch_size=args.batch_size, seq_len=args.seq_len, num_samples=args.num_samples,
                                      gradient_checkpointing=args.gradient_checkpointing,
                                      compensation_samples=args.compensation_samples)
    capacity = parse_size(args.gpu_memory) if args.plan_only else None
    if not args.plan_only and args.device.startswith("cuda"):
        capacity = torch.cuda.get_device_properties(0).total_memory
    plan = hf_prune.memory_plan(config_of(args.shape, args.dtype), run_config,
                                devices=[(d, capacity if d.startswith("cuda") else None) for d in devices])
    print(plan, flush=True)
    print(f"\nlargest per-device peak {format_bytes(plan.peak)}: {'fits' if plan.fits else 'does not fit'}")
    if args.plan_only:
        return {"plan_peak": plan.peak, "fits": plan.fits}

    dtype = getattr(torch, args.dtype)
    t0 = time.perf_counter()
    model = build(args.shape, devices, dtype)
    built = time.perf_counter() - t0
    batches = _batches(model.config.vocab_size, args.num_samples, args.seq_len, args.batch_size, devices[0])
    tokens = args.num_samples * args.seq_len
    score_s, score_peaks = scoring_round(model, batches, devices, args.gradient_checkpointing)
    plain_s = plain_round(model, batches, devices)
    comp = one_layer_compensation(model, _batches(model.config.vocab_size, args.compensation_samples, args.seq_len,
                                                  args.batch_size, devices[0]), devices)
    result = {
        "shape": args.shape, "devices": devices, "dtype": args.dtype, "batch_size": args.batch_size,
        "seq_len": args.seq_len, "num_samples": args.num_samples, "gradient_checkpointing": args.gradient_checkpointing,
        "params": sum(p.numel() for p in model.parameters()), "build_seconds": built,
        "scoring_seconds_per_round": score_s, "tokens_per_second": tokens / score_s,
        "plain_forward_backward_seconds": plain_s, "scoring_vs_plain": score_s / plain_s,
        "scoring_peak_bytes": score_peaks, "compensation_one_layer": comp,
        "planned_scoring_round_1": {d.name: d.total("scoring, round 1") for d in plan.devices},
        "planned_compensation": {d.name: d.total("compensation") for d in plan.devices},
        "torch": torch.__version__,
    }
    print(f"\n{args.shape} on {', '.join(devices)}: one scoring round {score_s:.1f}s ({tokens / score_s:,.0f} tokens/s), "
          f"{score_s / plain_s:.2f}x a plain forward+backward ({plain_s:.1f}s)")
    for d in plan.devices:
        measured = score_peaks.get(d.name)
        shown = "not measured (CPU)" if measured is None else format_bytes(measured)
        print(f"  {d.name}: scoring peak {shown}, planned {format_bytes(d.total('scoring, round 1'))} (plan includes "
              f"{format_bytes(d.overhead)} runtime)")
    print(f"  one layer's compensation: Grams {comp['gram_seconds']:.1f}s, refits {comp['refit_seconds']:.1f}s")
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
