"""Training windows for recovery: drawn from the calibration mix, apart from the windows pruning scored on.

A budget of ``tokens`` becomes ``RecoveryConfig.num_windows`` windows of ``seq_len`` tokens, split among the
mix's domains by weight (:func:`~hf_prune.data.windows.allocate_counts`, as for calibration). Each domain's
windows are every window its token stream holds (:meth:`~hf_prune.data.calibration.Calibration.pools`), drawn in
random order without repeats; only a domain whose stream is shorter than its share starts another pass (another
order) when ``allow_repeat`` is on (:func:`~hf_prune.data.windows.draw_windows` with ``passes``). The seed is
derived from ``RecoveryConfig.seed`` and the word ``recovery``, so the draw differs from the scoring and
compensation draws (seeds ``PruneConfig.seed + round``).
"""

from __future__ import annotations

from typing import Any

from ..data.calibration import as_calibration
from ..data.windows import CalibrationWindows, allocate_counts, derived_seed, draw_windows
from ..errors import RecoveryError
from .config import RecoveryConfig

__all__ = ["training_windows", "recovery_seed"]


def recovery_seed(seed: int) -> int:
    """The seed of the training draw: a hash of ``seed``, so it never equals a scoring round's small seed."""
    return derived_seed(seed, "recovery")


def _check(name: str, available: int, count: int, allow_repeat: bool) -> None:
    if available == 0:
        raise RecoveryError(f"domain {name!r} holds no complete window; use a shorter recovery seq_len.")
    if count > available and not allow_repeat:
        raise RecoveryError(
            f"domain {name!r} gives {available} windows but the recovery budget needs {count} of it without "
            f"repeating; lower recovery tokens, add text, or allow repetition (allow_repeat=True).")


def training_windows(calibration: Any, tokenizer: Any, config: RecoveryConfig) -> CalibrationWindows:
    """The ``config.num_windows`` training windows of a recovery run (see the module docstring).

    ``calibration``: anything :func:`~hf_prune.data.calibration.as_calibration` accepts that holds windows (a mix,
    windows, a token tensor).

    Raises:
        RecoveryError: the data cannot supply the budget (a domain too small with ``allow_repeat=False``, a domain
            shorter than one window, windows of another length) or is of an unknown kind.
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
    counts = allocate_counts({d: w for d, (w, _) in pools.items()}, config.num_windows)
    for name, (_, pool) in pools.items():
        if counts[name]:
            _check(name, pool.shape[0], counts[name], config.allow_repeat)
    return draw_windows({d: pool for d, (_, pool) in pools.items()}, counts, recovery_seed(config.seed), passes=True,
                        spec=data.mix.to_dict() if data.mix is not None else None)
