"""The memory plan: the bytes a pruning run needs on each device, from the model's config alone.

:func:`memory_plan` reads sizes from a ``config.json`` (a mapping, a transformers config, a folder) or a loaded
model and adds up, per device, what each stage of a run holds at its peak:

- **scoring** (first round, on the dense model): the weights in their dtype; the fp32 score buffers of every
  prunable projection (the accumulated gradient; weight gradients in bf16/fp16 are added into them as each one
  is produced and freed); the activations the backward pass keeps for ``batch_size x seq_len`` tokens (every
  decoder layer's, or with gradient checkpointing each layer's input plus one layer recomputed); the logits
  stage (the fp32 log-softmax kept for backward, its gradient and the logits' gradient, ``vocab`` floats each
  per token); and a backward workspace of one layer's activations;
- **scoring, later rounds** (``steps > 1``): later rounds score a sliced copy while the dense model is kept,
  so the dense weights come on top of the first round's copy and its buffers;
- **compensation**: the dense weights and the level's copy, the hidden states of every compensation window
  (kept between layers), the largest Gram matrix ``X^T X`` (fp32) and the refit's temporaries (about three more
  matrices of that size; with ``compensation_damping="auto"`` one more per cross-validation fold), and one batch
  through one layer.

The counts are tensors, not the process: the runtime (CUDA context, libraries) is listed as a fixed
overhead per device. Imports neither torch nor transformers unless devices must be asked for their memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..config import COMPENSATION_MAX_FOLDS, PruneConfig
from ..errors import InsufficientMemoryError, PruningError
from ..format.geometry import ModelGeometry, config_mapping
from ..markdown import table
from ..options import parse_bytes
from .schedule import get_schedule
from .targets import resolve_targets

__all__ = ["ModelDims", "MemoryPlan", "DevicePlan", "memory_plan", "parse_size", "check_fits", "format_bytes",
           "device_capacities", "fit_options", "plan_for_devices", "split_layers"]

GiB = 2**30
_DTYPE_BYTES = {"float32": 4, "float": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "half": 2,
                "float64": 8}
#: What a device holds besides the tensors counted here: the CUDA context and kernels (about 1 GiB on recent GPUs).
CUDA_OVERHEAD = GiB


def format_bytes(n: float) -> str:
    """``1.5 GiB``, ``312 MiB``: binary units, as accelerate's ``max_memory`` takes them."""
    return f"{n / GiB:.1f} GiB" if abs(n) >= GiB else f"{n / 2**20:.0f} MiB"


def parse_size(value: int | float | str) -> int:
    """Bytes of ``"75GiB"``, ``"80GB"``, ``"512MiB"`` or a number (bytes) (:func:`hf_prune.options.parse_bytes`)."""
    try:
        return parse_bytes(value)
    except ValueError as err:
        raise PruningError(f"{err}.") from None


