"""Budgets in users' terms, resolved on a model: total parameters, memory at a context length, the KV cache.

A :class:`~hf_prune.PruneConfig` names its levels by one size target (``target_sparsity``, ``target_params`` or
``target_memory``) and, optionally, a KV-cache target per level. The schedule and the ranking count decoder
parameters, so :func:`resolve_targets` turns a parameter or memory target into each level's decoder sparsity on a
given model (from its :class:`~hf_prune.engine.memory.ModelDims`: a loaded model or its ``config.json``), and
:func:`check_targets` refuses, before any scoring, a target the model cannot reach or a KV target the size target
leaves no room for. The KV target itself is a second budget of the ranking (:mod:`hf_prune.engine.allocation`);
:func:`kv_heads_at` spreads it over the scoring rounds as the schedule spreads the parameters.

:func:`forecast` is what ``--dry-run`` prints per level; :func:`measured` what a saved level reached (its record,
card and ``eval_results.json``). Imports neither torch nor transformers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..config import DEFAULT_LEVELS, PruneConfig
from ..errors import PruningError
from ..format.geometry import ModelGeometry
from ..markdown import table

# ``dims`` below is an :class:`~hf_prune.engine.memory.ModelDims` (the memory plan resolves targets with this module,
# so it is not imported here).

__all__ = ["keep_dense_layers", "resolve_targets", "check_targets", "kv_heads_at", "LevelTarget", "level_targets",
           "forecast", "forecast_table", "measured", "TOLERANCE"]

#: How close a parameter or sparsity target is met: this fraction of the dense decoder parameters (the allocation
#: lands within 0.2%; a KV budget may push a level past it by part of a KV group).
TOLERANCE = 0.005


def keep_dense_layers(keep_dense: str | Iterable[int] | None, num_layers: int) -> frozenset[int]:
    """The layer indices ``keep_dense`` names (``"gisp"``: the first 10% of layers and the last), checked."""
    if keep_dense is None:
        return frozenset()
    if keep_dense == "gisp":  # GISP leaves layers < int(0.1 L) and the last layer dense
        return frozenset(range(int(0.1 * num_layers))) | {num_layers - 1}
    layers = frozenset(int(i) for i in keep_dense)
    bad = sorted(i for i in layers if not 0 <= i < num_layers)
    if bad:
        raise PruningError(f"keep_dense layers {bad} are out of range for a model with {num_layers} layers.")
    return layers


def _count(n: float) -> str:
    return f"{n / 1e9:.3f} B" if abs(n) >= 1e8 else f"{n / 1e6:.3f} M"


def _size(n: float) -> str:
    """Bytes in binary units, precise enough to tell a target from what a level reaches."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} B"


@dataclass(frozen=True)
class LevelTarget:
    """One level of a resolved config: its name, decoder sparsity and what it was asked to reach.

    Attributes:
        name: the level's folder and branch name.
        sparsity: the fraction of decoder parameters it removes (the schedule's point, the level's key).
        kv_cache: the fraction of the KV cache it removes at least (0: no KV target).
        params: the total parameters asked for (``target_params``), else ``None``.
        memory: the bytes asked for (``target_memory``), else ``None``.
    """

    name: str
    sparsity: float
    kv_cache: float
    params: int | None = None
    memory: int | None = None

    def asked(self, config: PruneConfig) -> dict[str, Any]:
        """The targets as the level's record states them."""
        out: dict[str, Any] = {}
        if self.params is not None:
            out["params"] = self.params
        elif self.memory is not None:
            out["memory_bytes"] = self.memory
            out.update(context_length=config.context_length, batch_size=config.memory_batch_size)
        else:
            out["sparsity"] = self.sparsity
        if config.target_kv_cache is not None:
            out["kv_cache_reduction"] = self.kv_cache
        return out


def level_targets(config: PruneConfig) -> list[LevelTarget]:
    """The levels of a config whose size targets are resolved (or given as ``target_sparsity``), in level order."""
    kind = config.size_target
    if kind != "sparsity" and config.resolved_decoder_params is None:
        raise PruningError(f"{kind} targets are resolved on a model first (resolve_targets).")
    asked = {"params": config.target_params, "memory": config.target_memory}.get(kind) or [None] * config.num_levels
    return [LevelTarget(name, s, kv, a if kind == "params" else None, a if kind == "memory" else None)
            for name, s, kv, a in zip(config.level_names(), config.target_sparsity, config.kv_targets(), asked)]


# ---- what the constraints allow of the KV cache ----------------------------------------------------------------
def _removable_groups(config: PruneConfig, geometry: ModelGeometry) -> list[int]:
    """Per KV group the constraints let go (each prunable layer's groups beyond what ``min_heads`` keeps, in
    multiples of ``tp_degree``): the parameters it takes with it (its query heads, its K and V rows)."""
    keep = keep_dense_layers(config.keep_dense, len(geometry.shapes))
    costs = []
    for i, s in enumerate(geometry.shapes):
        if i in keep or not s.num_key_value_heads:
            continue
        r = s.group_size
        kept = math.ceil(config.min_heads / r) if config.min_heads else 0
        if config.uniform_heads and kept:  # with uniform heads, KV heads go only with a layer's whole attention
            continue
        free = (s.num_key_value_heads - kept) // config.tp_degree * config.tp_degree
        costs += [r * geometry.query_head_params + geometry.kv_head_params] * max(free, 0)
    return sorted(costs)


