"""The pruning engine: importance criteria, allocation, schedules, the :class:`Pruner` and :func:`prune`.

Swappable pieces in the torch-pruning style: a criterion scores structures, an allocation turns scores into a
plan, a schedule sets each round's sparsity, and the :class:`Pruner` runs one round per ``step()``.
May import: ``format`` (plans, geometry, slicing), ``data`` (to draw calibration windows), ``config`` and
``presets`` (the recipe), ``compat``, ``errors``, ``fileio``, ``markdown``, ``options``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_EXPORTS = {
    "prune": ".pruner", "Pruner": ".pruner", "PruneResult": ".pruner", "StepLog": ".pruner",
    "Method": "..presets", "METHODS": "..presets",
    "Importance": ".importance", "TaylorImportance": ".importance", "FisherImportance": ".importance",
    "WandaSPImportance": ".importance", "FlapImportance": ".importance", "MagnitudeImportance": ".importance",
    "RandomImportance": ".importance", "get_importance": ".importance",
    "LayerScores": ".structures", "ModelGeometry": "..format.geometry", "decoder_params": ".structures",
    "Constraints": ".allocation", "allocate": ".allocation",
    "lm_loss": ".objectives", "margin_loss": ".objectives",
    "linear_schedule": ".schedule",
    "compensate": ".compensation", "refit": ".compensation",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS)

if TYPE_CHECKING:
    from .allocation import Constraints, allocate
    from .compensation import compensate, refit
    from .importance import (FisherImportance, FlapImportance, Importance, MagnitudeImportance, RandomImportance,
                             TaylorImportance, WandaSPImportance, get_importance)
    from .objectives import lm_loss, margin_loss
    from ..presets import METHODS, Method
    from .pruner import PruneResult, Pruner, StepLog, prune
    from .schedule import linear_schedule
    from ..format.geometry import ModelGeometry
    from .structures import LayerScores, decoder_params