# ---- the model's sizes ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelDims:
    """The sizes that decide memory: the model's :class:`~hf_prune.format.geometry.ModelGeometry` (which counts
    its parameters) and the dtype its weights are loaded in."""

    geometry: ModelGeometry
    dtype: str

    @property
    def dtype_bytes(self) -> int:
        return _DTYPE_BYTES[self.dtype]

    @property
    def hidden_size(self) -> int:
        return self.geometry.hidden_size

    @property
    def head_dim(self) -> int:
        return self.geometry.head_dim

    @property
    def vocab_size(self) -> int:
        return self.geometry.vocab_size

    @property
    def layers(self) -> tuple[tuple[int, int, int], ...]:
        """Per layer ``(query heads, KV heads, MLP width)``, 0 for a removed sublayer."""
        return tuple((s.num_attention_heads, s.num_key_value_heads, s.intermediate_size) for s in self.geometry.shapes)

    @classmethod
    def from_config(cls, config: Any, dtype: str | None = None) -> ModelDims:
        """From a ``config.json`` mapping, a transformers config, or a folder / file holding ``config.json``."""
        mapping = config_mapping(config)
        text = mapping.get("text_config") or mapping
        name = dtype if dtype not in (None, "auto") else (text.get("dtype") or text.get("torch_dtype") or "float32")
        name = str(name).replace("torch.", "")
        if name not in _DTYPE_BYTES:
            raise PruningError(f"unknown dtype {name!r} for the memory plan; use float32, bfloat16 or float16.")
        return cls(ModelGeometry.from_config(mapping), name)

    @classmethod
    def from_model(cls, model: Any) -> ModelDims:
        """From a loaded model: its config's sizes (the layers as built) and its parameters' dtype."""
        from ..format.geometry import head_dim_of, layer_shapes

        dims = cls.from_config(model.config, str(next(model.parameters()).dtype))
        geometry = replace(dims.geometry, shapes=tuple(layer_shapes(model)), head_dim=head_dim_of(model.config))
        return replace(dims, geometry=geometry)

    # ---- parameter counts ----
    def layer_params(self, index: int, keep: float = 1.0) -> int:
        """Parameters of decoder layer ``index`` (``keep``: the fraction of its prunable parameters left)."""
        s = self.geometry.shapes[index]
        return self.layer_prunable(index, keep) + self.geometry.layer_norm_params(s.num_attention_heads,
                                                                                   s.intermediate_size)

    def layer_prunable(self, index: int, keep: float = 1.0) -> int:
        """Parameters of layer ``index``'s projections (the weights that get score buffers)."""
        s = self.geometry.shapes[index]
        return int(keep * self.geometry.projection_params(s.num_attention_heads, s.num_key_value_heads,
                                                         s.intermediate_size))

    @property
    def embedding_params(self) -> int:
        return self.geometry.embedding_params

    @property
    def head_params(self) -> int:
        """Final norm and (untied) lm_head."""
        return self.geometry.head_params

    def total_params(self, keep: float = 1.0) -> int:
        return self.embedding_params + self.head_params + sum(self.layer_params(i, keep) for i in range(len(self.layers)))

    # ---- serving: the weights and the KV cache ----
    @property
    def kv_heads(self) -> int:
        """KV heads of every layer together (the KV cache per token is ``2 x kv_heads x head_dim`` values)."""
        return sum(kv for _, kv, _ in self.layers)

    def kv_cache_bytes(self, context_length: int, batch_size: int = 1) -> int:
        """Bytes of the KV cache of ``batch_size`` sequences of ``context_length`` tokens (keys and values of every KV
        head, in the dtype of the weights: what transformers' cache holds)."""
        return batch_size * context_length * 2 * self.kv_heads * self.head_dim * self.dtype_bytes

    def serving_bytes(self, context_length: int, batch_size: int = 1) -> int:
        """The weights in their dtype plus the KV cache at that context: what ``target_memory`` budgets."""
        return self.total_params() * self.dtype_bytes + self.kv_cache_bytes(context_length, batch_size)

    # ---- activations (bytes per token) ----
    def layer_activations(self, index: int, eager: bool = False, seq_len: int = 0) -> int:
        """Bytes per token one decoder layer keeps for backward (sdpa attention; ``eager`` adds the T x T scores).

        Per RMSNorm: its fp32 input (4 h) and its output in the dtype (saved by the projections). Attention: the
        rotated q and k, v, the sdpa output and its contiguous copy (o_proj's input), and the log-sum-exp. MLP:
        the gate output (SiLU's input), its activation, the up output and their product (down_proj's input).
        """
        heads, kv, inter = self.layers[index]
        b, h, d = self.dtype_bytes, self.hidden_size, self.head_dim
        total = 0
        if heads:
            total += 4 * h + b * h + b * d * (3 * heads + 2 * kv) + 4 * heads
            if eager:
                total += heads * seq_len * (4 + b)
        if inter:
            total += 4 * h + b * h + 4 * b * inter
        return total


