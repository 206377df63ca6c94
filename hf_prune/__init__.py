"""hf-prune: structured pruning for Hugging Face Qwen2-family language models.

Importing this package registers the ``pruned_qwen2`` model type with transformers' Auto classes, so pruned
checkpoints load with ``AutoModelForCausalLM.from_pretrained``.

Entry points: :func:`prune` (decide what to remove), :func:`apply_plan` (slice), :func:`prune_and_push`
(the whole job), :class:`CalibrationMix` (multi-domain calibration data), :func:`evaluate_perplexity`.
"""

from .convert import llama_to_qwen2
from .data import CalibrationMix, CalibrationWindows
from .engine import PruneResult, prune
from .errors import (
    CalibrationError,
    ConfigMismatchError,
    DataFetchError,
    HfPruneError,
    HubError,
    InvalidPlanError,
    NotUniformError,
    PruningError,
    UnsupportedModelError,
)
from .evaluation import PerplexityReport, evaluate_perplexity
from .modeling.configuration_pruned_qwen2 import PrunedQwen2Config
from .modeling.modeling_pruned_qwen2 import PrunedQwen2ForCausalLM, PrunedQwen2Model
from .plan import LayerPlan, PruningPlan
from .push import PruneAndPushResult, prune_and_push
from .registration import register as _register
from .slicing import apply_plan, to_qwen2

_register()

__version__ = "0.1.0"

__all__ = [
    # model format
    "PrunedQwen2Config",
    "PrunedQwen2Model",
    "PrunedQwen2ForCausalLM",
    # plans and slicing
    "PruningPlan",
    "LayerPlan",
    "apply_plan",
    "to_qwen2",
    "llama_to_qwen2",
    # data, engine, evaluation
    "CalibrationMix",
    "CalibrationWindows",
    "prune",
    "PruneResult",
    "prune_and_push",
    "PruneAndPushResult",
    "evaluate_perplexity",
    "PerplexityReport",
    # errors
    "HfPruneError",
    "InvalidPlanError",
    "UnsupportedModelError",
    "ConfigMismatchError",
    "NotUniformError",
    "CalibrationError",
    "PruningError",
    "HubError",
    "DataFetchError",
]
