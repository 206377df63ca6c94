"""hf-prune: structured pruning for Hugging Face Qwen2-family (and Qwen3) language models.

Importing this package registers the ``pruned_qwen2`` and ``pruned_qwen3`` model types with transformers' Auto classes (at once if
transformers is imported, else as soon as it is), so pruned checkpoints load with
``AutoModelForCausalLM.from_pretrained``. The names below are imported on first use: ``import hf_prune`` itself
loads neither torch nor transformers.

Entry points: :class:`PruneConfig` (the options of a run), :func:`prune` / :class:`Pruner` (decide what to remove),
:func:`compensate` (refit what is kept), :func:`apply_plan` (slice), :func:`export` (write for vLLM / SGLang /
llama.cpp), :func:`recover` / :class:`RecoveryConfig` (train a
pruned model back towards the dense one), :func:`prune_and_push` (the whole job), :class:`CalibrationMix`
(multi-domain calibration data), :func:`evaluate_perplexity`, :func:`evaluate_tasks` (accuracy through lm-eval).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors
from ._lazy import lazy_attributes
from .errors import *  # noqa: F403 - every exception is part of the public API
from .registration import register_on_import

__version__ = "0.1.0"

_EXPORTS = {
    # options and the whole job
    "PruneConfig": ".config",
    "prune_and_push": ".pipeline", "PruneAndPushResult": ".pipeline",
    # the engine
    "prune": ".engine.pruner", "Pruner": ".engine.pruner", "PruneResult": ".engine.pruner",
    "compensate": ".engine.compensation",
    "recover": ".recovery.distill", "RecoveryConfig": ".recovery.config",
    "memory_plan": ".engine.memory", "MemoryPlan": ".engine.memory",
    # the model format, plans and slicing
    "PrunedQwen2Config": ".modeling.configuration_pruned_qwen2",
    "PrunedQwen2Model": ".modeling.modeling_pruned_qwen2", "PrunedQwen2ForCausalLM": ".modeling.modeling_pruned_qwen2",
    "PrunedQwen3Config": ".modeling.configuration_pruned_qwen3",
    "PrunedQwen3Model": ".modeling.modeling_pruned_qwen3", "PrunedQwen3ForCausalLM": ".modeling.modeling_pruned_qwen3",
    "PruningPlan": ".format.plan", "LayerPlan": ".format.plan",
    "apply_plan": ".format.slicing", "to_qwen2": ".format.slicing", "llama_to_qwen2": ".format.convert",
    # serving outside transformers (vLLM / SGLang, llama.cpp)
    "export": ".serving.api",
    # data and evaluation
    "CalibrationMix": ".data.mix", "CalibrationWindows": ".data.windows",
    "evaluate_perplexity": ".evaluation", "PerplexityReport": ".evaluation",
    "evaluate_tasks": ".accuracy", "AccuracyReport": ".accuracy",
}
__all__ = [*_EXPORTS, *errors.__all__]
__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS)

register_on_import()

if TYPE_CHECKING:
    from .config import PruneConfig
    from .data.mix import CalibrationMix
    from .data.windows import CalibrationWindows
    from .engine.compensation import compensate
    from .engine.memory import MemoryPlan, memory_plan
    from .engine.pruner import PruneResult, Pruner, prune
    from .accuracy import AccuracyReport, evaluate_tasks
    from .evaluation import PerplexityReport, evaluate_perplexity
    from .format.convert import llama_to_qwen2
    from .format.plan import LayerPlan, PruningPlan
    from .format.slicing import apply_plan, to_qwen2
    from .modeling.configuration_pruned_qwen2 import PrunedQwen2Config
    from .modeling.configuration_pruned_qwen3 import PrunedQwen3Config
    from .modeling.modeling_pruned_qwen2 import PrunedQwen2ForCausalLM, PrunedQwen2Model
    from .modeling.modeling_pruned_qwen3 import PrunedQwen3ForCausalLM, PrunedQwen3Model
    from .pipeline import PruneAndPushResult, prune_and_push
    from .serving.api import export
    from .recovery.config import RecoveryConfig
    from .recovery.distill import recover
