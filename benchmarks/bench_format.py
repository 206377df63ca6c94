"""Benchmark of the pruned format on CPU (issue 2): does ``PrunedQwen2ForCausalLM`` cost anything, and does a
heterogeneously pruned model get the speed-up its FLOPs allow?

In one run, on Qwen2.5-Coder-0.5B-Instruct (``hf_prune.demo.assets.load_qwen_coder_05b``; fetch it first with
``bash scripts/fetch_qwen.sh``; ``--model smollm2`` is the fallback):

1. ``apply_plan`` with a keep-all plan (a ``PrunedQwen2ForCausalLM`` with nothing removed) vs the stock
   ``Qwen2ForCausalLM``: prefill and decode tokens/s. Target: within 3%.
2. A heterogeneous model with about half of the decoder-layer parameters removed (per layer: about half the
   query heads, whole KV groups where possible, and an MLP width that varies around half, multiple of 64) vs
   dense: prefill and decode tokens/s and peak memory, next to the FLOP ratio (the physical limit). Target:
   prefill speed-up >= 85% of the FLOP ratio.

Method: ``torch.set_num_threads(--threads)`` (default 2) and ``OMP_WAIT_POLICY=PASSIVE`` (see below); per setting (dtype x batch) one untimed warm-up
``generate`` per model, then ``--rounds`` rounds, each timing one greedy ``generate`` (KV cache,
``min_new_tokens = max_new_tokens``) per model, in alternating order (dense, keep-all, pruned / pruned, keep-all,
dense, ...). A streamer timestamps every token: prefill = prompt -> first new token (the prompt forward pass,
logits of the last position only, and picking the token), decode = first -> last new token. Reported:
medians of tokens/s, and medians over rounds of the per-round speed ratios (both models of a ratio ran in the
same round, seconds apart). Peak memory: each model runs once more in a fresh subprocess (largest batch, 8 new
tokens); peak RSS (VmHWM) minus the RSS before the model was loaded = weights + activations + KV cache.

    python benchmarks/bench_format.py [--rounds 3] [--batches 1 4] [--bf16-batches 1] [--prompt-len 256]
                                      [--new-tokens 32] [--dtypes float32 bfloat16] [--threads 2] [--note TEXT]

Writes ``benchmarks/results/format.json`` and prints a markdown table.

``--channel-multiples 1 64 128`` measures instead what kept MLP widths that are not multiples of 64 / 128 cost: the
heterogeneous plan with its widths rounded to each multiple (same heads, same unrounded widths), every model next
to dense in the same rounds, each speed-up as a fraction of its own FLOP ratio (the widths differ slightly).
Writes ``benchmarks/results/format_channel_multiple.json``.
"""

from __future__ import annotations

import argparse
import copy
import gc
import inspect
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


# Must be set before torch loads its OpenMP runtime. With the default (spinning) wait policy, on a machine shared
# with other busy processes an OpenMP thread that is descheduled stalls every barrier while the others spin:
# measured here, a dense fp32 prefill took 6.0 s with 2 threads vs 1.4 s with 1 thread next to one busy
# process, and 1.5 s with 2 threads and PASSIVE. PASSIVE costs little on an idle machine.
# Override with OMP_WAIT_POLICY=ACTIVE in the environment.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from common import ROOT as REPO  # noqa: E402
from common import load_model, status_kb  # noqa: E402

from hf_prune import PruningPlan, apply_plan  # noqa: E402
from hf_prune.format.plan import LayerPlan  # noqa: E402
from hf_prune.format.geometry import layer_shapes  # noqa: E402

RESULTS = REPO / "benchmarks" / "results" / "format.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


# ---- models and plans -----------------------------------------------------------------------------------------
def round_width(width: float, multiple: int, limit: int) -> int:
    """``width`` rounded to the nearest multiple of ``multiple`` (``1``: to an integer), within ``[multiple, limit]``."""
    return max(multiple, min(limit, int(round(width / multiple)) * multiple))