# ---- the plan ------------------------------------------------------------------------------------------------
@dataclass
class DevicePlan:
    """One device: its capacity (``None``: unknown) and, per stage, the bytes of each component."""

    name: str
    capacity: int | None
    stages: dict[str, dict[str, int]] = field(default_factory=dict)
    overhead: int = 0

    def total(self, stage: str) -> int:
        return sum(self.stages[stage].values()) + self.overhead

    @property
    def peak(self) -> int:
        return max(self.total(s) for s in self.stages)

    @property
    def peak_stage(self) -> str:
        return max(self.stages, key=self.total)

    @property
    def fits(self) -> bool:
        return self.capacity is None or self.peak <= self.capacity


@dataclass
class MemoryPlan:
    """What a run needs on each device, stage by stage (see the module docstring); ``str()`` is a table."""

    model: ModelDims
    batch_size: int
    seq_len: int
    gradient_checkpointing: bool
    layout: str
    devices: list[DevicePlan]
    world_size: int = 1
    sharing: str = "each holds the whole model"

    @property
    def fits(self) -> bool:
        """Whether every device's peak is within its capacity (unknown capacities count as fitting)."""
        return all(d.fits for d in self.devices)

    @property
    def peak(self) -> int:
        """The largest per-device peak."""
        return max(d.peak for d in self.devices)

    def stage_total(self, stage: str, device: int = 0) -> int:
        return self.devices[device].total(stage)

    def __str__(self) -> str:
        m = self.model
        gc = "on" if self.gradient_checkpointing else "off"
        ranks = f", {self.world_size} processes ({self.sharing})" if self.world_size > 1 else ""
        lines = [f"Memory plan: {m.total_params() / 1e9:.2f} B parameters in {m.dtype}, batch {self.batch_size} x "
                 f"{self.seq_len} tokens, gradient checkpointing {gc}, {self.layout}{ranks}", ""]
        for dev in self.devices:
            stages = list(dev.stages)
            parts = sorted({p for s in stages for p in dev.stages[s]}, key=_ORDER.index)
            rows = [[part] + [format_bytes(dev.stages[s][part]) if part in dev.stages[s] else "" for s in stages]
                    for part in parts]
            if dev.overhead:
                rows.append(["runtime (CUDA context)"] + [format_bytes(dev.overhead)] * len(stages))
            rows.append(["**total**"] + [f"**{format_bytes(dev.total(s))}**" for s in stages])
            lines.append(table([dev.name, *stages], rows, "l" + "r" * len(stages)))
            cap = "unknown" if dev.capacity is None else format_bytes(dev.capacity)
            verdict = "fits" if dev.fits else "DOES NOT FIT"
            lines += [f"peak {format_bytes(dev.peak)} ({dev.peak_stage}) of {cap}: {verdict}", ""]
        return "\n".join(lines).rstrip()


_ORDER = ["weights (dense)", "weights (FSDP2 shard)", "weights (sliced copy)", "score buffers (fp32)",
          "one layer and the root gathered (FSDP2)", "gradients in flight", "activations",
          "logits and loss", "backward workspace", "hidden states kept", "Gram matrix and refit", "one layer forward"]


def _needs_grad(config: PruneConfig) -> bool:
    """Whether the (resolved) criterion runs backward (taylor, fisher, or a callable, which may)."""
    return not isinstance(config.importance, str) or config.importance in ("taylor", "activation-taylor", "fisher")


def _first_round_keep(config: PruneConfig) -> float:
    """Fraction of the prunable parameters the model keeps after the first round (what later rounds score)."""
    points = get_schedule(config.schedule)(list(config.target_sparsity), config.steps)
    return 1.0 - float(points[0])


