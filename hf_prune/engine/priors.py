"""Allocation priors chosen from the model itself: ``attention_weight="auto"`` / ``layer_balance="auto"``.

The priors stand in for what first-order scores miss (a head costs more than its score says; removing many
channels of one layer costs more than their sum). How much they should correct differs between models: on
SmolLM2 ``layer_balance`` 2 is worse than 0 at 40-50%, on Qwen2.5-Coder-0.5B it is better. ``auto`` measures it
instead of assuming it, with no evaluation data: it starts at the method's own priors and, every round, measures
the plans of the current setting and of its neighbours on the grid (one step along each ``auto`` prior) on
calibration windows held back from scoring. It moves to the best neighbour only when that one's held-back loss is
lower by more than ``AUTO_EVIDENCE`` paired standard errors (per-window differences): a small or unlike held-back
set then keeps the method's priors instead of following noise (the full-grid, lowest-loss form lost to the fixed
priors on the offline demo, 6 windows held back). With compensation the candidate is judged as it will be saved,
after its refit (the pruner's ``slice_current`` refits it: what is best before the refit is not what is best after).

Cost per round: one forward pass over the held-back windows per distinct plan among at most five settings (the
current one and up to four neighbours), plus with compensation a solve per layer and plan; the round's log
records it (``StepLog.priors``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..data.calibration import as_calibration
from ..errors import PruningError
from ..format.plan import PruningPlan
from .allocation import Constraints
from .batches import window_losses
from .compensation import DenseStatistics
from .distributed import all_reduce_floats, shard
from .memory import available_bytes
from ..presets import AUTO, AUTO_ATTENTION_WEIGHTS, AUTO_EVIDENCE, AUTO_LAYER_BALANCES, METHODS, is_auto

__all__ = ["is_auto", "check_memory", "start_priors", "candidates", "holdout_windows", "holdout_size",
           "choose_plan"]


def check_memory(model, folds: int = 1) -> None:
    """Refuse judging candidates after the refit when its statistics (``DenseStatistics``, ``folds`` of them with a
    damping chosen by cross-validation) would take more than half the memory available on any device that holds
    layers (before gathering them).

    Raises:
        PruningError: naming both sizes and the device.
    """
    for device, need in DenseStatistics.nbytes(model, folds).items():
        free = available_bytes(device)
        if free is not None and need > free / 2:
            raise PruningError(f"'auto' priors with compensation keep {need / 2**30:.1f} GiB of refit statistics on "
                               f"{device}, more than half the {free / 2**30:.1f} GiB available there: give "
                               "attention_weight and layer_balance as numbers"
                               + (" (or compensation_damping as a number: one X^T X per fold)." if folds > 1 else "."))


def start_priors(config: Any) -> tuple[float, float]:
    """Where ``auto`` starts: the method's own value of each ``auto`` prior (the nearest grid value), a fixed prior
    as given."""
    preset = METHODS[config.method]

    def start(value: float | str, own: float, grid: Sequence[float]) -> float:
        return min(grid, key=lambda g: abs(g - own)) if value == AUTO else float(value)

    return (start(config.attention_weight, preset.attention_weight, AUTO_ATTENTION_WEIGHTS),
            start(config.layer_balance, preset.layer_balance, AUTO_LAYER_BALANCES))


def candidates(attention_weight: float | str, layer_balance: float | str,
               around: tuple[float, float]) -> list[tuple[float, float]]:
    """``around`` first, then the settings one grid step from it along each ``auto`` prior (a fixed one stays)."""
    found = [around]
    for axis, (value, grid) in enumerate(((attention_weight, AUTO_ATTENTION_WEIGHTS),
                                          (layer_balance, AUTO_LAYER_BALANCES))):
        if value != AUTO:
            continue
        at = grid.index(around[axis])
        for step in (-1, 1):
            if 0 <= at + step < len(grid):
                moved = list(around)
                moved[axis] = grid[at + step]
                found.append((moved[0], moved[1]))
    return found


def holdout_size(num_samples: int) -> int:
    """Windows held back for ``auto``: a quarter of the scoring windows, at least 16 (with fewer, a paired
    standard error is itself too noisy to gate a move)."""
    return max(16, num_samples // 4)


def holdout_windows(calibration: Any, tokenizer: Any, num_samples: int, seq_len: int, seed: int) -> torch.Tensor:
    """``[H, seq_len]`` windows of the calibration mix that the scoring draw (same ``num_samples``, ``seq_len``,
    ``seed``) does not contain, in the mix's proportions.

    A larger draw with the same seed contains the scoring windows (each domain's windows are a prefix of one
    seeded permutation), so its other rows are held back. The scoring draw is the one scoring used (a
    :class:`~hf_prune.data.calibration.Calibration` keeps its draws), not drawn again.
    """
    calibration = as_calibration(calibration)
    if calibration is None or calibration.mix is None:
        raise PruningError("attention_weight / layer_balance 'auto' hold back windows of a CalibrationMix; with "
                           "calibration given as tokens, give them as numbers.")
    size = holdout_size(num_samples)
    scoring = calibration.draw(num_samples, seq_len, seed, tokenizer=tokenizer).input_ids
    larger = calibration.draw(num_samples + size, seq_len, seed, tokenizer=tokenizer).input_ids
    seen = {tuple(row.tolist()) for row in scoring}
    held = [row for row in larger if tuple(row.tolist()) not in seen][:size]
    if not held:
        raise PruningError("the calibration mix has no windows left to hold back for 'auto' priors: add text, or "
                           "give attention_weight / layer_balance as numbers.")
    return torch.stack(held)


@torch.no_grad()
def _window_losses(model, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """Loss of each of this rank's held-back windows (fp32, on the CPU)."""
    return torch.cat([window_losses(model, ids).float().cpu() for ids in batches])