def heterogeneous_plan(model, seed: int = 0, multiple: int = 64) -> PruningPlan:
    """A realistic pruned shape removing about half of every decoder layer, with sizes varying per layer.

    Attention: keeps about half the query heads with the same number per kept KV head (what repeat_kv needs).
    With 2 KV heads of 7 query heads (Qwen-0.5B) most layers keep one whole KV group (7 heads, and half the
    KV cache), the others 3 or 4 heads of each group (6 or 8 heads). MLP: a width between ~36% and ~64% of
    the original, mean ~50%, rounded to a multiple of ``multiple``. Which heads/channels survive is random
    (seeded): speed depends only on the sizes. Every ``multiple`` gives the same heads and the same unrounded
    widths (the draws are those of ``multiple=64``), so plans differ only in the rounding.
    """
    rng = random.Random(seed)
    shapes = layer_shapes(model)
    n = len(shapes)
    layers = []
    for idx, s in enumerate(shapes):
        group, kv = s.group_size, s.num_key_value_heads
        # Attention pattern cycles: whole group, whole group, per-group floor(half), per-group ceil(half).
        choice = idx % 4
        if kv > 1 and kv % 2 == 0 and choice < 2:
            kept_groups = sorted(rng.sample(range(kv), kv // 2))
            heads = [g * group + i for g in kept_groups for i in range(group)]
        else:
            per_group = group // 2 if choice == 2 or kv % 2 else (group + 1) // 2
            per_group = max(1, per_group)
            heads = [g * group + i for g in range(kv) for i in sorted(rng.sample(range(group), per_group))]
        # MLP width: a smooth profile over depth (more kept at both ends), plus jitter; mean ~0.5.
        frac = 0.488 + 0.12 * (abs(idx - (n - 1) / 2) / ((n - 1) / 2) * 2 - 1) + rng.uniform(-0.03, 0.03)
        width = round_width(s.intermediate_size * frac, 64, s.intermediate_size)
        channels = sorted(rng.sample(range(s.intermediate_size), width))
        if multiple != 64:  # the 64-plan's channels, trimmed or extended in index order
            width = round_width(s.intermediate_size * frac, multiple, s.intermediate_size)
            rest = sorted(set(range(s.intermediate_size)) - set(channels))
            channels = sorted(channels[:width] + rest[:max(0, width - len(channels))])
        layers.append(LayerPlan(query_heads=sorted(heads), mlp_channels=channels))
    return PruningPlan(layers=layers, metadata={"name": "bench_format heterogeneous ~50%", "seed": seed})


# ---- FLOP and parameter accounting -------------------------------------------------------------------------------
def layer_flops_per_token(shape, hidden: int, head_dim: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one token through one layer's projections (attention scores apart)."""
    h, d = hidden, head_dim
    attn = 2 * h * d * (2 * shape.num_attention_heads + 2 * shape.num_key_value_heads)  # q, o + k, v
    mlp = 2 * 3 * h * shape.intermediate_size  # gate, up, down
    return attn + mlp


def model_flops(model, batch: int, prompt_len: int, new_tokens: int) -> dict:
    """Matmul FLOPs of the prefill (one batch) and of one decode step (averaged over the timed steps).

    Prefill: every prompt token through every layer, causal attention scores (QK^T and AV over the T(T+1)/2
    visible pairs per head) and lm_head for the last position only (as in ``generate``). Decode step: one token
    per sequence, attention over the cached context, lm_head for that token. Embedding lookups, norms, RoPE and
    softmax are not matmuls and are left out.
    """
    cfg = model.config
    hidden, vocab = cfg.hidden_size, cfg.vocab_size
    head_dim = getattr(cfg, "head_dim", None) or hidden // cfg.num_attention_heads
    shapes = layer_shapes(model)
    proj = sum(layer_flops_per_token(s, hidden, head_dim) for s in shapes)
    heads = sum(s.num_attention_heads for s in shapes)
    lm_head = 2 * hidden * vocab
    T = prompt_len
    prefill = batch * (T * proj + 4 * head_dim * heads * T * (T + 1) // 2 + lm_head)
    # Timed decode steps produce new tokens 2..N: the token at position T+k-1 attends to T+k positions.
    steps = range(1, new_tokens)
    decode = batch * (proj + lm_head) + batch * 4 * head_dim * heads * statistics.mean(T + k for k in steps)
    return {"prefill": prefill, "decode_step": decode, "lm_head_per_token": lm_head, "layers_per_token": proj}


def param_counts(model) -> dict:
    layers = sum(p.numel() for p in model.model.layers.parameters())
    total = sum(p.numel() for p in model.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"decoder_layers": layers, "total": total, "bytes": nbytes}


def _streamed_bytes(model) -> int:
    embed = model.get_input_embeddings().weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)


# ---- timing ------------------------------------------------------------------------------------------------------
class _Clock:
    """A generate() streamer that only timestamps: put() is called with the prompt, then once per new token."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):
        self.times.append(time.perf_counter())

    def end(self):
        pass


def timed_generate(model, input_ids: torch.Tensor, new_tokens: int, **generate_kwargs) -> tuple[float, float]:
    """(prefill seconds, decode seconds for new tokens 2..N) of one greedy generate with KV cache; ``generate_kwargs``
    go to ``generate`` (e.g. ``cache_implementation="static"``)."""
    clock = _Clock()
    with torch.inference_mode():
        out = model.generate(
            input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            use_cache=True,
            streamer=clock,
            pad_token_id=model.generation_config.pad_token_id or 0,
            **generate_kwargs,
        )
    assert out.shape[1] == input_ids.shape[1] + new_tokens, out.shape
    t = clock.times
    # t[0]: prompt handed to the streamer (just before prefill); t[1]: first new token; t[-1]: the last one.
    assert len(t) == new_tokens + 1, len(t)
    return t[1] - t[0], t[-1] - t[1]


def prompts(tokenizer, batch: int, length: int) -> torch.Tensor:
    """``batch`` different windows of real Python source (hf_prune's own modules) of ``length`` tokens."""
    import hf_prune.format.plan
    import hf_prune.format.slicing

    text = inspect.getsource(hf_prune.format.slicing) + inspect.getsource(hf_prune.format.plan)
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    while ids.numel() < batch * length:
        ids = torch.cat([ids, ids])
    return torch.stack([ids[i * length : (i + 1) * length] for i in range(batch)])


def bench_setting(models: dict, input_ids: torch.Tensor, new_tokens: int, rounds: int, log, **generate_kwargs) -> dict:
    names = list(models)
    for name in names:  # warm-up: same shapes, fewer tokens
        timed_generate(models[name], input_ids, min(4, new_tokens), **generate_kwargs)
    runs = {n: [] for n in names}
    loads = []
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            runs[name].append(timed_generate(models[name], input_ids, new_tokens, **generate_kwargs))
        loads.append(os.getloadavg()[0])
        log(f"    round {r + 1}/{rounds} (load {loads[-1]:.1f}): " + ", ".join(f"{n} {runs[n][-1][0]:.2f}+{runs[n][-1][1]:.2f}s" for n in names))
    B, T = input_ids.shape
    out = {}
    for name in names:
        pre = [B * T / p for p, _ in runs[name]]
        dec = [B * (new_tokens - 1) / d for _, d in runs[name]]
        out[name] = {
            "prefill_s": [p for p, _ in runs[name]],
            "decode_s": [d for _, d in runs[name]],
            "prefill_tok_s": statistics.median(pre),
            "decode_tok_s": statistics.median(dec),
        }
    out["loadavg_1min_per_round"] = loads
    base = names[0]
    for name in names[1:]:
        # Speed ratio (>1: faster than dense), per round, then the median.
        out[name]["prefill_ratio"] = statistics.median(b[0] / m[0] for b, m in zip(runs[base], runs[name]))
        out[name]["decode_ratio"] = statistics.median(b[1] / m[1] for b, m in zip(runs[base], runs[name]))
    return out


def profile_prefill(models: dict, input_ids: torch.Tensor) -> dict:
    """Where prefill time goes (torch.profiler, self CPU time per op class): one prompt forward per model."""
    from torch.profiler import ProfilerActivity, profile

    classes = {"matmul": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"),
               "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                             "aten::_scaled_dot_product_attention_math", "aten::scaled_dot_product_attention")}
    out = {}
    for name in ("dense", "pruned"):
        best = None
        for _ in range(2):  # the faster of two profiled runs (less disturbed by other processes)
            with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
                models[name](input_ids, use_cache=True, logits_to_keep=1)
            ms = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
            for event in prof.key_averages():
                cls = next((c for c, ops in classes.items() if event.key in ops), "other")
                ms[cls] += event.self_cpu_time_total / 1e3
            ms["total"] = sum(ms.values())
            best = ms if best is None or ms["total"] < best["total"] else best
        out[name] = best
    out["ratio"] = {k: out["dense"][k] / out["pruned"][k] for k in out["dense"]}
    return out


def channel_multiple_study(base, tokenizer, args, log) -> dict:
    """``--channel-multiples``: dense and one pruned model per multiple, timed in the same interleaved rounds."""
    named = {f"multiple_{m}": heterogeneous_plan(base, multiple=m) for m in args.channel_multiples}
    models32 = {"dense": copy.deepcopy(base), **{n: apply_plan(base, p) for n, p in named.items()}}
    widths = {n: [s.intermediate_size for s in layer_shapes(m)] for n, m in models32.items() if n != "dense"}
    log(f"MLP widths per layer: {widths}")
    hidden = base.config.hidden_size
    log(f"MLP matmuls: fastest of {args.matmul_repeats} passes, {args.dtypes}, T = {args.matmul_tokens}")
    matmuls = mlp_matmul_study(widths, hidden, args.dtypes, args.matmul_tokens, args.matmul_repeats, log)
    if args.matmuls_only:
        return {"mlp_widths": widths, "matmuls": matmuls}
    runs = {}
    for dtype_name in args.dtypes:
        models = models32 if dtype_name == "float32" else {n: copy.deepcopy(m).to(DTYPES[dtype_name])
                                                           for n, m in models32.items()}
        for batch in args.batches if dtype_name == "float32" else args.bf16_batches:
            log(f"{dtype_name} batch {batch}: {args.rounds} rounds")
            row = bench_setting(models, prompts(tokenizer, batch, args.prompt_len), args.new_tokens, args.rounds, log)
            dense = model_flops(models["dense"], batch, args.prompt_len, args.new_tokens)
            for name in named:
                flops = model_flops(models[name], batch, args.prompt_len, args.new_tokens)
                ratio = {"prefill": dense["prefill"] / flops["prefill"], "decode": dense["decode_step"] / flops["decode_step"]}
                row[name].update(flop_ratio=ratio, prefill_fraction_of_limit=row[name]["prefill_ratio"] / ratio["prefill"],
                                 decode_fraction_of_limit=row[name]["decode_ratio"] / ratio["decode"])
            runs[f"{dtype_name}/b{batch}"] = row
            log("  prefill speed-up / FLOP ratio: " + ", ".join(
                f"{n} {row[n]['prefill_ratio']:.3f} / {row[n]['flop_ratio']['prefill']:.3f}" for n in named))
    return {"benchmark": "bench_format --channel-multiples", "mlp_widths": widths, "matmuls": matmuls, "runs": runs}


def mlp_matmul_study(widths: dict[str, list[int]], hidden: int, dtypes: list[str], tokens: list[int],
                     repeats: int, log) -> dict:
    """The MLP matmuls alone (gate, up: ``[T, hidden] @ [hidden, w]``; down: ``[T, w] @ [w, hidden]``) of every layer
    at each multiple's widths: the fastest of ``repeats`` passes over all layers (the minimum is what other jobs on
    the machine disturb least), the multiples interleaved in alternating order, and the FLOP rate of each."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for dtype_name in dtypes:
        dtype = DTYPES[dtype_name]
        weights = {n: [(torch.randn(w, hidden, generator=gen).to(dtype), torch.randn(w, hidden, generator=gen).to(dtype),
                        torch.randn(hidden, w, generator=gen).to(dtype)) for w in ws] for n, ws in widths.items()}
        for T in tokens:
            x = torch.randn(T, hidden, generator=gen).to(dtype)
            best = dict.fromkeys(widths, float("inf"))
            with torch.inference_mode():
                for r in range(repeats + 1):  # the first pass warms up (allocator, kernels) and is not counted
                    for name in (list(widths) if r % 2 else list(widths)[::-1]):
                        t0 = time.perf_counter()
                        for gate, up, down in weights[name]:
                            torch.nn.functional.linear(torch.nn.functional.linear(x, gate) *
                                                       torch.nn.functional.linear(x, up), down)
                        if r:
                            best[name] = min(best[name], time.perf_counter() - t0)
            row = {n: {"seconds": best[n], "gflop_per_s": 6 * T * hidden * sum(ws) / best[n] / 1e9}
                   for n, ws in widths.items()}
            ref = row.get("multiple_64")
            for n in row:
                if ref:
                    row[n]["rate_vs_multiple_64"] = row[n]["gflop_per_s"] / ref["gflop_per_s"]
            out[f"{dtype_name}/T{T}"] = row
            log(f"  MLP matmuls {dtype_name} T={T}: " + ", ".join(f"{n} {r['gflop_per_s']:.0f} GFLOP/s"
                                                               for n, r in row.items()))
    return out


def mlp_matmul_markdown(matmuls: dict) -> str:
    lines = ["| dtype | tokens | kept widths multiple of | MLP matmul time (all layers) | GFLOP/s | rate vs multiple of 64 |",
             "|---|---|---|---|---|---|"]
    for key, row in matmuls.items():
        dtype, T = key.split("/T")
        for name, r in row.items():
            lines.append(f"| {dtype} | {T} | {name.split('_')[1]} | {1000 * r['seconds']:.0f} ms | {r['gflop_per_s']:.0f} "
                         f"| {r.get('rate_vs_multiple_64', float('nan')):.3f} |")
    return "\n".join(lines)


def channel_multiple_markdown(results: dict) -> str:
    s = results["settings"]
    lines = [f"Model: {results['model']}; prompt {s['prompt_len']} tokens, {s['new_tokens']} new tokens, "
             f"{s['threads']} threads, median of {s['rounds']} interleaved rounds (dense and every multiple in each).",
             "", "| dtype | batch | kept widths multiple of | mean MLP width | prefill speed-up | prefill FLOP ratio "
             "| % of limit | decode speed-up | decode FLOP ratio | % of limit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for key, row in results["runs"].items():
        dtype, batch = key.split("/b")
        for name, widths in results["mlp_widths"].items():
            r = row[name]
            lines.append(f"| {dtype} | {batch} | {name.split('_')[1]} | {statistics.mean(widths):.0f} "
                         f"| {r['prefill_ratio']:.3f} | {r['flop_ratio']['prefill']:.3f} "
                         f"| {100 * r['prefill_fraction_of_limit']:.1f}% | {r['decode_ratio']:.3f} "
                         f"| {r['flop_ratio']['decode']:.3f} | {100 * r['decode_fraction_of_limit']:.1f}% |")
    return "\n".join(lines)


def write_channel_multiple(base, tokenizer, args, info: dict, log) -> None:
    """Run the ``--channel-multiples`` study and write its JSON (with ``--matmuls-only``, into the JSON already at
    ``--out``: its model rounds are kept) and its tables."""
    out = args.out or RESULTS.with_name("format_channel_multiple.json")
    study = channel_multiple_study(base, tokenizer, args, log)
    settings = {k: getattr(args, k) for k in ("prompt_len", "new_tokens", "batches", "dtypes", "bf16_batches", "rounds",
                                              "threads", "matmul_tokens", "matmul_repeats")}
    if args.matmuls_only and out.is_file():
        results = json.loads(out.read_text())
        results.update(matmuls=study["matmuls"], matmul_machine={**info, "loadavg_end": list(os.getloadavg())},
                       matmul_note=args.note)
        results["settings"].update(matmul_tokens=args.matmul_tokens, matmul_repeats=args.matmul_repeats)
    else:
        results = {"benchmark": "bench_format --channel-multiples", **study, "model": args.model, "machine": info,
                   "note": args.note, "settings": settings}
        results["machine"]["loadavg_end"] = list(os.getloadavg())
    tables = [mlp_matmul_markdown(results["matmuls"])]
    if results.get("runs"):
        tables.append(channel_multiple_markdown(results))
    results["table_markdown"] = "\n\n".join(tables)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print("\n" + results["table_markdown"])
    log(f"wrote {out}")


# ---- peak memory (subprocess per model) ----------------------------------------------------------------------
def memory_child(args) -> None:
    """Run in a fresh process: load one model, reset the RSS high-water mark, generate once, report JSON."""
    torch.set_num_threads(args.threads)
    from hf_prune.modeling import PrunedQwen2ForCausalLM
    from transformers import Qwen2ForCausalLM

    gc.collect()
    rss_before = status_kb("VmRSS")
    cls = PrunedQwen2ForCausalLM if args.child_pruned else Qwen2ForCausalLM
    model = cls.from_pretrained(args.child_folder, dtype=DTYPES[args.child_dtype]).eval()
    # Make every weight resident in anonymous memory, as in the timed runs (from_pretrained maps the file
    # lazily: embedding rows never looked up would otherwise never count).
    with torch.no_grad():
        for param in model.parameters():
            param.data = param.data.clone()
    gc.collect()
    rss_loaded = status_kb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    input_ids = torch.load(args.child_inputs)
    timed_generate(model, input_ids, 8)
    peak = status_kb("VmHWM")
    print(json.dumps({"rss_before_load_mb": rss_before / 1024, "rss_loaded_mb": rss_loaded / 1024,
                      "peak_rss_mb": peak / 1024, "weights_mb": param_counts(model)["bytes"] / 2**20}))


def measure_memory(folder: Path, pruned: bool, dtype: str, inputs: Path, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child-folder", str(folder), "--child-dtype", dtype,
           "--child-inputs", str(inputs), "--threads", str(threads)] + (["--child-pruned"] if pruned else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"memory subprocess failed:\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["peak_minus_baseline_mb"] = res["peak_rss_mb"] - res["rss_before_load_mb"]
    res["inference_delta_mb"] = res["peak_rss_mb"] - res["rss_loaded_mb"]  # activations + KV cache + logits
    return res


# ---- reporting ---------------------------------------------------------------------------------------------------
def machine_info(threads: int) -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {
        "cpu_model": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_start": list(os.getloadavg()),
    }


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [
        f"Model: {results['model']['name']}; prompt {s['prompt_len']} tokens, {s['new_tokens']} new tokens "
        f"(greedy, KV cache), {s['threads']} threads, median of {s['rounds']} interleaved rounds.",
        "",
        "| dtype | batch | model | prefill tok/s | decode tok/s | prefill speed-up | decode speed-up "
        "| prefill FLOP ratio | prefill: % of limit | decode FLOP ratio | decode: % of limit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, row in results["runs"].items():
        dtype, batch = key.split("/b")
        for name in ("dense", "keep_all", "pruned"):
            r = row[name]
            if name == "dense":
                extra = "| 1 | 1 | | | |"
            elif name == "keep_all":
                extra = f"| {r['prefill_ratio']:.3f} | {r['decode_ratio']:.3f} | 1 | | 1 | |"
            else:
                f = row["flop_ratio"]
                extra = (f"| {r['prefill_ratio']:.2f} | {r['decode_ratio']:.2f} | {f['prefill']:.2f} "
                         f"| {100 * r['prefill_ratio'] / f['prefill']:.0f}% | {f['decode']:.2f} "
                         f"| {100 * r['decode_ratio'] / f['decode']:.0f}% |")
            lines.append(f"| {dtype} | {batch} | {name} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.2f} {extra}")
    prof = results.get("prefill_profile")
    if prof:
        lines += [
            "",
            f"Where prefill time goes ({prof['dtype']}, batch {prof['batch']}, torch.profiler self CPU time, ms):",
            "",
            "| model | matmul (linear) | attention (SDPA) | other ops (norms, RoPE, SiLU, adds...) | total |",
            "|---|---|---|---|---|",
            *(f"| {n} | {prof[n]['matmul']:.0f} | {prof[n]['attention']:.0f} | {prof[n]['other']:.0f} "
              f"| {prof[n]['total']:.0f} |" for n in ("dense", "pruned")),
            f"| dense/pruned | {prof['ratio']['matmul']:.2f} | {prof['ratio']['attention']:.2f} "
            f"| {prof['ratio']['other']:.2f} | {prof['ratio']['total']:.2f} |",
        ]
    mem = results.get("memory")
    if mem:
        d, p = mem["dense"], mem["pruned"]
        lines += [
            "",
            f"Peak memory ({mem['dtype']}, batch {mem['batch']}, prompt {s['prompt_len']} + 8 new tokens, fresh "
            "process per model; peak RSS minus RSS before loading the model):",
            "",
            "| model | parameter MB | RSS after load MB | peak MB (weights+activations+KV) | peak during generate MB |",
            "|---|---|---|---|---|",
            *(f"| {n} | {m['weights_mb']:.0f} | {m['rss_loaded_mb'] - m['rss_before_load_mb']:.0f} "
              f"| {m['peak_minus_baseline_mb']:.0f} | {m['inference_delta_mb']:.0f} |" for n, m in (("dense", d), ("pruned", p))),
            f"| ratio dense/pruned | {d['weights_mb'] / p['weights_mb']:.2f} | "
            f"| {d['peak_minus_baseline_mb'] / p['peak_minus_baseline_mb']:.2f} | |",
        ]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=["qwen-coder-0.5b", "smollm2"], default="qwen-coder-0.5b")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float32", "bfloat16"])
    parser.add_argument("--bf16-batches", type=int, nargs="+", default=[1],
                        help="batches run in bfloat16 (default: 1 only, to keep a run under ~8 minutes)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--note", default="", help="free text stored in the JSON (e.g. machine load)")
    parser.add_argument("--channel-multiples", type=int, nargs="+", default=None,
                        help="instead: prefill/decode cost of MLP widths rounded to each multiple (e.g. 1 64 128)")
    parser.add_argument("--matmul-tokens", type=int, nargs="+", default=[256, 1024],
                        help="--channel-multiples: tokens of the MLP matmul timing (default: 256 1024)")
    parser.add_argument("--matmul-repeats", type=int, default=7,
                        help="--channel-multiples: timed passes of the MLP matmuls (the fastest counts)")
    parser.add_argument("--matmuls-only", action="store_true",
                        help="--channel-multiples: only the MLP matmul timing, added to the JSON at --out (its model "
                             "rounds are kept)")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: benchmarks/results/format.json (format_channel_multiple.json with "
                             "--channel-multiples)")
    parser.add_argument("--child-folder", help=argparse.SUPPRESS)
    parser.add_argument("--child-dtype", help=argparse.SUPPRESS)
    parser.add_argument("--child-inputs", help=argparse.SUPPRESS)
    parser.add_argument("--child-pruned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_folder:
        memory_child(args)
        return

    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    def log(msg):
        print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)

    info = machine_info(args.threads)
    log(f"settings: {vars(args)}; torch.set_num_threads({args.threads}); {info['cpu_model']}")
    base, tokenizer = load_model("qwen" if args.model == "qwen-coder-0.5b" else "smollm2", torch.float32)
    if args.channel_multiples:
        write_channel_multiple(base, tokenizer, args, info, log)
        return
    plan = heterogeneous_plan(base)
    models32 = {
        # from_pretrained leaves the weights memory-mapped from the safetensors file, 32-byte aligned; apply_plan's
        # copies are fresh 64-byte aligned allocations (measured ~2% faster prefill). Copy the dense model too,
        # so that every model holds its weights the same way and only the model class / sizes differ.
        "dense": copy.deepcopy(base),
        "keep_all": apply_plan(base, PruningPlan.keep_all(layer_shapes(base))),
        "pruned": apply_plan(base, plan),
    }
    del base
    pc = {n: param_counts(m) for n, m in models32.items()}
    removed = 1 - pc["pruned"]["decoder_layers"] / pc["dense"]["decoder_layers"]
    shapes = [(s.num_attention_heads, s.num_key_value_heads, s.intermediate_size) for s in layer_shapes(models32["pruned"])]
    log(f"pruned: {100 * removed:.1f}% of decoder-layer parameters removed, "
        f"{pc['pruned']['total'] / 1e6:.0f}M of {pc['dense']['total'] / 1e6:.0f}M parameters left; "
        f"layer shapes (heads, kv, mlp): {shapes}")

    results = {
        "benchmark": "bench_format",
        "model": {"name": args.model, "params": pc, "decoder_params_removed": removed, "pruned_layer_shapes": shapes},
        "settings": {
            "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "batches": args.batches,
            "dtypes": args.dtypes, "bf16_batches": args.bf16_batches, "rounds": args.rounds, "threads": args.threads,
            "torch.set_num_threads": args.threads,
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY"),
            "method": "greedy generate with KV cache, min_new_tokens=max_new_tokens; one untimed warm-up per model "
                      "and setting; rounds interleave dense/keep_all/pruned in alternating order; prefill = prompt "
                      "-> first new token (streamer timestamps), decode = first -> last new token; tok/s are "
                      "medians over rounds, speed-ups are medians of per-round time ratios (dense time / model time)",
            "flops": "matmul FLOPs: q/k/v/o + gate/up/down projections per token, causal attention scores "
                     "(QK^T and AV over T(T+1)/2 pairs per head), lm_head for the last prompt position in prefill "
                     "and for every decoded token",
        },
        "machine": info,
        "note": args.note,
        "runs": {},
    }

    for dtype_name in args.dtypes:
        # Module.to() converts in place: convert copies, the float32 models are still needed (peak memory).
        models = models32 if dtype_name == "float32" else {
            n: copy.deepcopy(m).to(DTYPES[dtype_name]) for n, m in models32.items()
        }
        for batch in args.batches if dtype_name == "float32" else args.bf16_batches:
            input_ids = prompts(tokenizer, batch, args.prompt_len)
            log(f"{dtype_name} batch {batch}: {args.rounds} rounds")
            row = bench_setting(models, input_ids, args.new_tokens, args.rounds, log)
            fd = model_flops(models["dense"], batch, args.prompt_len, args.new_tokens)
            fp = model_flops(models["pruned"], batch, args.prompt_len, args.new_tokens)
            row["flops"] = {"dense": fd, "pruned": fp}
            row["flop_ratio"] = {"prefill": fd["prefill"] / fp["prefill"], "decode": fd["decode_step"] / fp["decode_step"]}
            # Weights read per decode step (all but the embedding table): the memory-bandwidth limit of decode.
            row["decode_weight_bytes_ratio"] = _streamed_bytes(models["dense"]) / _streamed_bytes(models["pruned"])
            row["prefill_fraction_of_limit"] = row["pruned"]["prefill_ratio"] / row["flop_ratio"]["prefill"]
            row["decode_fraction_of_limit"] = row["pruned"]["decode_ratio"] / row["flop_ratio"]["decode"]
            results["runs"][f"{dtype_name}/b{batch}"] = row
            log(f"  keep_all/dense speed: prefill {row['keep_all']['prefill_ratio']:.3f}, decode "
                f"{row['keep_all']['decode_ratio']:.3f}; pruned speed-up: prefill {row['pruned']['prefill_ratio']:.2f} "
                f"(FLOP ratio {row['flop_ratio']['prefill']:.2f}), decode {row['pruned']['decode_ratio']:.2f} "
                f"(FLOP ratio {row['flop_ratio']['decode']:.2f})")
        if dtype_name == "float32":
            input_ids = prompts(tokenizer, 1, args.prompt_len)
            results["prefill_profile"] = {"dtype": dtype_name, "batch": 1, **profile_prefill(models, input_ids)}
            pr = results["prefill_profile"]["ratio"]
            log(f"  prefill profile (dense/pruned self CPU time): matmul {pr['matmul']:.2f}, attention "
                f"{pr['attention']:.2f}, other ops {pr['other']:.2f}, total {pr['total']:.2f}")
        if models is not models32:
            models = None  # free the bfloat16 copies
            gc.collect()

    if not args.no_memory:
        batch = max(args.batches)
        log(f"peak memory: float32, batch {batch}, one subprocess per model")
        with tempfile.TemporaryDirectory(prefix="bench_format-") as tmp:
            inputs = Path(tmp) / "inputs.pt"
            torch.save(prompts(tokenizer, batch, args.prompt_len), inputs)
            pruned_dir = Path(tmp) / "pruned"
            models32["pruned"].save_pretrained(pruned_dir)
            dense_dir = Path(tmp) / "dense"
            models32["dense"].save_pretrained(dense_dir)
            del models32
            models = None
            gc.collect()
            results["memory"] = {
                "dtype": "float32", "batch": batch, "new_tokens": 8,
                "method": "fresh subprocess per model; VmRSS before from_pretrained and after (weights copied into "
                          "anonymous memory so that all are resident); VmHWM reset (/proc/self/clear_refs=5) after "
                          "loading, read after one generate; inference_delta = peak - RSS after load; "
                          "peak_minus_baseline = peak RSS - RSS before loading (weights + activations + KV cache)",
                "dense": measure_memory(dense_dir, False, "float32", inputs, args.threads),
                "pruned": measure_memory(pruned_dir, True, "float32", inputs, args.threads),
            }

    results["machine"]["loadavg_end"] = list(os.getloadavg())
    results["wall_s"] = time.perf_counter() - start
    table = markdown(results)
    results["table_markdown"] = table
    out = args.out or RESULTS
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print()
    print(table)
    log(f"wrote {out}")


if __name__ == "__main__":
    main()
