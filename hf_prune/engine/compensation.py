"""Weight compensation: refit what a pruned layer keeps so that its output stays what the dense layer gave.

Removing heads or channels drops their contribution to the layer's output projections (``o_proj`` for
attention, ``down_proj`` for the MLP). With ``X`` the projection's input activations of the *dense* layer on
calibration text (all heads / channels) and ``S`` the kept columns, the kept weights are refit by damped least
squares (OSSCAR, SlimGPT)::

    W'_S = argmin ||X W^T - X_S W'^T||^2 + lam ||W' - P||^2 = (W H[:, S] + lam P) (H_SS + lam I)^-1,   H = X^T X

in fp32, with ``lam = damping * mean(diag H)`` and ``P`` what the damping shrinks toward (``compensation_toward``):
``W_S``, the kept columns' own weights (``"kept"``: where the calibration text says little, the layer stays as the
plan sliced it), or zero (``"zero"``: plain ridge). ``compensation_damping="auto"`` chooses ``lam`` per projection
by leave-one-domain-out cross-validation: fit on every calibration domain but one, measure the error on that one,
from per-domain ``H`` (exact, no second pass); the grid's ``inf`` keeps ``W_S``. Calibration from a single domain
(or plain token ids) is cross-validated over folds of windows instead. Only ``H`` is accumulated (forward
hooks, fp32, one layer's matrices in memory at a time), never the activations. Targets:

- ``"sequential"`` (SparseGPT / OSSCAR): layer by layer on the *pruned, already compensated* model's own inputs,
  so a layer also corrects what earlier layers could not restore;
- ``"dense"``: every layer on the dense model's inputs, independently;
- ``"stream"``: layer by layer on the pruned model's own inputs, fit to the *dense model's* hidden states after
  the layer (its residual stream included): ``min ||(h_d + f_d(h_d)) - h_p - X_p,S W'^T||``, so each layer also
  pulls the pruned model's residual stream back toward the dense one's. It needs ``X_p^T T`` (inputs x hidden,
  with ``T`` that target) beside ``H``, and both models' hidden states.

:func:`compensate` recomputes it for any plan: a saved plan plus the calibration spec reproduce the checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..config import COMPENSATION_MAX_FOLDS, PruneConfig
from ..data.calibration import as_calibration
from ..errors import PruningError
from ..format.geometry import head_dim_of
from ..format.plan import PruningPlan, ResolvedLayer
from ..format.slicing import apply_plan
from .dispatch import redispatch
from .distributed import all_reduce_tensor, shard, world_size

__all__ = ["compensate", "refit", "solve", "choose_damping", "CompensationData", "compensation_batches",
           "DenseStatistics", "RefitRule", "AUTO_DAMPINGS", "MAX_FOLDS", "WINDOW_FOLDS"]

logger = logging.getLogger(__name__)

_MAX_DAMPING_RAISES = 6


#: What ``compensation_damping="auto"`` chooses from, per projection; ``inf`` (toward ``"kept"`` only) is no refit.
AUTO_DAMPINGS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, math.inf)
#: At most this many cross-validation folds (each keeps its own ``X^T X``): more domains share folds.
MAX_FOLDS = COMPENSATION_MAX_FOLDS
#: Folds of windows dealt in turn when the calibration has fewer than two domains.
WINDOW_FOLDS = 4


def refit(weight: torch.Tensor, gram: torch.Tensor, keep: torch.Tensor, damping: float, *, toward: str = "zero",
          where: str = "") -> torch.Tensor:
    """``(W H[:, keep] + lam P) (H[keep, keep] + lam I)^-1`` (see the module docstring), in the gram's precision;
    ``P`` is ``W[:, keep]`` toward ``"kept"``, zero toward ``"zero"``.

    Raises:
        PruningError: the statistics hold NaN/inf, or no damping makes the system solvable.
    """
    _check_finite(gram, where)
    weight = weight.detach().to(gram.dtype)
    return solve(gram, gram[keep] @ weight.T, keep, damping, prior=_prior(weight, keep, toward), where=where)


def _prior(weight: torch.Tensor, keep: torch.Tensor, toward: str) -> torch.Tensor | None:
    return weight[:, keep.to(weight.device)] if toward == "kept" else None


def solve(gram: torch.Tensor, cross: torch.Tensor, keep: torch.Tensor, damping: float, *,
          prior: torch.Tensor | None = None, where: str = "") -> torch.Tensor:
    """The weight ``W'`` [out, len(keep)] of ``min ||T - X_S W'^T||^2 + lam ||W' - P||^2`` from ``H = X^T X``,
    ``cross = X_S^T T`` [len(keep), out] and ``prior = P`` [out, len(keep)] (``None``: zero):
    ``W'^T = (H_SS + lam I)^-1 (cross + lam P^T)``, ``lam = damping * mean(diag H)``; damping ``inf`` gives ``P``.

    A system that is not positive definite raises the damping tenfold (logged) until it is.

    Raises:
        PruningError: the statistics hold NaN/inf, or no damping makes the system solvable.
    """
    _check_finite(gram, where)
    _check_finite(cross, where)
    if math.isinf(damping):
        if prior is None:
            raise PruningError(f"{where}: an infinite damping toward zero removes the layer's output; it is only "
                               "meaningful toward the kept weights.")
        return prior.clone()
    system = gram[keep][:, keep]
    scale = gram.diagonal().mean().clamp_min(torch.finfo(gram.dtype).tiny)
    eye = torch.eye(len(keep), dtype=gram.dtype, device=gram.device)
    lam = damping
    for _ in range(_MAX_DAMPING_RAISES):
        shift = lam * scale
        factor, info = torch.linalg.cholesky_ex(system + shift * eye)
        if int(info) == 0:
            rhs = cross if prior is None else cross + shift * prior.T.to(cross.device)
            solution = torch.cholesky_solve(rhs, factor).T
            if torch.isfinite(solution).all():
                return solution
        new = max(lam * 10, 1e-6)
        logger.warning("%s: the compensation system is not positive definite at damping %g; retrying with %g.",
                       where, lam, new)
        lam = new
    raise PruningError(f"{where}: compensation found no solvable system up to damping {lam:g}; use more "
                       "compensation_samples or a larger compensation_damping.")


def choose_damping(grams: Mapping[str, torch.Tensor], crosses: Mapping[str, torch.Tensor], keep: torch.Tensor,
                   grid: Sequence[float], *, prior: torch.Tensor | None = None, walk: bool = True,
                   where: str = "") -> float:
    """The damping of ``grid`` whose solution, fit on every fold but one, best reconstructs the one left out,
    summed over the folds (leave-one-fold-out cross-validation, exact from per-fold statistics; the folds are the
    calibration domains: :func:`_label_folds`).

    ``grams[d] = X_d^T X_d`` [in, in] and ``crosses[d] = X_{d,S}^T T_d`` [len(keep), out] of fold ``d``. The left-out
    error of ``W'`` is ``||T_d - X_{d,S} W'^T||^2``, measured against ``P`` (``D = W' - P``) so that it does not
    cancel against ``||T_d||^2`` in fp32: ``tr(D G D^T) - 2 tr(D (C - G P^T))`` with ``G``, ``C`` the left-out ones.

    The grid is walked from the most damped end (``inf``, the prior, costs nothing) down, and the walk stops at the
    first damping that scores worse than the best so far: the left-out error falls from the prior to the best
    damping and rises past it as the fit overfits the other folds, so what is not walked would not be chosen
    (where the error is not so shaped, the walk keeps the better of what it saw; ``walk=False`` scores the whole
    grid, what the walk is checked against). Each damping walked costs one Cholesky solve per fold (no dearer at
    these sizes than one eigendecomposition per fold serving the whole grid: 2 CPU cores, 3400 kept of Qwen's 4864
    MLP inputs, ``eigh`` 3.0 s against 0.45 s per solve and error).
    """
    if len(grams) < 2:
        raise PruningError(f"{where}: choosing the damping by cross-validation needs two or more folds.")
    total_gram, total_cross = sum(grams.values()), sum(crosses.values())
    scores: dict[int, float] = {}
    for j in sorted(range(len(grid)), key=lambda j: -grid[j]):  # from the most damped (inf: no solve) down
        scores[j] = sum(_left_out_change(grams[fold], crosses[fold], total_gram, total_cross, keep, grid[j], prior,
                                         where) for fold in grams)
        if walk and len(scores) > 1 and scores[j] > min(scores.values()):
            break  # past the best: less damping only overfits more (see the docstring)
    best = min(scores, key=scores.__getitem__)
    logger.info("%s: damping %g chosen by leave-one-fold-out over %d folds (errors relative to the prior: %s).",
                where, grid[best], len(grams), ", ".join(f"{grid[j]:g}: {e:.4g}" for j, e in scores.items()))
    return grid[best]


def _left_out_change(gram: torch.Tensor, cross: torch.Tensor, total_gram: torch.Tensor, total_cross: torch.Tensor,
                     keep: torch.Tensor, damping: float, prior: torch.Tensor | None, where: str) -> float:
    """A fold's (``gram``, ``cross``) left-out error of the refit fit on the other folds (the totals minus this
    fold), minus that of the prior (see :func:`choose_damping`)."""
    if math.isinf(damping):
        return 0.0
    left_out = gram[keep][:, keep]
    base = torch.zeros_like(cross.T) if prior is None else prior.to(gram.dtype)
    step = solve(total_gram - gram, total_cross - cross, keep, damping, prior=prior, where=where) - base
    return float(((step @ left_out) * step).sum() - 2 * (step * (cross - left_out @ base.T).T).sum())


def _check_finite(statistics: torch.Tensor, where: str) -> None:
    if not torch.isfinite(statistics).all():
        raise PruningError(f"{where}: the calibration activations hold NaN or inf; compensation is refused.")


def _rows(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The real tokens of ``x`` [B, T, d] as rows [N, d], in fp32 (or the input's precision if higher)."""
    if mask is not None:
        x = x[mask.to(x.device).bool()]
    x = x.reshape(-1, x.shape[-1])
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _accumulate(gram: torch.Tensor | None, x: torch.Tensor, mask: torch.Tensor | None,
                y: torch.Tensor | None = None) -> torch.Tensor:
    """``gram + X^T X`` (or ``+ X^T Y`` when ``y`` is given) over the real tokens of ``x`` [B, T, d]."""
    x = _rows(x, mask)
    y = x if y is None else _rows(y, mask)
    if gram is None:
        gram = torch.zeros(x.shape[1], y.shape[1], dtype=x.dtype, device=x.device)
    return gram.addmm_(x.T, y)