def _kv_needed(fraction: float, kv0: int) -> int:
    """KV heads to remove for ``fraction`` of the cache (rounded up: a target is met, never missed)."""
    return math.ceil(fraction * kv0 - 1e-9)


def kv_heads_at(config: PruneConfig, point: float, kv0: int) -> int:
    """KV heads the model has lost by schedule point ``point``: each level's KV target at its sparsity, linear in
    between (and from 0 before the first), so the KV budget is spread over the rounds as the parameters are."""
    kvs = config.kv_targets()
    if not any(kvs):
        return 0
    points = [(0.0, 0.0), *zip(config.target_sparsity, kvs)]
    for (s0, k0), (s1, k1) in zip(points, points[1:]):
        if point <= s1:
            return _kv_needed(k0 + (k1 - k0) * (point - s0) / (s1 - s0), kv0)
    return _kv_needed(points[-1][1], kv0)


# ---- resolving and checking --------------------------------------------------------------------------------------
def _memory_removal(config: PruneConfig, dims: Any, memory: int, kv: float) -> int:
    """Parameters to remove so that the weights and the KV cache left by ``kv`` fit in ``memory`` bytes."""
    kv0 = dims.kv_heads
    per_head = dims.kv_cache_bytes(config.context_length, config.memory_batch_size) // max(kv0, 1)
    kv_left = (kv0 - _kv_needed(kv, kv0)) * per_head
    fixed = (dims.total_params() - dims.geometry.total_params()) * dims.dtype_bytes  # embeddings, final norm, lm_head
    context = f"{config.context_length:,} tokens x {config.memory_batch_size}"
    if fixed + kv_left >= memory:
        hint = "; target_kv_cache lowers it" if kv < 1 and kv_left else ""
        raise PruningError(
            f"target_memory {_size(memory)} is unreachable: the embeddings and lm_head ({_size(fixed)}) "
            f"and the KV cache at {context} ({_size(kv_left)}{hint}) need more before any decoder layer.")
    allowed = (memory - kv_left) // dims.dtype_bytes
    return dims.total_params() - allowed


def resolve_targets(config: PruneConfig, dims: Any) -> PruneConfig:
    """``config`` with each level's decoder sparsity on this model in ``target_sparsity`` (a config of sparsity
    levels, or one resolved already, is returned as it is).

    A parameter target removes the difference to the model's total; a memory target what makes the weights and
    the KV cache left by the level's KV target fit, with the allocation's tolerance to spare (the KV heads the
    ranking may remove besides only lower the memory further), and at least what the KV target removes.

    Raises:
        PruningError: a target at or above the dense model, below what the embeddings and lm_head (and the KV
            cache) need alone, or two levels that come to one sparsity.
    """
    decoder, total = dims.geometry.total_params(), dims.total_params()
    if config.size_target == "sparsity" or config.resolved_decoder_params == decoder:
        return config
    if config.resolved_decoder_params is not None:  # resolved on another model (a saved config reused): again
        config = config.replace(target_sparsity=DEFAULT_LEVELS, resolved_decoder_params=None)
    spare = math.ceil(0.002 * decoder)  # the allocation's tolerance (Pruner): a memory level may land that short
    sparsities = []
    for name, kv, asked in zip(config.level_names(), config.kv_targets(),
                               config.target_params or config.target_memory):
        if config.size_target == "params":
            if asked >= total:
                raise PruningError(f"target_params {_count(asked)} is not below the model's {_count(total)} parameters.")
            removed = total - asked
        else:
            removed = _memory_removal(config, dims, asked, kv) + spare
            if removed <= spare and not kv:
                dense = dims.serving_bytes(config.context_length, config.memory_batch_size)
                raise PruningError(f"target_memory {_size(asked)}: the dense model needs {_size(dense)} "
                                   f"at {config.context_length:,} tokens x {config.memory_batch_size}, within it already.")
            removed = max(removed, _min_kv_params(config, dims.geometry, kv))
        if removed >= decoder:
            raise PruningError(f"level {name} is unreachable: it needs {_count(removed)} fewer parameters, and the "
                               f"decoder layers hold {_count(decoder)} (the rest is embeddings and lm_head).")
        sparsities.append(round(max(removed, 1) / decoder, 6))
    for (a, s), (b, t) in zip(zip(config.level_names(), sparsities), zip(config.level_names()[1:], sparsities[1:])):
        if t <= s:
            raise PruningError(f"levels {a} and {b} come to the same size on this model ({s:.2%} of the decoder "
                               "parameters): drop one.")
    return config.replace(target_sparsity=tuple(sparsities), resolved_decoder_params=decoder)


