"""The sections of the GPU benchmark, one function each: ``section(bench, out)`` fills ``out`` as it goes (a section
stopped part-way keeps what it measured). The order, the budget and the output are ``gpu_bench.py``'s.

Every piece is the project's own or an existing benchmark's: the random-weight model at a real shape and the
Taylor scoring round of ``bench_scale.py``, the interleaved generate timing and FLOP counts of ``bench_format.py``,
the student throughput of ``bench_recovery.py``, and ``hf_prune.memory_plan`` / ``compensate`` / ``apply_plan``.
"""

from __future__ import annotations

import argparse
import gc
import time
from dataclasses import dataclass, field

import bench_scale
import torch
from bench_format import _streamed_bytes, bench_setting, model_flops, timed_generate
from bench_recovery import throughput
from shapes import plan_like_gisp, removed_fraction

import hf_prune
from hf_prune import PruneConfig, PruningPlan, apply_plan
from hf_prune.engine.schedule import get_schedule
from hf_prune.format.geometry import layer_shapes


@dataclass
class Settings:
    """What the sections measure; the defaults are the GPU run's (:func:`smoke_settings`: the CPU smoke test's)."""

    device: str = "cuda:0"
    dtype: str = "bfloat16"
    shape: str = "qwen2.5-7b"
    large_shape: str = "qwen2.5-14b"
    levels: tuple[float, ...] = (0.2, 0.3, 0.5)
    multiples: tuple[int, ...] = (1, 64, 128)
    prefill: tuple[tuple[int, int], ...] = ((1, 2048), (8, 512))
    prefill_rounds: int = 5
    decode_batches: tuple[int, ...] = (1, 32)
    decode_prompt: int = 512
    new_tokens: int = 256
    decode_rounds: int = 1
    recovery_runs: tuple[str, ...] = ("kd", "lm")
    recovery_level: float = 0.5
    recovery_seq_len: int = 512
    recovery_batch: int = 4
    recovery_steps: int = 3
    #: the pruning run's settings (scoring windows, compensation windows): PruneConfig's defaults, or these overrides
    prune_overrides: dict = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.startswith("cuda")

    def prune_config(self) -> PruneConfig:
        return PruneConfig(**self.prune_overrides)

    @property
    def multiple(self) -> int:
        """The kept-width multiple of the sections that use one: the library's default ``channel_multiple`` for the
        benchmark's model shape."""
        return self.prune_config().channel_multiple_for([bench_scale.config_of(self.shape)["intermediate_size"]])


def smoke_settings() -> Settings:
    """A tiny Qwen2 on CPU: every section runs in seconds, nothing is timed seriously."""
    return Settings(device="cpu", shape="smoke", large_shape="smoke", prefill=((1, 64), (2, 32)), prefill_rounds=1,
                    decode_batches=(1, 2), decode_prompt=16, new_tokens=4, recovery_seq_len=32, recovery_batch=2,
                    recovery_steps=1, prune_overrides={"num_samples": 4, "seq_len": 32, "batch_size": 2,
                                                       "compensation_samples": 4})


def release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Bench:
    """The settings, the log, the time budget, and the one dense model held at a time."""

    def __init__(self, settings: Settings, log, budget, save, context_bytes: int = 0) -> None:
        self.s, self.log, self.budget, self.save = settings, log, budget, save
        self.devices = [settings.device]
        self.context_bytes = context_bytes  # what the CUDA context holds outside torch's allocator
        self._model = self._shape = None

    def dense(self, shape: str):
        """The random-weight dense model of ``shape`` (built once; building another frees it)."""
        if self._shape != shape:
            self._model = self._shape = None
            release()
            t0 = time.perf_counter()
            self._model = bench_scale.build(shape, self.devices, getattr(torch, self.s.dtype))
            self._model.set_attn_implementation("sdpa")
            self._shape = shape
            self.log(f"built {shape} ({sum(p.numel() for p in self._model.parameters()) / 1e9:.2f} B parameters, "
                     f"{self.s.dtype}) in {time.perf_counter() - t0:.1f}s")
        return self._model

    def capacity(self) -> int | None:
        return torch.cuda.get_device_properties(self.s.device).total_memory if self.s.cuda else None

    def plan(self, shape: str, config: PruneConfig):
        return hf_prune.memory_plan(bench_scale.config_of(shape, self.s.dtype), config,
                                    devices=[(self.s.device, self.capacity())])

    def tokens(self, vocab: int, batch: int, length: int, seed: int = 0) -> torch.Tensor:
        ids = torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))
        return ids.to(self.s.device)

    def reset_peak(self) -> None:
        bench_scale._sync(self.devices)
        bench_scale._reset(self.devices)

    def peak(self, planned: int) -> dict:
        """Measured peak next to ``planned`` (the plan's total, which includes its CUDA runtime allowance)."""
        out = {"planned_bytes": planned}
        if not self.s.cuda:
            return {**out, "measured": "not measured (CPU)"}
        bench_scale._sync(self.devices)
        allocated = torch.cuda.max_memory_allocated(self.s.device)
        process = torch.cuda.max_memory_reserved(self.s.device) + self.context_bytes
        return {**out, "allocated_bytes": allocated, "process_bytes": process, "context_bytes": self.context_bytes,
                "plan_over_process": planned / process}

    def estimate(self, times: list[float], first: float) -> float:
        """Seconds the next item of a loop will take: the slowest so far (+20%), or ``first``."""
        return 1.2 * max(times) if times else first


