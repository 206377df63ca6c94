"""Schedules: the sparsity the model has after each scoring round.

A schedule is any callable ``(targets, steps) -> sparsities`` (sorted levels in (0, 1), the method's number of
rounds) returning a non-decreasing list that ends at the highest target and passes through every target.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import PruningError

__all__ = ["Schedule", "linear_schedule", "get_schedule", "check_schedule"]

Schedule = Callable[[Sequence[float], int], Sequence[float]]


def linear_schedule(targets: Sequence[float], steps: int) -> list[float]:
    """A linear ramp to the highest target in ``steps`` rounds, with every target added as a round of its own."""
    top = targets[-1]
    ramp = [round(top * (j + 1) / steps, 6) for j in range(steps)]
    return sorted(set(ramp) | set(targets))


_SCHEDULES: dict[str, Schedule] = {"linear": linear_schedule}


def get_schedule(schedule: str | Schedule) -> Schedule:
    """A schedule by name (see :data:`hf_prune.presets.SCHEDULES`) or the callable itself."""
    return _SCHEDULES[schedule] if isinstance(schedule, str) else schedule


def check_schedule(points: Sequence[float], targets: Sequence[float]) -> list[float]:
    """The schedule's points as floats, refused unless non-decreasing, in (0, 1) and through every target."""
    points = [float(p) for p in points]
    if not points or any(not 0 < p < 1 for p in points) or points != sorted(points):
        raise PruningError(f"a schedule must give non-decreasing sparsities in (0, 1); got {points}.")
    missing = [t for t in targets if t not in points]
    if missing or points[-1] != targets[-1]:
        raise PruningError(f"the schedule {points} must pass through every target {list(targets)} and end at the last.")
    return points
