"""Allocation: turn per-structure scores into a plan that removes a given number of parameters.

``global`` ranks removal units of every layer together (block-wise normalised, GISP); ``uniform`` removes the
same fraction from every layer (LLM-Pruner, Wanda-sp). Both respect GQA (every kept KV head keeps the same
number of query heads), keep-dense layers, per-layer minimums, MLP widths in multiples of ``channel_multiple``
and KV-head counts divisible by ``tp_degree``.

Attention removal units, per layer: a *slot* (the weakest remaining query head of every kept KV group, so the
groups stay uniform; the last slot takes the KV heads and the pre-norm with it) or a *KV group* (a KV head with
all its query heads). MLP units: blocks of ``channel_multiple`` weakest channels.

With ``uniform_heads`` (a run that targets the DeciLM export, whose query-head count is global), attention is
removed only by one cross-layer unit: a slot of *every* layer at once, so all layers keep the same query heads
and KV heads; a layer's whole attention may still go (DeciLM's ``no_op``) when ``min_heads`` is 0.

A KV-cache budget (``kv_heads_to_remove``) is a second budget of the same global ranking, met by Lagrangian
pricing: every KV head a unit removes lowers its score by a price ``lambda``, and ``lambda`` is the smallest (found
by bisection) at which the ranking, filling the parameter budget, also removes that many KV heads. So KV groups go
where they cost the least loss per parameter once their cache saving is priced in, and the parameter budget still
decides how much goes in all.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..errors import PruningError
from ..format.geometry import ModelGeometry
from ..format.plan import LayerPlan, PruningPlan
from ..presets import ALLOCATIONS, NORMALIZATIONS
from .structures import LayerScores

__all__ = ["Constraints", "allocate", "NORMALIZATIONS"]


@dataclass(frozen=True)
class Constraints:
    """What allocation must respect.

    Attributes:
        keep_dense: layer indices never pruned.
        min_heads: query heads every pruned layer keeps (0 allows removing its attention).
        min_channels: MLP channels every pruned layer keeps (0 allows removing its MLP).
        channel_multiple: kept MLP widths are multiples of this (e.g. 64 for fast kernels).
        tp_degree: kept KV heads (and so query heads) per layer divisible by this.
        attention_weight: global allocation multiplies the scores of attention units by this before ranking.
            First-order scores underrate what removing a head costs (its effect on the attention pattern is
            not first order); > 1 makes heads harder to remove than their score says.
        layer_balance: global allocation multiplies an MLP unit's score by ``1 + layer_balance * f``, ``f`` the
            fraction of that layer's original channels already removed: the loss of removing many channels of
            one layer grows faster than the sum of their first-order scores, so concentrated removal is
            priced up. 0 ranks at face value.
        base_widths: each layer's MLP width in the original model (what ``f`` is measured against); ``None``:
            the current widths.
        uniform_heads: every layer that keeps attention keeps the same number of query heads (see the module
            docstring); the layers must start that way.
    """

    keep_dense: frozenset[int] = frozenset()
    min_heads: int = 0
    min_channels: int = 0
    channel_multiple: int = 1
    tp_degree: int = 1
    attention_weight: float = 1.0
    layer_balance: float = 0.0
    base_widths: tuple[int, ...] | None = None
    uniform_heads: bool = False


class _Action(NamedTuple):
    """What a unit removes: ``slot`` (one query head per KV group), ``groups`` (these KV groups whole) or
    ``channels`` (this many weakest channels)."""

    kind: str
    arg: Any = None


class _Unit(NamedTuple):
    """A candidate removal: summed score of its structures, parameters it removes, structures it removes."""

    score: float
    cost: int
    count: int
    action: _Action


class _Entry(NamedTuple):
    """A priced unit in the global heap, ordered by key, then layer (ties resolve deterministically)."""

    key: float
    layer: int
    version: int  # the layer's version when priced: a stale entry is skipped
    cost: int
    action: _Action
    kv_heads: int = 0  # KV heads the unit removes (its share of the KV-cache budget)


@dataclass
class _Layer:
    """Mutable keep-state of one layer during allocation (indices into the current model)."""

    groups: dict[int, list[int]]  # kv head -> kept query heads, weakest first
    channels: list[int]  # kept channels, weakest first
    head_score: torch.Tensor | None
    kv_score: torch.Tensor | None
    channel_score: torch.Tensor | None
    version: int = 0

    @property
    def heads_per_group(self) -> int:
        return len(next(iter(self.groups.values()))) if self.groups else 0

    @property
    def num_heads(self) -> int:
        return sum(len(h) for h in self.groups.values())


def check_names(allocation: str, normalization: str) -> None:
    """Raise :class:`PruningError` for an unknown allocation or normalisation name."""
    if allocation not in ALLOCATIONS:
        raise PruningError(f"Unknown allocation {allocation!r}; choose one of {sorted(ALLOCATIONS)}.")
    if normalization not in NORMALIZATIONS:
        raise PruningError(f"Unknown normalization {normalization!r}; choose one of {sorted(NORMALIZATIONS)}.")


def _normalised(scores: list[LayerScores], geometry: ModelGeometry, mode: str) -> list[LayerScores]:
    """Block-wise normalisation: makes head and channel scores comparable across layers and block types."""
    if mode in ("param", "none"):
        return scores  # "param" divides by each unit's parameter cost at ranking time
    out = []
    for s, shape in zip(scores, geometry.shapes):
        if mode == "gisp":
            # GISP's code: head / (4 d_head d_model), channel / (3 d_ff) (d_ff of the original model).
            h = None if s.query_heads is None else s.query_heads / (4 * geometry.head_dim * geometry.hidden_size)
            kv = None if s.kv_heads is None else s.kv_heads / (4 * geometry.head_dim * geometry.hidden_size)
            c = None if s.mlp_channels is None else s.mlp_channels / (3 * max(shape.intermediate_size, 1))
        else:  # standardize (FLAP): z-scores within each module
            def z(t):
                if t is None or t.numel() < 2:  # a single structure left: nothing to standardise against
                    return None if t is None else torch.zeros_like(t)
                return (t - t.mean()) / (t.std() + 1e-12)

            h, kv, c = z(s.query_heads), None, z(s.mlp_channels)
        out.append(LayerScores(h, kv, c))
    return out


def _initial_state(scores: LayerScores, geometry: ModelGeometry, idx: int) -> _Layer:
    shape = geometry.shapes[idx]
    groups: dict[int, list[int]] = {}
    if shape.num_attention_heads:
        r = shape.group_size
        for g in range(shape.num_key_value_heads):
            heads = list(range(g * r, (g + 1) * r))
            groups[g] = sorted(heads, key=lambda h: (float(scores.query_heads[h]), h))
    channels = []
    if shape.intermediate_size:
        channels = sorted(range(shape.intermediate_size), key=lambda c: (float(scores.mlp_channels[c]), c))
    return _Layer(groups, channels, scores.query_heads, scores.kv_heads, scores.mlp_channels)


def _attention_units(state: _Layer, geometry: ModelGeometry, c: Constraints) -> list[_Unit]:
    """Candidate attention removals of a layer: a slot, and the weakest ``tp_degree`` KV groups."""
    if not state.groups:
        return []
    units = []
    num_groups, r = len(state.groups), state.heads_per_group
    q, kv, norm = geometry.query_head_params, geometry.kv_head_params, geometry.norm_params
    kv_score = lambda g: 0.0 if state.kv_score is None else float(state.kv_score[g])  # noqa: E731
    # Slot: one query head from every group.
    if (r > 1 and num_groups * (r - 1) >= c.min_heads) or (r == 1 and c.min_heads == 0):
        heads = [hs[0] for hs in state.groups.values()]
        cost = num_groups * q
        score = sum(float(state.head_score[h]) for h in heads)
        if r == 1:
            cost += num_groups * kv + norm
            score += sum(kv_score(g) for g in state.groups)
        units.append(_Unit(score, cost, len(heads), _Action("slot")))
    # Whole KV groups, tp_degree at a time (the weakest), keeping at least min_heads query heads.
    remaining = num_groups - c.tp_degree
    if (remaining > 0 and remaining * r >= c.min_heads) or (remaining == 0 and c.min_heads == 0):
        group_scores = sorted(
            (sum(float(state.head_score[h]) for h in hs) + kv_score(g), g) for g, hs in state.groups.items()
        )[: c.tp_degree]
        cost = c.tp_degree * (r * q + kv) + (norm if remaining == 0 else 0)
        units.append(_Unit(sum(s for s, _ in group_scores), cost, c.tp_degree * (r + 1),
                           _Action("groups", [g for _, g in group_scores])))
    return units


def _mlp_unit(state: _Layer, geometry: ModelGeometry, c: Constraints) -> _Unit | None:
    """The next block of ``channel_multiple`` weakest channels (the remainder first, to reach a multiple)."""
    width = len(state.channels)
    if width == 0:
        return None
    block = width % c.channel_multiple or c.channel_multiple
    if width - block < c.min_channels:
        return None
    cost = block * geometry.channel_params + (geometry.norm_params if block == width else 0)
    score = sum(float(state.channel_score[ch]) for ch in state.channels[:block])
    return _Unit(score, cost, block, _Action("channels", block))


def _apply(state: _Layer, action: _Action) -> None:
    if action.kind == "slot":
        for g in list(state.groups):
            state.groups[g] = state.groups[g][1:]
            if not state.groups[g]:
                del state.groups[g]
    elif action.kind == "groups":
        for g in action.arg:
            del state.groups[g]
    else:
        state.channels = state.channels[action.arg:]
    state.version += 1


def _kv_heads(state: _Layer, action: _Action) -> int:
    """KV heads an action removes from a layer: whole groups, or every group when a slot takes the last query heads."""
    if action.kind == "groups":
        return len(action.arg)
    return len(state.groups) if action.kind == "slot" and state.heads_per_group == 1 else 0


def _to_plan(states: list[_Layer]) -> PruningPlan:
    layers = []
    for s in states:
        heads = sorted(h for hs in s.groups.values() for h in hs)
        layers.append(LayerPlan(query_heads=heads, kv_heads=sorted(s.groups), mlp_channels=sorted(s.channels)))
    return PruningPlan(layers=layers)


def allocate(
    scores: list[LayerScores],
    geometry: ModelGeometry,
    params_to_remove: int,
    *,
    allocation: str = "global",
    normalization: str = "param",
    constraints: Constraints = Constraints(),
    tolerance: int = 0,
    kv_heads_to_remove: int = 0,
) -> PruningPlan:
    """Choose structures to remove (about ``params_to_remove`` decoder parameters) from the current model.

    Global allocation passes over a unit that would overshoot the budget by more than ``tolerance`` parameters
    (a whole KV group, say) for the next-best one that fits, so targets are met closely. ``kv_heads_to_remove``:
    at least that many KV heads go too (a second budget, priced into the same ranking: see the module docstring;
    global allocation only).

    Returns a plan whose indices refer to the current model. Raises :class:`PruningError` when the constraints
    cannot remove that many parameters (or KV heads).
    """
    check_names(allocation, normalization)
    if params_to_remove <= 0 and kv_heads_to_remove <= 0:
        return _to_plan([_initial_state(s, geometry, i) for i, s in enumerate(scores)])
    prunable = [i for i in range(len(scores)) if i not in constraints.keep_dense]
    if allocation != "global":
        if kv_heads_to_remove > 0:
            raise PruningError("a KV-cache budget needs global allocation (uniform removes the same share everywhere).")
        states = [_initial_state(s, geometry, i) for i, s in enumerate(scores)]
        _allocate_uniform(states, prunable, geometry, params_to_remove, constraints)
        return _to_plan(states)
    ranked = _Ranked(scores, geometry, constraints, normalization, prunable, max(params_to_remove, 1), tolerance)
    return _to_plan(ranked.with_kv_budget(kv_heads_to_remove))


class _Ranked:
    """The global ranking run with a price on KV heads: fresh keep-states for each price tried."""

    def __init__(self, scores, geometry, constraints, normalization, prunable, budget, tolerance) -> None:
        self.scores, self.geometry, self.constraints, self.mode = scores, geometry, constraints, normalization
        self.normed = _normalised(scores, geometry, normalization)
        self.prunable, self.budget, self.tolerance = prunable, budget, tolerance
        self.kv0 = sum(s.num_key_value_heads for s in geometry.shapes)

    def run(self, kv_price: float, kv_needed: int = 0) -> tuple[list[_Layer], int]:
        """The keep-states after the ranking at this price, and the KV heads it removed. With ``kv_needed``, KV
        units may overshoot the parameter budget until that many KV heads are gone."""
        states = [_initial_state(s, self.geometry, i) for i, s in enumerate(self.scores)]
        ranking_class = _UniformHeadsRanking if self.constraints.uniform_heads else _GlobalRanking
        ranking = ranking_class(states, self.normed, self.geometry, self.constraints, self.mode, kv_price, kv_needed)
        ranking.remove(self.prunable, self.budget, self.tolerance)
        return states, self.kv0 - sum(len(s.groups) for s in states)

    def with_kv_budget(self, kv_needed: int) -> list[_Layer]:
        """The states of the lowest price at which at least ``kv_needed`` KV heads go (price 0 without a budget)."""
        states, removed = self.run(0.0)
        if kv_needed <= 0 or removed >= kv_needed:
            return states
        # A price at which it is met within the parameter budget: from the scale of the scores, doubled until it is.
        scale = sum(float(t.abs().sum()) for s in self.normed for t in (s.query_heads, s.kv_heads) if t is not None)
        low, high = 0.0, max(scale, 1e-12) * max(self.constraints.attention_weight, 1.0)
        for _ in range(40):
            best, removed = self.run(high)
            if removed >= kv_needed:
                break
            low, high = high, 2 * high
        else:
            # This round's parameter budget is smaller than the KV heads it must lose (a rounding of the schedule):
            # the KV budget wins, later rounds remove the rest.
            best, removed = self.run(high, kv_needed)
            if removed < kv_needed:
                raise PruningError(f"the KV-cache budget ({kv_needed} KV heads) cannot be met under these constraints: "
                                   "lower target_kv_cache or relax keep_dense / min_heads / tp_degree.")
            return best
        for _ in range(30):  # bisection to the lowest price that meets it: the least loss-inflating KV removal
            middle = (low + high) / 2
            states, removed = self.run(middle)
            if removed >= kv_needed:
                best, high = states, middle
            else:
                low = middle
            if high - low <= 1e-4 * high:
                break
        return best


class _GlobalRanking:
    """Greedy removal over the units of all layers, cheapest (normalised score per unit) first."""

    def __init__(self, states: list[_Layer], norm_scores: list[LayerScores], geometry: ModelGeometry,
                 constraints: Constraints, mode: str, kv_price: float = 0.0, kv_needed: int = 0) -> None:
        self.states, self.geometry, self.constraints, self.mode = states, geometry, constraints, mode
        for state, s in zip(states, norm_scores):  # rank on normalised scores; raw ones only ordered structures
            state.head_score, state.kv_score, state.channel_score = s.query_heads, s.kv_heads, s.mlp_channels
        self.heap: list[_Entry] = []
        self.kv_price, self.kv_needed, self.kv_removed = kv_price, kv_needed, 0

    def push(self, i: int, unit: _Unit, score: float) -> None:
        """Price ``unit`` of layer ``i`` at ``score`` (weights applied) less the price of the KV heads it removes."""
        kv = _kv_heads(self.states[i], unit.action)
        priced = unit._replace(score=score - self.kv_price * kv)
        heapq.heappush(self.heap, _Entry(self._key(priced), i, self.states[i].version, unit.cost, unit.action, kv))

    def _key(self, unit: _Unit) -> float:
        # "param": expected loss per parameter removed (a knapsack greedy); otherwise the mean normalised score of
        # the unit's structures, as GISP/FLAP rank single structures.
        return unit.score / unit.cost if self.mode == "param" else unit.score / unit.count

    def price(self, i: int) -> None:
        """Push layer ``i``'s current candidate units, with the attention weight and layer balance applied."""
        s, c = self.states[i], self.constraints
        candidates = _attention_units(s, self.geometry, c)
        mlp = _mlp_unit(s, self.geometry, c)
        if mlp is not None:
            candidates.append(mlp)
        for unit in candidates:
            score = unit.score
            if unit.action.kind != "channels":
                score *= c.attention_weight
            elif c.layer_balance:
                base = c.base_widths[i] if c.base_widths else self.geometry.shapes[i].intermediate_size
                score *= 1 + c.layer_balance * (1 - len(s.channels) / max(base, 1))
            self.push(i, unit, score)

    def is_current(self, entry: _Entry) -> bool:
        """Whether ``entry`` was priced on its layer as it is now (else it is stale and skipped)."""
        return entry.version == self.states[entry.layer].version

    def apply(self, entry: _Entry) -> None:
        """Remove what ``entry`` removes and price what its layer offers next."""
        _apply(self.states[entry.layer], entry.action)
        self.price(entry.layer)

    def remove(self, prunable: list[int], budget: int, tolerance: float) -> None:
        for i in prunable:
            self.price(i)
        removed = 0
        skipped: list[_Entry] = []
        while removed < budget:
            if not self.heap:
                if removed >= budget - tolerance:
                    return
                # Nothing fits within the tolerance: take the smallest overshoot among the units passed over.
                valid = [e for e in skipped if self.is_current(e)]
                if not valid:
                    raise PruningError(
                        f"The constraints allow removing only {removed:,} more decoder parameters, {budget:,} were "
                        "asked: lower the sparsity or relax keep_dense / min_heads / min_channels."
                    )
                self.heap.append(min(valid, key=lambda e: e.cost))
                skipped.clear()
                tolerance = float("inf")
            entry = heapq.heappop(self.heap)
            if not self.is_current(entry):
                continue  # stale: this layer changed since the unit was priced
            kv_wanted = entry.kv_heads and self.kv_removed < self.kv_needed  # the KV budget may overshoot the other
            if removed + entry.cost > budget + tolerance and not kv_wanted:
                skipped.append(entry)  # would overshoot: a smaller unit (or a smaller part of this layer) fits better
                continue
            self.apply(entry)
            removed += entry.cost
            self.kv_removed += entry.kv_heads


