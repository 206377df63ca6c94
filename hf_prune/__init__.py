"""hf-prune: structured pruning for Hugging Face Qwen2-family language models.

Importing this package registers the ``pruned_qwen2`` model type with transformers' Auto classes, so pruned
checkpoints load with ``AutoModelForCausalLM.from_pretrained``.
"""

from .errors import (
    ConfigMismatchError,
    HfPruneError,
    InvalidPlanError,
    NotUniformError,
    UnsupportedModelError,
)
from .modeling.configuration_pruned_qwen2 import PrunedQwen2Config
from .modeling.modeling_pruned_qwen2 import PrunedQwen2ForCausalLM, PrunedQwen2Model
from .plan import LayerPlan, PruningPlan
from .registration import register as _register
from .slicing import apply_plan, to_qwen2
from .convert import llama_to_qwen2

_register()

__version__ = "0.1.0"

__all__ = [
    "PrunedQwen2Config",
    "PrunedQwen2Model",
    "PrunedQwen2ForCausalLM",
    "PruningPlan",
    "LayerPlan",
    "apply_plan",
    "to_qwen2",
    "llama_to_qwen2",
    "HfPruneError",
    "InvalidPlanError",
    "UnsupportedModelError",
    "ConfigMismatchError",
    "NotUniformError",
]