def _reduced(gram: torch.Tensor) -> torch.Tensor:
    """``X^T X`` summed over the data-parallel ranks (each saw its own windows); unchanged in one process."""
    return all_reduce_tensor(gram)


class _Moments:
    """``X^T X`` (and ``X^T T`` for the ``stream`` target) of one projection's input over the calibration tokens;
    per fold when the damping is chosen by cross-validation (``folds``), the whole set's being their sum."""

    def __init__(self, folds: Sequence[str] | None) -> None:
        self.folds: list[str | None] = list(folds) if folds else [None]
        self.grams: dict[str | None, torch.Tensor] = {}
        self.crosses: dict[str | None, torch.Tensor] = {}

    def add(self, x: torch.Tensor, mask: torch.Tensor | None, t: torch.Tensor | None, labels: list[str] | None) -> None:
        for fold in self.folds:
            rows = slice(None) if fold is None else [i for i, label in enumerate(labels) if label == fold]
            if not rows and fold is not None:
                continue
            part = None if mask is None else mask[rows]
            self.grams[fold] = _accumulate(self.grams.get(fold), x[rows], part)
            if t is not None:
                self.crosses[fold] = _accumulate(self.crosses.get(fold), x[rows], part, t[rows])

    def reduce(self) -> None:
        """Sum over the data-parallel ranks (each saw its own windows; a fold it did not see counts zero)."""
        for held in (self.grams, self.crosses):
            if held:
                like = next(iter(held.values()))
                for fold in self.folds:
                    held[fold] = _reduced(held.get(fold, torch.zeros_like(like)))

    def solve(self, weight: torch.Tensor, cols: torch.Tensor, rule: RefitRule, where: str) -> torch.Tensor:
        """The refit weight of the kept columns ``cols`` of ``weight`` (the dense projection's) under ``rule``."""
        gram = sum(self.grams.values())
        _check_finite(gram, where)
        weight = weight.detach().to(gram.dtype)
        crosses = {d: self.crosses[d][cols] if self.crosses else g[cols] @ weight.T for d, g in self.grams.items()}
        prior = _prior(weight, cols, rule.toward)
        damping = rule.damping
        if damping is None:
            damping = choose_damping(self.grams, crosses, cols, rule.grid, prior=prior, where=where)
        return solve(gram, sum(crosses.values()), cols, damping, prior=prior, where=where)


