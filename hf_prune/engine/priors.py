"""Allocation priors chosen from the model itself: ``attention_weight="auto"`` / ``layer_balance="auto"``.

The priors stand in for what first-order scores miss (a head costs more than its score says; removing many
channels of one layer costs more than their sum). How much they should correct differs between models: on
SmolLM2 ``layer_balance`` 2 is worse than 0 at 40-50%, on Qwen2.5-Coder-0.5B it is better. ``auto`` measures it
instead of assuming it: every round, the plan of each candidate setting is applied to the current model and its
*measured* loss on calibration windows held back from scoring decides (lowest wins). No evaluation data is used.
With compensation the candidate is judged as it will be saved, after its refit (the pruner's ``slice_current``
refits it: what is best before the refit is not what is best after it).

Cost per round: one forward pass over the held-back windows per distinct candidate plan (candidates that give
the same plan share one measurement), plus with compensation a solve per layer and candidate; the round's log
records it (``StepLog.priors``).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..errors import PruningError
from ..format.plan import PruningPlan
from .allocation import Constraints
from .batches import is_mix, window_losses
from .compensation import DenseStatistics
from .distributed import all_reduce_floats, shard
from .memory import available_bytes
from .presets import AUTO, AUTO_ATTENTION_WEIGHTS, AUTO_LAYER_BALANCES

__all__ = ["is_auto", "check_memory", "candidates", "holdout_windows", "holdout_size", "choose_plan"]


def is_auto(config: Any) -> bool:
    """Whether a (resolved) config asks for any prior to be chosen per model."""
    return AUTO in (config.attention_weight, config.layer_balance)


def check_memory(model) -> None:
    """Refuse judging candidates after the refit when its statistics (``DenseStatistics``) would take more than half
    the memory available on the model's device (before gathering them).

    Raises:
        PruningError: naming both sizes.
    """
    need, device = DenseStatistics.nbytes(model), model.get_input_embeddings().weight.device
    free = available_bytes(device)
    if free is not None and need > free / 2:
        raise PruningError(f"'auto' priors with compensation keep {need / 2**30:.1f} GiB of refit statistics, more than "
                           f"half the {free / 2**30:.1f} GiB available on {device}: give attention_weight and "
                           "layer_balance as numbers.")


def candidates(attention_weight: float | str, layer_balance: float | str) -> list[tuple[float, float]]:
    """The ``(attention_weight, layer_balance)`` settings ``auto`` chooses from; a fixed value stays fixed."""
    weights = AUTO_ATTENTION_WEIGHTS if attention_weight == AUTO else (float(attention_weight),)
    balances = AUTO_LAYER_BALANCES if layer_balance == AUTO else (float(layer_balance),)
    return list(itertools.product(weights, balances))


def holdout_size(num_samples: int) -> int:
    """Windows held back for ``auto``: a quarter of the scoring windows, at least 4."""
    return max(4, num_samples // 4)


def holdout_windows(calibration: Any, tokenizer: Any, num_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """``[H, seq_len]`` windows of the calibration mix that the scoring draw (same ``num_samples``, ``seq_len``,
    ``seed``) does not contain, in the mix's proportions.

    A larger draw with the same seed contains the scoring windows (each domain's windows are a prefix of one
    seeded permutation), so its other rows are held back.
    """
    if not is_mix(calibration):
        raise PruningError("attention_weight / layer_balance 'auto' hold back windows of a CalibrationMix; with "
                           f"pre-tokenised calibration ({type(calibration).__name__}) give them as numbers.")
    size = holdout_size(num_samples)
    scoring = calibration.sample(tokenizer, num_samples, seq_len, seed=seed).input_ids
    larger = calibration.sample(tokenizer, num_samples + size, seq_len, seed=seed).input_ids
    seen = {tuple(row.tolist()) for row in scoring}
    held = [row for row in larger if tuple(row.tolist()) not in seen][:size]
    if not held:
        raise PruningError("the calibration mix has no windows left to hold back for 'auto' priors: add text, or "
                           "give attention_weight / layer_balance as numbers.")
    return torch.stack(held)


@torch.no_grad()
def _loss(model, windows: Sequence[torch.Tensor]) -> dict[str, float]:
    """Summed per-window loss and window count of this rank's share (added up over ranks by the caller)."""
    total, count = 0.0, 0
    for ids in windows:
        losses = window_losses(model, ids)
        total, count = total + float(losses.sum()), count + losses.numel()
    return {"sum": total, "count": float(count)}


def choose_plan(
    allocate_with: Callable[[Constraints], PruningPlan],
    constraints: Constraints,
    config: Any,
    slice_current: Callable[[PruningPlan], Any],
    windows: torch.Tensor,
    batch_size: int,
) -> tuple[PruningPlan, dict[str, Any]]:
    """The round's plan under the candidate priors with the lowest held-back loss, and what was measured.

    Args:
        allocate_with: the round's allocation under given constraints (a plan of the current model).
        constraints: the run's constraints; each candidate replaces their two priors.
        slice_current: the model a plan of the current model gives (sliced; with compensation also refit).
        windows: held-back ``[H, seq_len]`` token ids (on the model's input device).
    """
    t0 = time.perf_counter()
    plans: dict[str, tuple[tuple[float, float], PruningPlan]] = {}  # plan text -> first priors giving it, plan
    keys = []
    for weight, balance in candidates(config.attention_weight, config.layer_balance):
        plan = allocate_with(dataclasses.replace(constraints, attention_weight=weight, layer_balance=balance))
        keys.append(((weight, balance), json.dumps(plan.to_dict(), sort_keys=True)))
        plans.setdefault(keys[-1][1], ((weight, balance), plan))
    losses: dict[str, float | None] = dict.fromkeys(plans)
    if len(plans) > 1:  # one distinct plan: nothing to choose, nothing measured
        batches = shard([windows[i:i + batch_size] for i in range(0, len(windows), batch_size)])
        for key, (_, plan) in plans.items():
            total = all_reduce_floats(_loss(slice_current(plan), batches))  # every rank gets the same loss
            losses[key] = total["sum"] / max(total["count"], 1.0)
    # min() keeps the first of equal losses: the choice is deterministic.
    best = min(plans, key=lambda k: losses[k] or 0.0)
    (weight, balance), plan = plans[best]
    return plan, {"attention_weight": weight, "layer_balance": balance, "loss": losses[best],
                  "plans_measured": len(plans) if len(plans) > 1 else 0, "seconds": time.perf_counter() - t0,
                  "candidates": [{"attention_weight": w, "layer_balance": b, "loss": losses[k]} for (w, b), k in keys]}
