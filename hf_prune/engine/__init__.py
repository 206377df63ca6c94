"""The pruning engine: importance criteria, allocation, schedules and the `prune()` driver."""

from .allocation import Constraints, allocate
from .importance import (
    FlapImportance,
    Importance,
    MagnitudeImportance,
    RandomImportance,
    TaylorImportance,
    WandaSPImportance,
    get_importance,
)
from .objectives import lm_loss, margin_loss
from .presets import METHODS, Method
from .pruner import PruneResult, StepLog, prune
from .structures import LayerScores, ModelGeometry, decoder_params

__all__ = [
    "prune", "PruneResult", "StepLog", "Method", "METHODS", "Importance", "TaylorImportance", "WandaSPImportance",
    "FlapImportance", "MagnitudeImportance", "RandomImportance", "get_importance", "LayerScores", "ModelGeometry",
    "Constraints", "allocate", "lm_loss", "margin_loss", "decoder_params",
]