def split_layers(m: ModelDims, parts: int) -> list[range]:
    """Consecutive layers per device, balancing weights with the embeddings on the first device and the lm_head
    on the last (how accelerate's ``device_map="auto"`` places a model: by weight size, in order)."""
    sizes = [m.embedding_params] + [m.layer_params(i) for i in range(len(m.layers))] + [m.head_params]
    total, bounds, running = sum(sizes), [0], 0
    for i, size in enumerate(sizes[1:-1]):
        running += size if i else size + sizes[0]
        while len(bounds) < parts and running >= total * len(bounds) / parts:
            bounds.append(i + 1)
    bounds += [len(m.layers)] * (parts + 1 - len(bounds))
    return [range(bounds[k], bounds[k + 1]) for k in range(parts)]


def _scoring(m: ModelDims, c: PruneConfig, layers: range, first: bool, last: bool, keep: float,
             dense_kept: bool, eager: bool) -> dict[str, int]:
    """One device's scoring peak: at the start of backward, with every saved activation and the logits stage."""
    tokens, b = c.batch_size * c.seq_len, m.dtype_bytes
    weights = sum(m.layer_params(i) for i in layers) + (m.embedding_params if first else 0) + (m.head_params if last else 0)
    copy = sum(m.layer_params(i, keep) for i in layers) + (m.embedding_params if first else 0) + (m.head_params if last else 0)
    per_layer = [m.layer_activations(i, eager, c.seq_len) for i in layers] or [0]
    if c.gradient_checkpointing and c.importance != "activation-taylor":  # inputs kept, one layer recomputed
        activations = tokens * (len(layers) * m.hidden_size * b + max(per_layer))
    else:
        activations = tokens * sum(per_layer)
    parts = {"weights (dense)": b * weights}
    if dense_kept:
        parts["weights (sliced copy)"] = b * copy
    if c.importance != "activation-taylor":  # that criterion keeps per-column sums only, no weight gradients
        parts["score buffers (fp32)"] = 4 * sum(m.layer_prunable(i, keep) for i in layers)
        if b < 4:  # a layer's weight gradients exist in the dtype until they are added into the buffers
            parts["gradients in flight"] = b * max((m.layer_prunable(i, keep) for i in layers), default=0)
    parts["activations"] = activations
    if last:  # fp32 log-softmax kept for backward, its gradient, the logits' gradient (+ the half-precision one)
        parts["logits and loss"] = tokens * m.vocab_size * (12 + (b if b < 4 else 0))
    parts["backward workspace"] = tokens * (max(per_layer) + 2 * m.hidden_size * b)
    return parts


def _fsdp_scoring(m: ModelDims, parts: dict[str, int], world_size: int, keep: float) -> dict[str, int]:
    """One GPU's scoring peak under FSDP2 (``fsdp=True``), from the whole model's single-device ``parts``.

    Weights and score buffers are ``1 / world_size`` shards; FSDP2 gathers one decoder layer at a time (two with
    its prefetch of the next) and the root's embeddings and lm_head for the whole pass; a layer's gradients exist
    unsharded in the dtype and in fp32 (the reduction's dtype) until they are reduce-scattered. The dense model
    of later rounds stays in host memory (each rank's CPU), so no sliced copy is on the GPU.
    """
    b = m.dtype_bytes
    out = dict(parts)
    out.pop("weights (dense)", None)
    out.pop("weights (sliced copy)", None)
    layer = max((m.layer_params(i, keep) for i in range(len(m.layers))), default=0)
    prunable = max((m.layer_prunable(i, keep) for i in range(len(m.layers))), default=0)
    whole = sum(m.layer_params(i, keep) for i in range(len(m.layers))) + m.embedding_params + m.head_params
    out = {"weights (FSDP2 shard)": math.ceil(b * whole / world_size),
           "one layer and the root gathered (FSDP2)": b * (2 * layer + m.embedding_params + m.head_params), **out}
    out["score buffers (fp32)"] = math.ceil(out.get("score buffers (fp32)", 0) / world_size)
    out["gradients in flight"] = (b + 4) * prunable
    return out


