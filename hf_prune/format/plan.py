"""`PruningPlan`: which query heads, KV heads and MLP channels of each layer survive.

A plan is pure data (JSON round trip), independent of any weights. Indices refer to the model the plan is
applied to: for plans produced by :func:`hf_prune.prune`, the original (unpruned) model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidPlanError
from ..fileio import write_text_atomic
from ..options import is_int

__all__ = ["LayerPlan", "PruningPlan", "LayerShape"]

_LAYER_KEYS = ("query_heads", "kv_heads", "mlp_channels")


@dataclass(frozen=True)
class LayerShape:
    """Sizes of one decoder layer of the model a plan applies to (0 heads / 0 channels: sublayer removed)."""

    num_attention_heads: int
    num_key_value_heads: int
    intermediate_size: int

    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.num_attention_heads // self.num_key_value_heads if self.num_key_value_heads else 0


@dataclass
class LayerPlan:
    """What one layer keeps. ``None`` keeps everything; an empty list removes the sublayer.

    Attributes:
        query_heads: kept query heads.
        mlp_channels: kept MLP channels (gate/up rows, down columns).
        kv_heads: kept key/value heads. Optional: derived from ``query_heads`` (a KV head stays while any of its
            query heads does); when given it must agree.
        extra: other keys of this layer's JSON entry, kept as they are.
    """

    query_heads: list[int] | None = None
    mlp_channels: list[int] | None = None
    kv_heads: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in _LAYER_KEYS:
            value = getattr(self, key)
            if value is not None:
                out[key] = list(value)
        out.update(self.extra)
        return out


@dataclass
class ResolvedLayer:
    """A layer plan checked against a model: explicit, sorted indices and the resulting sizes."""

    query_heads: list[int]
    kv_heads: list[int]
    mlp_channels: list[int]

    @property
    def attention_removed(self) -> bool:
        return not self.query_heads

    @property
    def mlp_removed(self) -> bool:
        return not self.mlp_channels


@dataclass
class PruningPlan:
    """The structures each decoder layer keeps.

    Example:

    ```python
    >>> plan = PruningPlan.from_dict({"layers": [{"query_heads": [0, 1], "mlp_channels": [0, 5, 7]}, {}]})
    >>> plan.to_dict()["layers"][0]
    {'query_heads': [0, 1], 'mlp_channels': [0, 5, 7]}
    ```

    Attributes:
        layers: one :class:`LayerPlan` per decoder layer.
        metadata: any other top-level keys (base model, sparsity, method...), kept in the JSON.
    """

    layers: list[LayerPlan]
    metadata: dict[str, Any] = field(default_factory=dict)

    # ---- construction and serialisation -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruningPlan:
        """Build a plan from ``{"layers": [{"query_heads": [...], "mlp_channels": [...]}, ...], ...}``."""
        if not isinstance(data, Mapping) or not isinstance(data.get("layers"), Sequence):
            raise InvalidPlanError('A pruning plan needs a "layers" list (one entry per decoder layer).')
        layers = []
        for idx, entry in enumerate(data["layers"]):
            if not isinstance(entry, Mapping):
                raise InvalidPlanError(f"Layer {idx}: expected a mapping, got {type(entry).__name__}.")
            values: dict[str, list[int] | None] = {}
            for key in _LAYER_KEYS:
                raw = entry.get(key)
                if raw is not None:
                    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
                        raise InvalidPlanError(f"Layer {idx}: {key} must be a list of integers.")
                    if not all(is_int(i) for i in raw):
                        raise InvalidPlanError(f"Layer {idx}: {key} must contain only integers, got {list(raw)[:5]}.")
                    raw = list(raw)
                values[key] = raw
            extra = {k: v for k, v in entry.items() if k not in _LAYER_KEYS}
            layers.append(LayerPlan(**values, extra=dict(extra)))
        metadata = {k: v for k, v in data.items() if k != "layers"}
        return cls(layers=layers, metadata=metadata)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form accepted by :meth:`from_dict`."""
        return {**self.metadata, "layers": [layer.to_dict() for layer in self.layers]}

    def save(self, path: str | os.PathLike) -> None:
        """Write the plan as JSON (atomically: a failed write leaves no partial file)."""
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruningPlan:
        """Read a plan written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def keep_all(cls, shapes: Sequence[LayerShape]) -> PruningPlan:
        """The plan that removes nothing from a model with these layer shapes."""
        return cls(
            layers=[
                LayerPlan(
                    query_heads=list(range(s.num_attention_heads)), mlp_channels=list(range(s.intermediate_size))
                )
                for s in shapes
            ]
        )

    # ---- checking against a model -------------------------------------------------------------------------
    def resolve(self, shapes: Sequence[LayerShape]) -> list[ResolvedLayer]:
        """Check the plan against a model's layer shapes and return explicit, sorted keep-lists.

        Raises:
            InvalidPlanError: wrong layer count, an index out of range or repeated, query heads not spread
                evenly over the kept KV heads, or ``kv_heads`` disagreeing with ``query_heads``; the message
                names the layer.
        """
        if len(self.layers) != len(shapes):
            raise InvalidPlanError(
                f"The plan has {len(self.layers)} layers but the model has {len(shapes)} decoder layers."
            )
        return [_resolve_layer(idx, layer, shape) for idx, (layer, shape) in enumerate(zip(self.layers, shapes))]

    def compose(self, later: PruningPlan) -> PruningPlan:
        """The plan equivalent to applying ``self`` and then ``later`` (whose indices refer to the result of ``self``).

        Both plans must be explicit (no ``None``): use plans returned by :meth:`explicit`.
        """
        if len(later.layers) != len(self.layers):
            raise InvalidPlanError(f"Cannot compose plans of {len(self.layers)} and {len(later.layers)} layers.")
        layers = []
        for idx, (first, second) in enumerate(zip(self.layers, later.layers)):
            layer = {}
            for key in _LAYER_KEYS:
                outer, inner = getattr(first, key), getattr(second, key)
                if outer is None or (inner is None and key != "kv_heads"):
                    raise InvalidPlanError(f"Layer {idx}: compose() needs explicit {key} in both plans.")
                if inner is None:
                    layer[key] = None
                    continue
                order = sorted(outer)
                if any(i < 0 or i >= len(order) for i in inner):
                    raise InvalidPlanError(f"Layer {idx}: {key} index out of range for the earlier plan's result.")
                layer[key] = sorted(order[i] for i in inner)
            layers.append(LayerPlan(**layer))
        return PruningPlan(layers=layers, metadata=dict(later.metadata))

    def explicit(self, shapes: Sequence[LayerShape]) -> PruningPlan:
        """This plan with every ``None`` filled in and indices sorted (kv_heads included)."""
        resolved = self.resolve(shapes)
        layers = [
            LayerPlan(query_heads=r.query_heads, kv_heads=r.kv_heads, mlp_channels=r.mlp_channels, extra=dict(l.extra))
            for r, l in zip(resolved, self.layers)
        ]
        return PruningPlan(layers=layers, metadata=dict(self.metadata))


def _check_indices(idx: int, key: str, values: list[int], limit: int) -> list[int]:
    bad = [i for i in values if i < 0 or i >= limit]
    if bad:
        raise InvalidPlanError(f"Layer {idx}: {key} {bad[:5]} out of range [0, {limit}).")
    if len(set(values)) != len(values):
        repeated = sorted({i for i in values if values.count(i) > 1})
        raise InvalidPlanError(f"Layer {idx}: {key} lists {repeated[:5]} more than once.")
    return sorted(values)


def _resolve_layer(idx: int, layer: LayerPlan, shape: LayerShape) -> ResolvedLayer:
    heads = list(range(shape.num_attention_heads)) if layer.query_heads is None else layer.query_heads
    heads = _check_indices(idx, "query_heads", heads, shape.num_attention_heads)
    channels = list(range(shape.intermediate_size)) if layer.mlp_channels is None else layer.mlp_channels
    channels = _check_indices(idx, "mlp_channels", channels, shape.intermediate_size)

    group = shape.group_size
    per_group: dict[int, int] = {}
    for h in heads:
        per_group[h // group] = per_group.get(h // group, 0) + 1
    kv_heads = sorted(per_group)
    # transformers' repeat_kv gives every KV head the same number of query heads.
    if len(set(per_group.values())) > 1:
        counts = ", ".join(f"KV head {k}: {n}" for k, n in sorted(per_group.items()))
        raise InvalidPlanError(
            f"Layer {idx}: every kept KV head must keep the same number of query heads ({counts})."
        )
    if layer.kv_heads is not None:
        given = _check_indices(idx, "kv_heads", layer.kv_heads, shape.num_key_value_heads)
        if given != kv_heads:
            raise InvalidPlanError(
                f"Layer {idx}: kv_heads {given} disagree with the KV heads of the kept query heads {kv_heads} "
                f"(query head h belongs to KV head h // {group})."
            )
    return ResolvedLayer(query_heads=heads, kv_heads=kv_heads, mlp_channels=channels)
