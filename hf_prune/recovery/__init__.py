"""Recovery: heal a pruned model by distilling the dense model into it (or by plain LM training).

:class:`RecoveryConfig` holds the options (no torch needed to build or check it); :func:`recover` trains with
transformers' ``Trainer`` (a distillation ``compute_loss``) and, for LoRA, PEFT adapters merged back, so the
result keeps the pruned model's class and shapes. Training and held-back windows come from the calibration mix
(:mod:`hf_prune.recovery.data`); the held-back guard (:mod:`~hf_prune.recovery.guard`) returns the best state seen
on them; ``kd`` reads the teacher's top-k distributions from a cache filled once per window
(:mod:`~hf_prune.recovery.teacher`); the objectives are in :mod:`~hf_prune.recovery.losses`.

May import: ``data`` (the training windows), ``compat``, ``errors``, ``fileio``, ``markdown``, ``options``; torch,
transformers, PEFT. It knows nothing of the engine: it trains whatever pruned model it is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_EXPORTS = {
    "RecoveryConfig": ".config", "parse_tokens": ".config",
    "recover": ".distill", "RecoveryResult": ".distill", "DistillationTrainer": ".distill",
    "training_windows": ".data", "recovery_windows": ".data", "RecoveryWindows": ".data",
    "HeldBackReport": ".guard", "TeacherCache": ".teacher",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS)

if TYPE_CHECKING:
    from .config import RecoveryConfig, parse_tokens
    from .data import RecoveryWindows, recovery_windows, training_windows
    from .distill import DistillationTrainer, RecoveryResult, recover
    from .guard import HeldBackReport
    from .teacher import TeacherCache