class _UniformHeadsRanking(_GlobalRanking):
    """Global ranking that keeps every attention layer at one query-head count (``Constraints.uniform_heads``).

    Per layer it offers MLP blocks and, when ``min_heads`` is 0, the layer's whole attention; query heads go only
    through one cross-layer unit, a slot of every attention layer at once (GQA groups stay uniform everywhere).
    """

    ALL_LAYERS = -1  # the layer index of the cross-layer unit's heap entries

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.prunable: set[int] = set()
        self.attention_version = 0  # bumped whenever any layer's attention changes

    def price(self, i: int) -> None:
        s, c = self.states[i], self.constraints
        candidates = []
        if s.groups and c.min_heads == 0:
            candidates.append(_whole_attention_unit(s, self.geometry))
        mlp = _mlp_unit(s, self.geometry, c)
        if mlp is not None:
            candidates.append(mlp)
        for unit in candidates:
            score = unit.score * (c.attention_weight if unit.action.kind == "groups" else 1.0)
            if unit.action.kind == "channels" and c.layer_balance:
                base = c.base_widths[i] if c.base_widths else self.geometry.shapes[i].intermediate_size
                score *= 1 + c.layer_balance * (1 - len(s.channels) / max(base, 1))
            self.push(i, unit, score)

    def price_slot(self) -> None:
        """Push the cross-layer slot, if every attention layer can give one up and stay like the others."""
        layers = [i for i, s in enumerate(self.states) if s.groups]
        if not layers or any(i not in self.prunable for i in layers):
            return  # a keep-dense layer with attention pins the head count
        shapes = {(len(self.states[i].groups), self.states[i].heads_per_group) for i in layers}
        (num_groups, r), = shapes if len(shapes) == 1 else ((0, 0),)
        if r < 2 or num_groups * (r - 1) < self.constraints.min_heads:
            return  # the last slot would take the KV heads of every layer: not a unit worth offering
        units = [_attention_units(self.states[i], self.geometry, self.constraints)[0] for i in layers]
        total = _Unit(sum(u.score for u in units) * self.constraints.attention_weight, sum(u.cost for u in units),
                      sum(u.count for u in units), _Action("slot"))
        heapq.heappush(self.heap, _Entry(self._key(total), self.ALL_LAYERS, self.attention_version, total.cost,
                                         total.action))

    def is_current(self, entry: _Entry) -> bool:
        if entry.layer == self.ALL_LAYERS:
            return entry.version == self.attention_version
        return super().is_current(entry)

    def apply(self, entry: _Entry) -> None:
        if entry.layer == self.ALL_LAYERS:
            touched = [i for i, s in enumerate(self.states) if s.groups]
        else:
            touched = [entry.layer]
        for i in touched:
            _apply(self.states[i], entry.action)
            self.price(i)
        if entry.action.kind != "channels":
            self.attention_version += 1
            self.price_slot()

    def remove(self, prunable: list[int], budget: int, tolerance: float) -> None:
        self.prunable = set(prunable)
        self.price_slot()
        super().remove(prunable, budget, tolerance)