@dataclass(frozen=True)
class RefitRule:
    """How a projection is refit: ``damping`` (``None``: chosen per projection on :data:`AUTO_DAMPINGS` by
    leave-one-fold-out cross-validation) and what it shrinks toward (``"kept"`` or ``"zero"``); the defaults are
    :class:`~hf_prune.PruneConfig`'s."""

    damping: float | None = None
    toward: str = "kept"

    @classmethod
    def of(cls, config: PruneConfig) -> RefitRule:
        damping = config.compensation_damping
        return cls(None if isinstance(damping, str) else float(damping), config.compensation_toward)  # str: "auto"

    @property
    def grid(self) -> tuple[float, ...]:
        return AUTO_DAMPINGS if self.toward == "kept" else tuple(d for d in AUTO_DAMPINGS if math.isfinite(d))


def _tokens(batches: list[dict[str, Any]]) -> int:
    return int(sum(b["attention_mask"].sum() if b.get("attention_mask") is not None else b["input_ids"].numel()
                   for b in batches))


class CompensationData:
    """The calibration batches compensation runs on (drawn once, so every level is refit on the same text).

    In a data-parallel run each rank keeps its share of the batches (:func:`~hf_prune.engine.distributed.shard`);
    ``num_tokens`` still counts every rank's. ``rule``: how the run refits (what :class:`DenseStatistics` built on
    these batches refits by). ``folds``: the groups of windows a damping chosen by cross-validation leaves out in
    turn (sorted; each batch carries its windows' fold under ``"folds"``); ``None`` for a single window.
    """

    def __init__(self, batches: list[dict[str, Any]], rule: RefitRule | None = None) -> None:
        self.rule = rule or RefitRule()
        if not batches or any("input_ids" not in b for b in batches):
            raise PruningError("compensation needs calibration batches with input_ids (token windows or "
                               "multiple-choice sequences).")
        if len(batches) < world_size():
            raise PruningError(f"compensation has {len(batches)} calibration batches for {world_size()} processes; "
                               "raise compensation_samples or lower batch_size.")
        self.num_tokens = _tokens(batches)
        # Labelled whatever the rule: a refit by another rule may reuse these batches (compensate(data=...)).
        self.folds = _label_folds(batches, needed=self.rule.damping is None)
        self.batches = shard(batches)  # after labelling: a fold is the same windows on every rank