# ---- sections, in the order of their value ---------------------------------------------------------------------
def scoring(bench: Bench, out: dict) -> None:
    """One Taylor scoring round (gisp's criterion) on the dense model and one on a later round's sliced copy (the
    dense model kept): seconds, tokens/s, peak memory next to the memory plan."""
    s, config = bench.s, bench.s.prune_config()
    plan = bench.plan(s.shape, config)
    model = bench.dense(s.shape)
    out["config"] = {k: getattr(config, k) for k in ("num_samples", "seq_len", "batch_size")}
    batches = bench_scale._batches(model.config.vocab_size, config.num_samples, config.seq_len, config.batch_size,
                                   s.device)
    tokens = config.num_samples * config.seq_len
    with torch.no_grad():  # one-time initialisation (kernels, cuBLAS handles) outside the timed round
        model(input_ids=batches[0]["input_ids"][:1, :64], use_cache=False)
    seconds, _ = bench_scale.scoring_round(model, batches, bench.devices, gradient_checkpointing=False)
    out["round_1"] = {"seconds": seconds, "tokens_per_second": tokens / seconds,
                      **bench.peak(plan.stage_total("scoring, round 1"))}
    bench.log(f"scoring round 1: {seconds:.1f}s ({tokens / seconds:,.0f} tokens/s)")
    bench.save()
    resolved = config.resolved()
    if resolved.steps > 1:  # later rounds score a copy sliced to the first round's sparsity, the dense model kept
        first = get_schedule(resolved.schedule)(list(resolved.target_sparsity), resolved.steps)[0]
        sliced = apply_plan(model, plan_like_gisp(model, first, 1))
        seconds, _ = bench_scale.scoring_round(sliced, batches, bench.devices, gradient_checkpointing=False)
        out["later_round"] = {"sparsity": first, "seconds": seconds, "tokens_per_second": tokens / seconds,
                              **bench.peak(plan.stage_total("scoring, later rounds"))}
        bench.log(f"scoring, a later round ({first:.1%} removed, dense kept): {seconds:.1f}s")
        del sliced
    release()


def _prefill_row(bench: Bench, model, name: str, pruned) -> dict:
    """Prefill of ``pruned`` against dense, interleaved, for every (batch, length): speed-up and FLOP limit."""
    row = {"removed": removed_fraction(model, pruned), "mlp_widths": [l.intermediate_size for l in layer_shapes(pruned)],
           "kv_heads": [l.num_key_value_heads for l in layer_shapes(pruned)], "settings": {}}
    for batch, length in bench.s.prefill:
        ids = bench.tokens(model.config.vocab_size, batch, length)
        timed = bench_setting({"dense": model, name: pruned}, ids, 2, bench.s.prefill_rounds, lambda m: None)
        limit = model_flops(model, batch, length, 2)["prefill"] / model_flops(pruned, batch, length, 2)["prefill"]
        speedup = timed[name]["prefill_ratio"]
        row["settings"][f"{batch}x{length}"] = {
            "dense_tok_s": timed["dense"]["prefill_tok_s"], "tok_s": timed[name]["prefill_tok_s"],
            "speedup": speedup, "flop_ratio": limit, "fraction_of_limit": speedup / limit}
    return row


def _prefill_rows(bench: Bench, model, variants: dict[str, PruningPlan], out: dict, first_estimate: float) -> None:
    times: list[float] = []
    for name, plan in variants.items():
        if not bench.budget.allows(bench.estimate(times, first_estimate)):
            out.setdefault("skipped", []).append(name)
            continue
        t0 = time.perf_counter()
        pruned = apply_plan(model, plan).eval()
        out[name] = _prefill_row(bench, model, name, pruned)
        del pruned
        release()
        times.append(time.perf_counter() - t0)
        bench.log(f"prefill {name}: " + ", ".join(f"{k} {v['speedup']:.2f}x of {v['flop_ratio']:.2f}x"
                                                  for k, v in out[name]["settings"].items()))
        bench.save()


