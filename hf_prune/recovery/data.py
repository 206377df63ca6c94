"""Training windows for recovery: drawn from the calibration mix, apart from the windows pruning scored on.

A budget of ``tokens`` becomes ``RecoveryConfig.num_windows`` windows of ``seq_len`` tokens, split among the
mix's domains by weight (:func:`~hf_prune.data.windows.allocate_counts`, as for calibration). Each domain's
windows are cut from its cached token stream (:func:`~hf_prune.data.windows.domain_token_stream`) and drawn in
random order without repeats; only a domain whose stream is shorter than its share starts another pass (another
order) when ``allow_repeat`` is on. The seed is derived from ``RecoveryConfig.seed`` and the word ``recovery``, so
the draw differs from the scoring and compensation draws (seeds ``PruneConfig.seed + round``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.windows import CalibrationWindows, _derived_seed, allocate_counts, domain_token_stream, pack_windows
from ..errors import RecoveryError
from .config import RecoveryConfig

__all__ = ["training_windows", "recovery_seed"]


def recovery_seed(seed: int) -> int:
    """The seed of the training draw: a hash of ``seed``, so it never equals a scoring round's small seed."""
    return _derived_seed(seed, "recovery")


def _draw(pool: torch.Tensor, count: int, seed: int, name: str, allow_repeat: bool) -> torch.Tensor:
    """``count`` rows of ``pool`` in a seeded random order, another order per extra pass (if allowed)."""
    available = pool.shape[0]
    if available == 0:
        raise RecoveryError(f"domain {name!r} holds no complete window; use a shorter recovery seq_len.")
    if count > available and not allow_repeat:
        raise RecoveryError(
            f"domain {name!r} gives {available} windows but the recovery budget needs {count} of it without "
            f"repeating; lower recovery tokens, add text, or allow repetition (allow_repeat=True).")
    passes = -(-count // available)
    order = torch.cat([torch.randperm(available, generator=torch.Generator().manual_seed(_derived_seed(seed, f"{name}:{p}")))
                       for p in range(passes)])
    return pool[order[:count]]


def _pools(calibration: Any, tokenizer: Any, seq_len: int) -> dict[str, tuple[float, torch.Tensor]]:
    """``{domain: (weight, [n, seq_len] windows)}`` of a mix, of ready windows, or of a token tensor."""
    if isinstance(calibration, torch.Tensor):
        calibration = CalibrationWindows(calibration.long(), ["calibration"] * calibration.shape[0])
    if isinstance(calibration, CalibrationWindows):
        if calibration.seq_len != seq_len:
            raise RecoveryError(f"the given windows hold {calibration.seq_len} tokens but recovery seq_len is "
                                f"{seq_len}; pass a CalibrationMix or matching windows.")
        return {d: (float(t.shape[0]), t) for d, t in calibration.by_domain().items()}
    if hasattr(calibration, "sources"):  # a CalibrationMix
        if tokenizer is None:
            raise RecoveryError("recovery from a CalibrationMix needs the tokenizer.")
        return {s.name: (s.weight, pack_windows(domain_token_stream(s, tokenizer), seq_len))
                for s in calibration.sources if s.weight > 0}
    raise RecoveryError("recovery data must be a CalibrationMix, CalibrationWindows or a [N, seq_len] tensor of "
                        f"token ids; got {type(calibration).__name__}.")


def training_windows(calibration: Any, tokenizer: Any, config: RecoveryConfig) -> CalibrationWindows:
    """The ``config.num_windows`` training windows of a recovery run (see the module docstring).

    Raises:
        RecoveryError: the data cannot supply the budget (a domain too small with ``allow_repeat=False``, a domain
            shorter than one window) or is of an unknown kind.
    """
    pools = _pools(calibration, tokenizer, config.seq_len)
    counts = allocate_counts({d: w for d, (w, _) in pools.items()}, config.num_windows)
    seed = recovery_seed(config.seed)
    rows, labels = [], []
    for name, (_, pool) in pools.items():
        if counts[name]:
            rows.append(_draw(pool, counts[name], seed, name, config.allow_repeat))
            labels.extend([name] * counts[name])
    # Interleave domains: every batch sees the mix, not one domain after the other.
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(_derived_seed(seed, "\0order")))
    ids = torch.cat(rows)[order].contiguous()
    return CalibrationWindows(input_ids=ids, domains=[labels[i] for i in order.tolist()], seed=seed,
                              spec=calibration.to_dict() if hasattr(calibration, "sources") else None)
