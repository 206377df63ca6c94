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
Everything else lives in its sub-package: the model classes in :mod:`hf_prune.modeling`, the format in
:mod:`hf_prune.format`, the exceptions in :mod:`hf_prune.errors`, the job's pieces in :mod:`hf_prune.job`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import errors
from ._lazy import lazy_attributes
from .errors import HfPruneError
from .registration import register_on_import

__version__ = "0.1.0"

_EXPORTS = {
    # options and the whole job
    "PruneConfig": ".config", "prune_and_push": ".job.run",
    # the engine
    "prune": ".engine.pruner", "Pruner": ".engine.pruner", "PruneResult": ".engine.pruner",
    "compensate": ".engine.compensation", "memory_plan": ".engine.memory",
    "recover": ".recovery.distill", "RecoveryConfig": ".recovery.config",
    # plans, slicing, serving outside transformers (vLLM / SGLang, llama.cpp)
    "PruningPlan": ".format.plan", "apply_plan": ".format.slicing", "export": ".serving.api",
    # data and evaluation
    "CalibrationMix": ".data.mix", "evaluate_perplexity": ".evaluation", "evaluate_tasks": ".accuracy",
}
# Names exported here before the public API was cut to the entry points: each resolves, with a DeprecationWarning
# naming its home, for one release.
_MOVED = {
    **dict.fromkeys(("PrunedQwen2Config", "PrunedQwen2Model", "PrunedQwen2ForCausalLM", "PrunedQwen3Config",
                     "PrunedQwen3Model", "PrunedQwen3ForCausalLM"), "hf_prune.modeling"),
    **dict.fromkeys(("LayerPlan", "to_qwen2", "llama_to_qwen2"), "hf_prune.format"),
    **dict.fromkeys((name for name in errors.__all__ if name != "HfPruneError"), "hf_prune.errors"),
    "CalibrationWindows": "hf_prune.data", "MemoryPlan": "hf_prune.engine.memory",
    "PerplexityReport": "hf_prune.evaluation", "AccuracyReport": "hf_prune.accuracy",
    "PruneAndPushResult": "hf_prune.job",
}
__all__ = [*_EXPORTS, "HfPruneError"]
__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS, _MOVED)

register_on_import()

if TYPE_CHECKING:
    from .accuracy import evaluate_tasks
    from .config import PruneConfig
    from .data.mix import CalibrationMix
    from .engine.compensation import compensate
    from .engine.memory import memory_plan
    from .engine.pruner import PruneResult, Pruner, prune
    from .evaluation import evaluate_perplexity
    from .format.plan import PruningPlan
    from .format.slicing import apply_plan
    from .job.run import prune_and_push
    from .recovery.config import RecoveryConfig
    from .recovery.distill import recover
    from .serving.api import export