def _min_kv_params(config: PruneConfig, geometry: ModelGeometry, kv: float) -> int:
    """The fewest decoder parameters that removing ``kv`` of the KV cache takes (the cheapest KV groups with their
    query heads)."""
    needed = _kv_needed(kv, sum(s.num_key_value_heads for s in geometry.shapes))
    return sum(_removable_groups(config, geometry)[:needed]) if needed else 0


def check_targets(config: PruneConfig, geometry: ModelGeometry) -> None:
    """Refuse, before any scoring, a KV target the constraints cannot reach or that removes more parameters than
    its level's size target allows (``config``: resolved)."""
    kvs = config.kv_targets()
    if not any(kvs):
        return
    kv0 = sum(s.num_key_value_heads for s in geometry.shapes)
    groups = _removable_groups(config, geometry)
    decoder = geometry.total_params()
    for level in level_targets(config):
        needed = _kv_needed(level.kv_cache, kv0)
        if needed > len(groups):
            raise PruningError(f"target_kv_cache {level.kv_cache:.0%} is unreachable: the constraints let at most "
                               f"{len(groups) / kv0:.0%} of the KV cache go (keep_dense / min_heads / tp_degree).")
        least = sum(groups[:needed])
        if level.memory is None and least > (level.sparsity + TOLERANCE) * decoder:
            raise PruningError(
                f"level {level.name}: removing {level.kv_cache:.0%} of the KV cache takes at least {_count(least)} "
                f"parameters (each KV head goes with its query heads), more than the level removes "
                f"({_count(level.sparsity * decoder)}): lower target_kv_cache or aim smaller.")


# ---- what a level will reach, and what it reached ----------------------------------------------------------------
def forecast(config: PruneConfig, dims: Any) -> list[dict[str, Any]]:
    """Per level (``config`` resolved on ``dims``): its name, the parameters it keeps, the most memory it needs at
    the config's context and the least KV cache it removes (the ranking may remove more KV heads)."""
    decoder, total, kv0 = dims.geometry.total_params(), dims.total_params(), dims.kv_heads
    per_head = dims.kv_cache_bytes(config.context_length, config.memory_batch_size) / max(kv0, 1)
    rows = []
    for level in level_targets(config):
        params = total - round(level.sparsity * decoder)
        kv_left = kv0 - _kv_needed(level.kv_cache, kv0)
        rows.append({"level": level.name, "params": params, "sparsity": level.sparsity,
                     "memory_bytes": params * dims.dtype_bytes + round(kv_left * per_head),
                     "kv_cache_reduction": 1 - kv_left / kv0})
    return rows


def forecast_table(config: PruneConfig, dims: Any) -> str:
    """:func:`forecast` as a markdown table (``--dry-run``)."""
    context = f"{config.context_length:,} tokens x {config.memory_batch_size}, {dims.dtype}"
    rows = [[r["level"], _count(r["params"]), f"{r['sparsity']:.1%}", f"<= {_size(r['memory_bytes'])}",
             f">= {r['kv_cache_reduction']:.1%}"] for r in forecast(config, dims)]
    return table(["level", "parameters", "decoder sparsity", f"memory at {context}", "KV cache removed"], rows, "lrrrr")


def measured(config: PruneConfig, sparsity: float, dense: Any, pruned: Any, params: int) -> dict[str, Any]:
    """What the level at ``sparsity`` was asked, what it reached and whether it met each target.

    Args:
        config: the run's config (resolved); sparsity: the level's key.
        dense, pruned: the sizes of the dense model and of the level (its config or weights), with the dtype.
        params: the level's parameters, counted from its weights.
    """
    level = next(t for t in level_targets(config) if t.sparsity == sparsity)
    decoder = dense.geometry.total_params()
    reached = {"params": params, "sparsity": 1 - pruned.geometry.total_params() / decoder,
               "memory_bytes": params * pruned.dtype_bytes + pruned.kv_cache_bytes(config.context_length,
                                                                                   config.memory_batch_size),
               "kv_cache_reduction": 1 - pruned.kv_heads / dense.kv_heads,
               "context_length": config.context_length, "batch_size": config.memory_batch_size, "dtype": pruned.dtype}
    asked = level.asked(config)
    met = {}
    if "params" in asked:
        met["params"] = abs(params - asked["params"]) <= TOLERANCE * decoder
    if "memory_bytes" in asked:
        met["memory_bytes"] = reached["memory_bytes"] <= asked["memory_bytes"]
    if "sparsity" in asked:
        met["sparsity"] = abs(reached["sparsity"] - asked["sparsity"]) <= TOLERANCE
    if "kv_cache_reduction" in asked:
        met["kv_cache_reduction"] = reached["kv_cache_reduction"] >= asked["kv_cache_reduction"] - 1e-9
    return {"level": level.name, "asked": asked, "reached": reached, "met": met}