def _label_folds(batches: list[dict[str, Any]], needed: bool) -> list[str] | None:
    """Put each window's cross-validation fold under ``batch["folds"]``; returns the folds (sorted), ``None`` for a
    single window (refused when ``needed``).

    The folds are the calibration domains, so the damping is chosen by how a refit fit on some domains does on
    another; beyond :data:`MAX_FOLDS` domains, domain ``i`` (sorted) joins fold ``i % MAX_FOLDS`` (the per-fold
    statistics stay bounded). Windows from fewer than two domains (token ids, one dataset) have no other domain to
    be judged on: they are dealt into :data:`WINDOW_FOLDS` folds in turn (then the choice is in-domain).
    """
    labels = [b.get("domains") for b in batches]
    domains = sorted({d for window in labels if window is not None for d in window})
    if len(domains) >= 2 and all(window is not None for window in labels):
        fold = {d: d if len(domains) <= MAX_FOLDS else f"domains {i % MAX_FOLDS}" for i, d in enumerate(domains)}
        for batch, window in zip(batches, labels):
            batch["folds"] = [fold[d] for d in window]
        return sorted(set(fold.values()))
    windows = sum(len(b["input_ids"]) for b in batches)
    if windows < 2 and not needed:
        return None
    if windows < 2:
        raise PruningError("compensation_damping='auto' chooses the damping by cross-validation over calibration "
                           f"windows: {windows} window is too few; raise compensation_samples or give a number.")
    index = 0
    for batch in batches:
        batch["folds"] = [f"windows {(index + j) % WINDOW_FOLDS}" for j in range(len(batch["input_ids"]))]
        index += len(batch["input_ids"])
    return sorted({f for b in batches for f in b["folds"]})