def _against(reference: torch.Tensor, losses: torch.Tensor) -> dict[str, float]:
    """This rank's sums for a candidate's mean loss and its paired difference from the reference (ranks add them)."""
    gain = reference - losses
    return {"sum": float(losses.sum()), "count": float(losses.numel()), "gain": float(gain.sum()),
            "gain_sq": float((gain * gain).sum())}


def _standard_error(total: dict[str, float]) -> float:
    """Standard error of the mean paired gain (infinite with fewer than two windows: no evidence)."""
    n = total["count"]
    if n < 2:
        return float("inf")
    mean = total["gain"] / n
    return max(total["gain_sq"] / n - mean * mean, 0.0) ** 0.5 * (n / (n - 1)) ** 0.5 / n ** 0.5


def choose_plan(
    allocate_with: Callable[[Constraints], PruningPlan],
    constraints: Constraints,
    config: Any,
    slice_current: Callable[[PruningPlan], Any],
    windows: torch.Tensor,
    batch_size: int,
    around: tuple[float, float],
) -> tuple[PruningPlan, dict[str, Any]]:
    """The round's plan under ``around`` (the current priors) or, on clear held-back evidence, under its best
    neighbour; and what was measured.

    Args:
        allocate_with: the round's allocation under given constraints (a plan of the current model).
        constraints: the run's constraints; each candidate replaces their two priors.
        slice_current: the model a plan of the current model gives (sliced; with compensation also refit).
        windows: held-back ``[H, seq_len]`` token ids (on the model's input device).
        around: the priors chosen last round (the method's in the first).
    """
    t0 = time.perf_counter()
    plans: dict[str, tuple[tuple[float, float], PruningPlan]] = {}  # plan text -> first priors giving it, plan
    keys = []
    for weight, balance in candidates(config.attention_weight, config.layer_balance, around):
        plan = allocate_with(dataclasses.replace(constraints, attention_weight=weight, layer_balance=balance))
        keys.append(((weight, balance), json.dumps(plan.to_dict(), sort_keys=True)))
        plans.setdefault(keys[-1][1], ((weight, balance), plan))
    stay = keys[0][1]
    totals: dict[str, dict[str, float]] = {}
    if len(plans) > 1:  # one distinct plan: nothing to choose, nothing measured
        batches = shard([windows[i:i + batch_size] for i in range(0, len(windows), batch_size)])
        reference = _window_losses(slice_current(plans[stay][1]), batches)
        for key, (_, plan) in plans.items():
            losses = reference if key == stay else _window_losses(slice_current(plan), batches)
            totals[key] = all_reduce_floats(_against(reference, losses))  # every rank gets the same sums

    def loss(key: str) -> float | None:
        return totals[key]["sum"] / max(totals[key]["count"], 1.0) if key in totals else None

    # min() keeps the first of equal losses: the choice is deterministic.
    best = min(plans, key=lambda k: loss(k) or 0.0)
    gain = totals[best]["gain"] / max(totals[best]["count"], 1.0) if totals else 0.0
    error = _standard_error(totals[best]) if totals else float("inf")
    chosen = best if best != stay and gain > AUTO_EVIDENCE * error else stay
    (weight, balance), plan = plans[chosen]
    return plan, {"attention_weight": weight, "layer_balance": balance, "loss": loss(chosen),
                  "from": {"attention_weight": around[0], "layer_balance": around[1]},
                  # the best candidate's mean held-back gain over staying, and its paired standard error
                  "gain": gain, "standard_error": error if error != float("inf") else None, "moved": chosen != stay,
                  "plans_measured": len(totals), "seconds": time.perf_counter() - t0,
                  "candidates": [{"attention_weight": w, "layer_balance": b, "loss": loss(k)} for (w, b), k in keys]}