def _forward_only(m: ModelDims, c: PruneConfig, layers: range, first: bool, last: bool, keep: float,
                  dense_kept: bool) -> dict[str, int]:
    tokens, b = c.batch_size * c.seq_len, m.dtype_bytes
    ends = (m.embedding_params if first else 0) + (m.head_params if last else 0)
    parts = {"weights (dense)": b * (sum(m.layer_params(i) for i in layers) + ends)}
    if dense_kept:
        parts["weights (sliced copy)"] = b * (sum(m.layer_params(i, keep) for i in layers) + ends)
    parts["one layer forward"] = tokens * (max((m.layer_activations(i) for i in layers), default=0)
                                           + (m.vocab_size * b if last else 0))
    return parts


def _compensation(m: ModelDims, c: PruneConfig, layers: range, first: bool, last: bool, keep: float,
                  world_size: int = 1) -> dict[str, int]:
    # each data-parallel rank keeps the hidden states of its own share of the windows
    b, tokens = m.dtype_bytes, math.ceil(c.compensation_samples / world_size) * c.seq_len
    ends = (m.embedding_params if first else 0) + (m.head_params if last else 0)
    widest = max((max(heads * m.head_dim, inter) for heads, _, inter in (m.layers[i] for i in layers)), default=0)
    inter = max((m.layers[i][2] for i in layers), default=0)
    return {
        "weights (dense)": b * (sum(m.layer_params(i) for i in layers) + ends),
        "weights (sliced copy)": b * (sum(m.layer_params(i, keep) for i in layers) + ends),
        # hidden states of every window between layers, and each batch's rotary cos/sin
        "hidden states kept": tokens * b * (m.hidden_size + 2 * m.head_dim),
        # X^T X (fp32), and the refit's H[S, :], H[S, S] + lam I and its Cholesky factor; a damping chosen by
        # cross-validation keeps one X^T X per fold besides
        "Gram matrix and refit": 4 * (4 + (COMPENSATION_MAX_FOLDS if c.compensation_damping == "auto" else 0))
                                 * widest**2,
        "one layer forward": c.batch_size * c.seq_len * b * (3 * inter + 4 * m.hidden_size),
    }


def memory_plan(model_or_config: Any, config: PruneConfig | Mapping[str, Any] | None = None, *,
                dtype: str | None = None, devices: Sequence[tuple[str, int | None]] | None = None,
                split: bool | None = None, world_size: int = 1, attn_implementation: str = "sdpa") -> MemoryPlan:
    """The bytes a pruning run with ``config`` needs on each device, from the model's config alone.

    Args:
        model_or_config: a loaded model, a transformers config, a ``config.json`` mapping, or a model folder.
        config: the run's :class:`~hf_prune.PruneConfig` (``batch_size``, ``seq_len``, ``gradient_checkpointing``,
            ``steps``, ``compensation*``).
        dtype: the dtype the weights are loaded in (``None`` / ``"auto"``: the config's, else float32).
        devices: ``(name, capacity in bytes or None)`` per device. Several devices with ``split`` (the default
            for more than one) hold consecutive layers each, as accelerate's ``device_map`` puts them (embeddings
            on the first, lm_head on the last); otherwise each holds the whole model (data parallel).
        world_size: processes of a data-parallel run (each holds the whole model and scores its own windows; with
            ``config.fsdp``, each rank's GPU holds a 1 / world_size shard of the weights and score buffers).
        attn_implementation: ``sdpa`` (default) or ``eager`` (adds the T x T attention scores).

    Returns:
        A :class:`MemoryPlan`; ``str(plan)`` is a table per device, ``plan.fits`` the verdict.
    """
    m = ModelDims.from_model(model_or_config) if hasattr(model_or_config, "parameters") else \
        ModelDims.from_config(model_or_config, dtype)
    c = resolve_targets(PruneConfig.coerce(config).resolved(), m)  # parameter / memory targets: their sparsities
    devs = list(devices) if devices else [("device", None)]  # no devices given: one of unknown capacity
    split = len(devs) > 1 if split is None else split
    layout = f"layers split over {len(devs)} devices" if split else "one device" if len(devs) == 1 else \
        f"{len(devs)} devices, each with the whole model"
    ranges = split_layers(m, len(devs)) if split else [range(len(m.layers))] * len(devs)
    keep, eager = _first_round_keep(c), attn_implementation == "eager"
    level_keep = 1.0 - c.target_sparsity[0]
    plans = []
    for k, ((name, capacity), layers) in enumerate(zip(devs, ranges)):
        first, last = (k == 0, k == len(devs) - 1) if split else (True, True)
        if _needs_grad(c) and c.fsdp and world_size > 1:  # FSDP2: every rank's GPU holds a shard
            stages = {"scoring, round 1": _fsdp_scoring(m, _scoring(m, c, layers, True, True, 1.0, False, eager),
                                                        world_size, 1.0)}
        elif _needs_grad(c):
            stages = {"scoring, round 1": _scoring(m, c, layers, first, last, 1.0, False, eager)}
            if c.steps > 1:
                stages["scoring, later rounds"] = _scoring(m, c, layers, first, last, keep, True, eager)
        else:  # forward passes only: the weights, and one layer's outputs and the logits at a time
            stages = {"scoring (forward only)": _forward_only(m, c, layers, first, last, keep, c.steps > 1)}
        if c.compensation:
            stages["compensation"] = _compensation(m, c, layers, first, last, level_keep, world_size)
        overhead = CUDA_OVERHEAD if name.startswith("cuda") else 0
        plans.append(DevicePlan(name, capacity, stages, overhead))
    sharing = "FSDP2: weights and score buffers sharded over them; the whole model in each rank's host memory" \
        if c.fsdp and world_size > 1 else "each holds the whole model"
    return MemoryPlan(m, c.batch_size, c.seq_len, c.gradient_checkpointing, layout, plans, world_size, sharing)