def compensation_batches(calibration: Any, tokenizer: Any, config: PruneConfig, device: torch.device) -> CompensationData:
    """``config.compensation_samples`` windows of ``config.seq_len`` tokens (a mix), or the given batches."""
    data = as_calibration(calibration)
    if data is None:
        raise PruningError("compensation needs calibration data (its statistics are the activations on it).")
    batches = data.batches(config.compensation_samples, config.seq_len, config.seed, config.batch_size, device,
                           tokenizer=tokenizer)
    return CompensationData([{k: v for k, v in b.items() if k in ("input_ids", "attention_mask", "domains")}
                             for b in batches], RefitRule.of(config))


class _Stop(Exception):
    pass


def _layer_inputs(model, batches: list[dict[str, Any]]) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """The hidden states and keyword arguments the model gives its first decoder layer, per batch."""
    hidden, kwargs = [], []

    def catch(module, args, kw):
        hidden.append(args[0] if args else kw.pop("hidden_states"))
        kwargs.append({k: v for k, v in kw.items() if k in ("attention_mask", "position_ids", "position_embeddings")})
        raise _Stop

    handle = model.model.layers[0].register_forward_pre_hook(catch, with_kwargs=True)
    try:
        for batch in batches:
            try:
                model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return hidden, kwargs


def _columns(heads: list[int], head_dim: int, device) -> torch.Tensor:
    return torch.tensor([h * head_dim + i for h in heads for i in range(head_dim)], dtype=torch.long, device=device)


def _assign(projection: torch.nn.Module, weight: torch.Tensor) -> None:
    projection.weight.data.copy_(weight.to(projection.weight.dtype))