def prefill(bench: Bench, out: dict) -> None:
    """Dense vs pruned prefill (SDPA, one generate step), every level x kept-width multiple, the KV-group variant
    at the default multiple, and the keep-all pruned model (the format's own cost)."""
    s = bench.s
    model = bench.dense(s.shape)
    variants = {"keep_all": PruningPlan.keep_all(layer_shapes(model))}
    variants.update({f"{lvl:.0%}/m{m}": plan_like_gisp(model, lvl, m) for lvl in s.levels for m in s.multiples})
    variants.update({f"{lvl:.0%}/m{s.multiple}/kv": plan_like_gisp(model, lvl, s.multiple, drop_kv=True)
                     for lvl in s.levels})
    _prefill_rows(bench, model, variants, out, first_estimate=10.0)


def compensation(bench: Bench, out: dict) -> None:
    """``hf_prune.compensate`` of the first default level (what the memory plan's compensation stage prices)."""
    s, config = bench.s, bench.s.prune_config()
    model = bench.dense(s.shape)
    level = config.target_sparsity[0]
    plan = plan_like_gisp(model, level, s.multiple)
    windows = bench.tokens(model.config.vocab_size, config.compensation_samples, config.seq_len, seed=1)
    planned = bench.plan(s.shape, config).stage_total("compensation")
    bench.reset_peak()
    t0 = time.perf_counter()
    refit = hf_prune.compensate(model, plan, windows, config=config, show_progress=False)
    bench_scale._sync(bench.devices)
    seconds = time.perf_counter() - t0
    out.update(level=level, windows=f"{config.compensation_samples} x {config.seq_len}", seconds=seconds,
               **bench.peak(planned))
    bench.log(f"compensation of the {level:.0%} level: {seconds:.1f}s")
    del refit
    release()


def _cache_kwargs(models: dict, ids: torch.Tensor) -> dict:
    """A static cache (eager: no auto-compile) where every model takes one, else the default dynamic cache."""
    static = {"cache_implementation": "static", "disable_compile": True}
    try:
        for model in models.values():
            timed_generate(model, ids[:, :8], 2, **static)
        return static
    except Exception:  # noqa: BLE001 - whatever refuses it, the dynamic cache is the fallback for every model
        return {}


def decode(bench: Bench, out: dict) -> None:
    """Greedy generate of ``new_tokens`` at every decode batch: dense, keep-all and each level at the default
    multiple, interleaved; decode speed-ups next to the FLOP and weight-bytes ratios."""
    s = bench.s
    model = bench.dense(s.shape)
    models = {"dense": model, "keep_all": apply_plan(model, PruningPlan.keep_all(layer_shapes(model))).eval()}
    models.update({f"{lvl:.0%}": apply_plan(model, plan_like_gisp(model, lvl, s.multiple)).eval() for lvl in s.levels})
    kwargs = _cache_kwargs(models, bench.tokens(model.config.vocab_size, 1, 16))
    out.update(cache="static" if kwargs else "dynamic", multiple=s.multiple, prompt=s.decode_prompt,
               new_tokens=s.new_tokens, batches={})
    times: list[float] = []
    for batch in s.decode_batches:
        if not bench.budget.allows(bench.estimate(times, 60.0)):
            out.setdefault("skipped", []).append(batch)
            continue
        t0 = time.perf_counter()
        ids = bench.tokens(model.config.vocab_size, batch, s.decode_prompt, seed=2)
        timed = bench_setting(models, ids, s.new_tokens, s.decode_rounds, bench.log, **kwargs)
        dense_step = model_flops(model, batch, s.decode_prompt, s.new_tokens)["decode_step"]
        rows = {"dense": {"tok_s": timed["dense"]["decode_tok_s"]}}
        for name in list(models)[1:]:
            rows[name] = {"tok_s": timed[name]["decode_tok_s"], "speedup": timed[name]["decode_ratio"],
                          "flop_ratio": dense_step / model_flops(models[name], batch, s.decode_prompt,
                                                                 s.new_tokens)["decode_step"],
                          "weight_bytes_ratio": _streamed_bytes(model) / _streamed_bytes(models[name])}
        out["batches"][str(batch)] = rows
        times.append(time.perf_counter() - t0)
        bench.log(f"decode batch {batch} ({out['cache']} cache): " + ", ".join(
            f"{n} {r['tok_s']:.0f} tok/s" for n, r in rows.items()))
        bench.save()
    del models
    release()