def _whole_attention_unit(state: _Layer, geometry: ModelGeometry) -> _Unit:
    """Every KV group of a layer, so its attention sublayer (and pre-norm) goes."""
    r = state.heads_per_group
    kv_score = lambda g: 0.0 if state.kv_score is None else float(state.kv_score[g])  # noqa: E731
    score = sum(sum(float(state.head_score[h]) for h in hs) + kv_score(g) for g, hs in state.groups.items())
    cost = len(state.groups) * (r * geometry.query_head_params + geometry.kv_head_params) + geometry.norm_params
    return _Unit(score, cost, len(state.groups) * (r + 1), _Action("groups", list(state.groups)))


def _same_attention(states: list[_Layer], prunable: list[int]) -> bool:
    """Whether removing the same slots from every prunable layer keeps one query-head count: every attention layer
    is prunable and all have the same KV groups and group size."""
    layers = [i for i, s in enumerate(states) if s.groups]
    return (all(i in prunable for i in layers)
            and len({(len(states[i].groups), states[i].heads_per_group) for i in layers}) <= 1)


def _allocate_uniform(states, prunable, geometry, budget, constraints) -> None:
    """Same fraction everywhere: attention slots by rounding, then MLP channels to hit the budget exactly."""
    total = geometry.total_params([geometry.shapes[i] for i in prunable])
    if total == 0:
        raise PruningError("Every layer is kept dense: nothing can be pruned.")
    ratio = budget / total
    removed = 0
    heads_movable = not constraints.uniform_heads or _same_attention(states, prunable)
    for i in prunable:
        s = states[i]
        if s.groups and heads_movable:
            r = s.heads_per_group
            slots = min(round(ratio * r), r if constraints.min_heads == 0 else r - 1)
            while slots and len(s.groups) * (r - slots) < constraints.min_heads:
                slots -= 1
            for _ in range(slots):
                unit = next(u for u in _attention_units(s, geometry, constraints) if u.action.kind == "slot")
                _apply(s, unit.action)
                removed += unit.cost
    mlp_layers = [i for i in prunable if states[i].channels]
    channel_budget = budget - removed
    widths = {i: len(states[i].channels) for i in mlp_layers}
    mlp_total = sum(widths.values()) * geometry.channel_params
    if channel_budget > mlp_total:
        raise PruningError(f"Uniform allocation cannot remove {budget:,} parameters from the prunable layers.")
    frac = max(channel_budget, 0) / max(mlp_total, 1)
    for i in mlp_layers:
        s = states[i]
        m = constraints.channel_multiple
        drop = int(round(frac * widths[i] / m)) * m
        drop = min(drop, widths[i] - constraints.min_channels)
        if widths[i] - drop and (widths[i] - drop) % m:
            drop += (widths[i] - drop) % m
        s.channels = s.channels[max(drop, 0):]
        s.version += 1