class _LayerRefit:
    """Refits one decoder layer of the pruned model against the same layer of the dense model."""

    def __init__(self, index: int, dense, pruned, keep: ResolvedLayer, head_dim: int, rule: RefitRule,
                 labels: list[list[str] | None], folds: list[str] | None) -> None:
        self.index, self.dense, self.pruned, self.keep = index, dense, pruned, keep
        self.head_dim, self.rule = head_dim, rule
        self.labels, self.folds = labels, (folds if rule.damping is None else None)

    def _o_proj_input(self, h: torch.Tensor, kw: dict[str, Any]) -> torch.Tensor:
        """The dense ``o_proj``'s input (every head's output) on ``h``, kept by a forward pre-hook."""
        seen: list[torch.Tensor] = []
        handle = self.dense.self_attn.o_proj.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        try:
            self.attention(h, kw, self.dense)
        finally:
            handle.remove()
        return seen[0]

    def _down_proj_input(self, h: torch.Tensor) -> torch.Tensor:
        """The dense ``down_proj``'s input (every channel) on the residual stream ``h``."""
        mlp, x = self.dense.mlp, self.dense.post_attention_layernorm(h)
        return mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)

    def attention(self, h: torch.Tensor, kw: dict[str, Any], layer) -> torch.Tensor:
        to = lambda t: t.to(h.device) if isinstance(t, torch.Tensor) else t  # noqa: E731
        embeddings = kw.get("position_embeddings")
        out, _ = layer.self_attn(hidden_states=layer.input_layernorm(h), attention_mask=to(kw.get("attention_mask")),
                                 position_ids=to(kw.get("position_ids")),
                                 position_embeddings=tuple(map(to, embeddings)) if embeddings is not None else None)
        return h + out

    def mlp(self, h: torch.Tensor, layer) -> torch.Tensor:
        return h + layer.mlp(layer.post_attention_layernorm(h))

    def _fit(self, proj: torch.nn.Module, target: torch.nn.Module, cols: torch.Tensor, inputs, where: str) -> None:
        """Refit ``target`` (the pruned projection, columns ``cols`` of the dense ``proj``) from ``inputs``:
        ``(X, T, mask)`` per batch, ``T`` None to fit ``X W^T`` (the dense projection's own output)."""
        moments = _Moments(self.folds)
        for (x, t, mask), labels in zip(inputs, self.labels):
            moments.add(x, mask, t, labels)
        moments.reduce()
        _assign(target, moments.solve(proj.weight, cols, self.rule, where))

    def run(self, hidden: list[torch.Tensor], kwargs: list[dict], masks: list, target: str,
            dense_hidden: list[torch.Tensor] | None = None, drifted: bool = False):
        """Refit this layer; returns the hidden states after it (of the model the target follows) and, for the
        ``stream`` target, the dense model's hidden states after it."""
        dense, pruned, keep = self.dense, self.pruned, self.keep
        device = next(dense.parameters()).device  # layers of a dispatched model may sit on different devices
        stream = target == "stream"
        _move(hidden, device)
        if stream:
            _move(dense_hidden, device)
        follow = dense if target == "dense" else pruned
        where = f"layer {self.index}"
        heads_removed, channels_removed = _removed(keep, dense, self.head_dim)
        if pruned.self_attn is not None and (heads_removed or (stream and drifted)):
            cols = _columns(keep.query_heads, self.head_dim, device)
            after = [self.attention(h, kw, dense) for h, kw in zip(dense_hidden, kwargs)] if stream else None
            inputs = ((self._o_proj_input(h, kw), (after[i] - h) if stream else None, mask)
                      for i, (h, kw, mask) in enumerate(zip(hidden, kwargs, masks)))
            self._fit(dense.self_attn.o_proj, pruned.self_attn.o_proj, cols, inputs, f"{where} o_proj")
            dense_hidden = after
        elif stream:
            _update(dense_hidden, lambda j, h: self.attention(h, kwargs[j], dense))
        if follow.self_attn is not None:
            _update(hidden, lambda j, h: self.attention(h, kwargs[j], follow))
        drifted = drifted or heads_removed  # the MLP's input already differs from the dense model's
        if stream:
            _update(dense_hidden, lambda j, h: self.mlp(h, dense))
        if pruned.mlp is not None and (channels_removed or (stream and drifted)):
            cols = torch.tensor(keep.mlp_channels, dtype=torch.long, device=device)
            inputs = ((self._down_proj_input(h), (dense_hidden[i] - h) if stream else None, mask)
                      for i, (h, mask) in enumerate(zip(hidden, masks)))
            self._fit(dense.mlp.down_proj, pruned.mlp.down_proj, cols, inputs, f"{where} down_proj")
        if follow.mlp is not None:
            _update(hidden, lambda j, h: self.mlp(h, follow))
        return hidden, dense_hidden