def recovery(bench: Bench, out: dict) -> None:
    """Full-parameter recovery steps (KD with the dense teacher, plain LM) of the ``recovery_level`` model:
    student tokens/s after one warm-up step (``bench_recovery.throughput``)."""
    s = bench.s
    model = bench.dense(s.shape)
    plan = plan_like_gisp(model, s.recovery_level, s.multiple)
    args = argparse.Namespace(throughput_steps=s.recovery_steps, train_seq_len=s.recovery_seq_len,
                              batch_size=s.recovery_batch, seed=0, lr=1e-4, lora_lr=1e-3)
    windows = bench.tokens(model.config.vocab_size, (s.recovery_steps + 1) * s.recovery_batch, s.recovery_seq_len,
                           seed=3).cpu()

    def fresh():
        release()  # the previous student and its optimizer state go before the next is sliced
        return apply_plan(model, plan)

    bench.reset_peak()
    result = throughput(model, None, None, windows, list(s.recovery_runs), args, fresh=fresh)
    out.update(level=s.recovery_level, batch=f"{s.recovery_batch} x {s.recovery_seq_len}", steps=s.recovery_steps,
               tokens_per_second=result["tokens_per_second"], ratio_to_lm=result["ratio_to_lm"])
    if s.cuda:
        out["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(s.device)
    release()


def large(bench: Bench, out: dict) -> None:
    """The larger shape: prefill of 30% and 50% at the default multiple against dense; a scoring round where the
    memory plan says it fits this device."""
    s, config = bench.s, bench.s.prune_config()
    plan = bench.plan(s.large_shape, config)
    model = bench.dense(s.large_shape)
    out["shape"] = s.large_shape
    variants = {f"{lvl:.0%}/m{s.multiple}": plan_like_gisp(model, lvl, s.multiple) for lvl in s.levels if lvl >= 0.3}
    _prefill_rows(bench, model, variants, out.setdefault("prefill", {}), first_estimate=20.0)
    planned = plan.stage_total("scoring, round 1")
    capacity = bench.capacity()
    if capacity is not None and planned > capacity:
        out["scoring"] = f"not run: the memory plan needs {planned / 2**30:.1f} GiB, the device has {capacity / 2**30:.1f}"
        return
    if not bench.budget.allows(60.0):
        out["scoring"] = "skipped: time budget"
        return
    batches = bench_scale._batches(model.config.vocab_size, config.num_samples, config.seq_len, config.batch_size,
                                   s.device)
    seconds, _ = bench_scale.scoring_round(model, batches, bench.devices, gradient_checkpointing=False)
    out["scoring"] = {"seconds": seconds, **bench.peak(planned)}
    bench.log(f"{s.large_shape} scoring round 1: {seconds:.1f}s")


def compiled_decode(bench: Bench, out: dict) -> None:
    """Batch-1 decode with transformers' static cache and its automatic ``torch.compile`` (CUDA graphs): dense vs
    the 50% model at the default multiple; the first generate compiles (its seconds are recorded)."""
    s = bench.s
    model = bench.dense(s.shape)
    level = max(s.levels)
    pruned = apply_plan(model, plan_like_gisp(model, level, s.multiple)).eval()
    ids = bench.tokens(model.config.vocab_size, 1, s.decode_prompt, seed=2)
    times: list[float] = []
    for name, m in (("dense", model), (f"{level:.0%}", pruned)):
        if not bench.budget.allows(bench.estimate(times, 0.0)):  # the second model compiles again
            out.setdefault("skipped", []).append(name)
            break
        t0 = time.perf_counter()
        timed_generate(m, ids, s.new_tokens, cache_implementation="static")  # compiles
        compile_s = time.perf_counter() - t0
        _, decode_s = timed_generate(m, ids, s.new_tokens, cache_implementation="static")
        out[name] = {"first_generate_seconds": compile_s, "tok_s": (s.new_tokens - 1) / decode_s}
        times.append(time.perf_counter() - t0)
        bench.log(f"compiled decode {name}: {out[name]['tok_s']:.0f} tok/s (first generate {compile_s:.0f}s)")
        bench.save()
    if f"{level:.0%}" in out:
        out["speedup"] = out[f"{level:.0%}"]["tok_s"] / out["dense"]["tok_s"]
    del pruned
    release()


#: (name, function, seconds it is expected to need on one H100): the order is the order of value.
SECTIONS = [("scoring", scoring, 40), ("prefill", prefill, 60), ("compensation", compensation, 60),
            ("decode", decode, 90), ("recovery", recovery, 45), ("large", large, 60),
            ("compiled_decode", compiled_decode, 150)]
