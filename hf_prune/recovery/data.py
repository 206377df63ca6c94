"""Training windows for recovery: drawn from the calibration mix, apart from the windows pruning scored on.

A budget of ``tokens`` becomes ``RecoveryConfig.num_windows`` windows of ``seq_len`` tokens, split among the
mix's domains by weight (:func:`~hf_prune.data.windows.allocate_counts`, as for calibration). Each domain's
windows are every window its token stream holds (:meth:`~hf_prune.data.calibration.Calibration.pools`), drawn in
random order without repeats; only a domain whose stream is shorter than its share starts another pass (another
order) when ``allow_repeat`` is on (:func:`~hf_prune.data.windows.draw_windows` with ``passes``). The seed is
derived from ``RecoveryConfig.seed`` and the word ``recovery``, so the draw differs from the scoring and
compensation draws (seeds ``PruneConfig.seed + round``).

Before the draw, ``RecoveryConfig.held_back`` windows are taken out of the pools (split among the domains by
weight, at least one each, chosen in a seeded order of their own): the held-back set the run is judged on
(:mod:`hf_prune.recovery.guard`). Training windows come from what is left, so no held-back window is ever trained
on, not even when the training draw repeats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data.calibration import as_calibration
from ..data.windows import CalibrationWindows, allocate_counts, derived_seed, draw_windows
from ..errors import RecoveryError
from .config import RecoveryConfig

__all__ = ["training_windows", "recovery_windows", "RecoveryWindows", "recovery_seed"]


def recovery_seed(seed: int) -> int:
    """The seed of the training draw: a hash of ``seed``, so it never equals a scoring round's small seed."""
    return derived_seed(seed, "recovery")


@dataclass
class RecoveryWindows:
    """The windows of a recovery run: ``train`` (``config.num_windows`` of them) and ``held_back`` (``None`` when
    ``config.held_back`` is 0), disjoint rows of the same domain pools."""

    train: CalibrationWindows
    held_back: CalibrationWindows | None = None


def _check(name: str, available: int, count: int, allow_repeat: bool) -> None:
    if available == 0:
        raise RecoveryError(f"domain {name!r} holds no complete window; use a shorter recovery seq_len.")
    if count > available and not allow_repeat:
        raise RecoveryError(
            f"domain {name!r} gives {available} windows but the recovery budget needs {count} of it without "
            f"repeating; lower recovery tokens, add text, or allow repetition (allow_repeat=True).")


def _held_back_counts(weights: dict[str, float], total: int) -> dict[str, int]:
    """``total`` held-back windows split by weight, every domain at least one (a small mix may get more)."""
    if total == 0:
        return dict.fromkeys(weights, 0)
    return {d: max(1, n) for d, n in allocate_counts(weights, total).items()}


def _split(pools: dict[str, tuple[float, torch.Tensor]], config: RecoveryConfig, seed: int):
    """(training pools, held-back windows or None): each domain's held-back rows out of its pool."""
    counts = _held_back_counts({d: w for d, (w, _) in pools.items()}, config.held_back)
    train, held = {}, {}
    for name, (_, pool) in pools.items():
        n = counts[name]
        if n and pool.shape[0] <= n:
            raise RecoveryError(f"domain {name!r} gives {pool.shape[0]} windows: too few to hold back {n} and train on "
                                "the rest; lower recovery held_back, add text, or use a shorter seq_len.")
        order = torch.randperm(pool.shape[0], generator=torch.Generator().manual_seed(derived_seed(seed, name)))
        held[name], train[name] = pool[order[:n]], pool[order[n:].sort().values]
    if not config.held_back:
        return train, None
    return train, draw_windows(held, counts, seed)


def recovery_windows(calibration: Any, tokenizer: Any, config: RecoveryConfig) -> RecoveryWindows:
    """The training and held-back windows of a recovery run (see the module docstring).

    ``calibration``: anything :func:`~hf_prune.data.calibration.as_calibration` accepts that holds windows (a mix,
    windows, a token tensor).

    Raises:
        RecoveryError: the data cannot supply the budget (a domain too small with ``allow_repeat=False``, a domain
            shorter than one window or than its held-back share, windows of another length) or is of an unknown
            kind.
    """
    data = as_calibration(calibration)
    if data is None:
        raise RecoveryError("recovery needs training data: a CalibrationMix, CalibrationWindows or token ids.")
    if data.mix is not None and tokenizer is None:
        raise RecoveryError("recovery from a CalibrationMix needs the tokenizer.")
    pools = data.pools(config.seq_len, tokenizer)
    length = next(iter(pools.values()))[1].shape[1]
    if length != config.seq_len:
        raise RecoveryError(f"the given windows hold {length} tokens but recovery seq_len is {config.seq_len}; "
                            "pass a CalibrationMix or matching windows.")
    for name, (_, pool) in pools.items():
        _check(name, pool.shape[0], 0, True)
    weights = {d: w for d, (w, _) in pools.items()}
    pools, held_back = _split(pools, config, derived_seed(config.seed, "recovery held back"))
    counts = allocate_counts(weights, config.num_windows)
    for name, pool in pools.items():
        if counts[name]:
            _check(name, pool.shape[0], counts[name], config.allow_repeat)
    spec = data.mix.to_dict() if data.mix is not None else None
    train = draw_windows(pools, counts, recovery_seed(config.seed), passes=True, spec=spec)
    if held_back is not None:
        held_back.spec = spec
    return RecoveryWindows(train, held_back)


def training_windows(calibration: Any, tokenizer: Any, config: RecoveryConfig) -> CalibrationWindows:
    """The ``config.num_windows`` training windows of a recovery run (:func:`recovery_windows` without the
    held-back set)."""
    return recovery_windows(calibration, tokenizer, config).train