def _removed(keep: ResolvedLayer, dense, head_dim: int) -> tuple[bool, bool]:
    """Whether the plan removes query heads, and MLP channels, of this (dense) layer."""
    return (len(keep.query_heads) < dense.self_attn.q_proj.out_features // head_dim,
            len(keep.mlp_channels) < dense.mlp.gate_proj.out_features)


def _move(states: list[torch.Tensor], device) -> None:
    _update(states, lambda j, h: h.to(device))


def _update(states: list[torch.Tensor], step) -> None:
    """``states[j] = step(j, states[j])`` in place: one batch's states more in memory at a time, not a second list."""
    for j, h in enumerate(states):
        states[j] = step(j, h)


@torch.no_grad()
def _refit_layers(model, pruned, plan: PruningPlan, data: CompensationData, *, rule: RefitRule, target: str,
                  show_progress: bool) -> None:
    from ..format.geometry import layer_shapes

    resolved = plan.resolve(layer_shapes(model))
    hidden, kwargs = _layer_inputs(pruned, data.batches)
    dense_hidden = list(hidden) if target == "stream" else None  # the embeddings are not pruned: same inputs
    masks = [b.get("attention_mask") for b in data.batches]
    labels = [b.get("folds") for b in data.batches]
    head_dim = head_dim_of(model.config)
    drifted = False  # once a layer removed something, the pruned model's residual stream differs from the dense one's
    layers = zip(model.model.layers, pruned.model.layers, resolved)
    for i, (dense, layer, keep) in enumerate(tqdm(list(layers), desc="compensation", unit="layer", leave=False,
                                                    disable=not show_progress)):
        hidden, dense_hidden = _LayerRefit(i, dense, layer, keep, head_dim, rule, labels, data.folds).run(
            hidden, kwargs, masks, target, dense_hidden, drifted)
        drifted = drifted or any(_removed(keep, dense, head_dim))


def compensate(model, plan: PruningPlan, calibration: Any, *, tokenizer: Any = None,
               config: PruneConfig | Mapping[str, Any] | None = None, show_progress: bool = True,
               data: CompensationData | None = None, **overrides: Any):
    """The pruned model of ``plan`` with its kept ``o_proj`` / ``down_proj`` columns refit (see the module docs).

    Args:
        model: the model ``plan`` indexes into (the dense model); left untouched.
        plan: which structures each layer keeps.
        calibration: what :func:`hf_prune.prune` accepts (a mix is drawn with ``config.compensation_samples``
            windows of ``config.seq_len`` tokens and ``config.seed``: the windows a pruning run used).
        config: the run's :class:`~hf_prune.PruneConfig` (``compensation_*`` fields, ``seq_len``, ``seed``,
            ``batch_size``); ``overrides`` replace fields.
        data: batches already drawn (what a :class:`~hf_prune.Pruner` passes), instead of ``calibration``.

    Returns:
        A new pruned model (``PrunedQwen2ForCausalLM`` / ``PrunedQwen3ForCausalLM``), in eval mode.
    """
    config = PruneConfig.coerce(config, **overrides)
    was_training = model.training
    model.eval()
    try:
        if data is None:
            data = compensation_batches(calibration, tokenizer, config, model.get_input_embeddings().weight.device)
        pruned = apply_plan(model, plan).eval()
        _refit_layers(model, pruned, plan, data, rule=RefitRule.of(config), target=config.compensation_target,
                      show_progress=show_progress)
    finally:
        model.train(was_training)
    return redispatch(pruned, model)


