"""Recovery: heal a pruned model by distilling the dense model into it (or by plain LM training).

:class:`RecoveryConfig` holds the options (no torch needed to build or check it); :func:`recover` trains with
transformers' ``Trainer`` (a distillation ``compute_loss``) and, for LoRA, PEFT adapters merged back, so the
result keeps the pruned model's class and shapes. Training windows come from the calibration mix
(:mod:`hf_prune.recovery.data`).

May import: ``data`` (the training windows), ``compat``, ``errors``, ``fileio``, ``options``; torch,
transformers, PEFT. It knows nothing of the engine: it trains whatever pruned model it is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_EXPORTS = {
    "RecoveryConfig": ".config", "parse_tokens": ".config",
    "recover": ".distill", "RecoveryResult": ".distill", "DistillationTrainer": ".distill",
    "training_windows": ".data",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS)

if TYPE_CHECKING:
    from .config import RecoveryConfig, parse_tokens
    from .data import training_windows
    from .distill import DistillationTrainer, RecoveryResult, recover