# ---- devices and the refusal ---------------------------------------------------------------------------------
def _cpu_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_bytes(device: Any) -> int | None:
    """Free memory of one device (``"cuda:0"``, ``"cpu"`` or a ``torch.device``); ``None`` where it cannot be read."""
    name = str(device)
    return _gpu_free(name) if name.startswith("cuda") else _cpu_available()


def device_capacities(device_map: Any = None, max_memory: Mapping[Any, Any] | None = None) -> tuple[list[tuple[str, int | None]], bool]:
    """``([(device, bytes)], split)``: the devices a run would use and whether layers are split over them.

    ``max_memory`` (accelerate's form, ``{0: "75GiB", "cpu": "100GiB"}``) wins; otherwise the devices report
    their free memory (GPUs through torch, the CPU through ``/proc/meminfo``'s MemAvailable). Torch is imported
    only when ``device_map`` names GPUs.
    """
    if max_memory:
        gpus = {k: v for k, v in max_memory.items() if str(k) not in ("cpu", "disk")}
        if gpus:
            return [(f"cuda:{k}" if str(k).isdigit() else str(k), parse_size(v)) for k, v in gpus.items()], len(gpus) > 1
        return [("cpu", parse_size(max_memory["cpu"]))], False
    if isinstance(device_map, Mapping):
        names = sorted({str(v) for v in device_map.values()})
        named = [f"cuda:{n}" if n.isdigit() else n for n in names]
        return [(n, _gpu_free(n) if n.startswith("cuda") else _cpu_available()) for n in named], len(named) > 1
    if device_map in (None, "cpu"):
        return [("cpu", _cpu_available())], False
    text = str(device_map)
    if text in ("auto", "balanced", "balanced_low_0", "sequential"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            return [("cpu", _cpu_available())], False
        return [(f"cuda:{i}", _gpu_free(f"cuda:{i}")) for i in range(count)], count > 1
    name = f"cuda:{text}" if text.isdigit() else ("cuda:0" if text == "cuda" else text)
    return [(name, _gpu_free(name) if name.startswith("cuda") else _cpu_available())], False


def _gpu_free(name: str) -> int | None:
    import torch

    if not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(torch.device(name))
    return int(free) + CUDA_OVERHEAD  # the context is already allocated on a device that reports free memory


def fit_options(model: Any, config: PruneConfig, plan: MemoryPlan, kwargs: dict[str, Any]) -> list[str]:
    """Options that would make the run fit, each with the peak it would need (``kwargs``: memory_plan's)."""
    tries = []
    if config.batch_size > 1:
        tries.append(("batch_size 1", config.replace(batch_size=1)))
    if not config.gradient_checkpointing:
        tries.append(("gradient_checkpointing", config.replace(gradient_checkpointing=True)))
    # importance="activation-taylor" would drop the fp32 buffers, but its plans measured clearly worse than
    # taylor's (docs/guides/scaling.md), so it is not offered as a way to fit.
        if config.batch_size > 1:
            tries.append(("batch_size 1 and gradient_checkpointing",
                          config.replace(batch_size=1, gradient_checkpointing=True)))
    if plan.devices[0].peak_stage == "compensation" and config.compensation_samples > 16:
        tries.append(("compensation_samples 16", config.replace(compensation_samples=16)))
    devs = [(d.name, d.capacity) for d in plan.devices]
    split = plan.layout.startswith("layers split")
    out = []
    for label, changed in tries:
        other = memory_plan(model, changed, devices=devs, split=split, **kwargs)
        out.append(f"{label}: peak {format_bytes(other.peak)}{' (fits)' if other.fits else ''}")
    capacity = min((d.capacity for d in plan.devices if d.capacity), default=None)
    if capacity and plan.devices[0].name.startswith("cuda"):
        for n in (2, 4, 8, 16):
            if n > len(plan.devices):
                other = memory_plan(model, config, devices=[(f"cuda:{i}", capacity) for i in range(n)], split=True, **kwargs)
                if other.fits:
                    out.append(f"{n} such GPUs with device_map='auto': peak {format_bytes(other.peak)} per GPU (fits)")
                    break
    return out


def plan_for_devices(model_or_config: Any, config: PruneConfig, *, device_map: Any = None,
                     max_memory: Mapping[Any, Any] | None = None, dtype: str | None = None,
                     world_size: int = 1) -> tuple[MemoryPlan, dict[str, Any]]:
    """The plan on the devices a run would use, and the keyword arguments that re-plan it (for :func:`fit_options`).

    Data-parallel processes on one machine's CPU share its RAM: each gets ``1 / world_size`` of it.
    """
    devices, split = device_capacities(device_map, max_memory)
    if world_size > 1:
        devices = [(n, c // world_size if c is not None and n == "cpu" else c) for n, c in devices]
    kwargs = {"dtype": dtype, "world_size": world_size}
    return memory_plan(model_or_config, config, devices=devices, split=split, **kwargs), kwargs


def check_fits(model_or_config: Any, config: PruneConfig, *, device_map: Any = None,
               max_memory: Mapping[Any, Any] | None = None, dtype: str | None = None, world_size: int = 1) -> MemoryPlan:
    """The run's plan on the devices it was given; raises :class:`InsufficientMemoryError` if it cannot fit.

    The message names the device, what the run needs and has, and the options that would make it fit.
    """
    plan, kwargs = plan_for_devices(model_or_config, config, device_map=device_map, max_memory=max_memory,
                                    dtype=dtype, world_size=world_size)
    if plan.fits:
        return plan
    worst = max((d for d in plan.devices if not d.fits), key=lambda d: d.peak - (d.capacity or 0))
    advice = fit_options(model_or_config, config, plan, kwargs)
    raise InsufficientMemoryError(
        f"the run needs {format_bytes(worst.peak)} on {worst.name} ({worst.peak_stage}) but {worst.name} has "
        f"{format_bytes(worst.capacity)}; " + ("options: " + "; ".join(advice) if advice else "no option of batch "
        "size, checkpointing or compensation samples makes it fit: use more devices") + " (hf-prune prune ... "
        "--dry-run prints the whole plan).")