class DenseStatistics:
    """``X^T X`` of every dense layer's ``o_proj`` and ``down_proj`` inputs on the compensation batches: what the
    ``"dense"`` target refits from. Kept, any plan is refit by a solve per layer without running the model
    again (:meth:`refit`, by the batches' :class:`RefitRule`), which is how ``"auto"`` priors judge each candidate
    plan after its refit.

    Memory: ``4 * sum over layers of (intermediate^2 + (heads * head_dim)^2)`` bytes (fp32), e.g. 0.3 GB for
    SmolLM2-135M, 2.4 GB for Qwen2.5-0.5B, ~40 GB for a 7B model; times the number of cross-validation folds when the
    damping is chosen by cross-validation (``compensation_damping="auto"``: one ``X^T X`` per fold, at most
    :data:`MAX_FOLDS`).
    """

    @staticmethod
    def nbytes(model, folds: int = 1) -> dict[torch.device, int]:
        """The memory the statistics of ``model`` take on each device (each sits beside its layer), before
        gathering them: fp32, or the projection's wider dtype; one ``X^T X`` per cross-validation fold."""
        need: dict[torch.device, int] = {}
        for block in _projections(model).values():
            width = torch.promote_types(block.weight.dtype, torch.float32).itemsize
            need[block.weight.device] = need.get(block.weight.device, 0) + folds * width * block.in_features ** 2
        return need

    @torch.no_grad()
    def __init__(self, model, data: CompensationData) -> None:
        self.model, self.rule = model, data.rule
        self.per_fold = data.rule.damping is None  # cross-validation needs each fold's X^T X
        moments = {key: _Moments(data.folds if self.per_fold else None) for key in _projections(model)}
        batch: list[dict[str, Any]] = [{}]

        def hook(key):
            def accumulate(module, args):
                moments[key].add(args[0], batch[0].get("attention_mask"), None, batch[0].get("folds"))
            return accumulate

        handles = [proj.register_forward_pre_hook(hook(key)) for key, proj in _projections(model).items()]
        was_training = model.training
        model.eval()
        try:
            for item in data.batches:
                batch[0] = item
                model.model(input_ids=item["input_ids"], attention_mask=item.get("attention_mask"), use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        for held in moments.values():
            held.reduce()  # every rank saw its own windows
        self.moments = moments

    @torch.no_grad()
    def refit(self, plan: PruningPlan, damping: float | str | None = None):
        """The pruned model of ``plan`` (indices into the dense model) with the ``"dense"`` target's refit;
        ``damping`` replaces the rule's (``"auto"``: chosen per projection, which needs per-fold statistics)."""
        from ..format.geometry import layer_shapes

        rule = self.rule
        if damping is not None:
            rule = RefitRule(None if isinstance(damping, str) else float(damping), rule.toward)
        if rule.damping is None and not self.per_fold:
            raise PruningError("a damping chosen by cross-validation needs statistics gathered per fold "
                               "(batches drawn with compensation_damping='auto').")
        model = self.model
        pruned = apply_plan(model, plan).eval()
        head_dim = head_dim_of(model.config)
        for i, (dense, layer, keep) in enumerate(zip(model.model.layers, pruned.model.layers,
                                                     plan.resolve(layer_shapes(model)))):
            heads_removed, channels_removed = _removed(keep, dense, head_dim)
            device = dense.self_attn.o_proj.weight.device
            if layer.self_attn is not None and heads_removed:
                cols = _columns(keep.query_heads, head_dim, device)
                _assign(layer.self_attn.o_proj, self.moments[i, "o_proj"].solve(
                    dense.self_attn.o_proj.weight, cols, rule, f"layer {i} o_proj"))
            if layer.mlp is not None and channels_removed:
                cols = torch.tensor(keep.mlp_channels, dtype=torch.long, device=device)
                _assign(layer.mlp.down_proj, self.moments[i, "down_proj"].solve(
                    dense.mlp.down_proj.weight, cols, rule, f"layer {i} down_proj"))
        return redispatch(pruned, model)


def _projections(model) -> dict[tuple[int, str], torch.nn.Module]:
    """Every layer's ``o_proj`` and ``down_proj`` (where the layer has attention / an MLP), by (layer, name)."""
    out = {}
    for i, layer in enumerate(model.model.layers):
        if getattr(layer, "self_attn", None) is not None:
            out[i, "o_proj"] = layer.self_attn.o_proj
        if getattr(layer, "mlp", None) is not None:
            out[i, "down_proj"] = layer.mlp.down_proj
    return out
