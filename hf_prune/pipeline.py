"""Where :func:`~hf_prune.prune_and_push` lived before the job got its own package, :mod:`hf_prune.job`.

Kept so that ``from hf_prune.pipeline import prune_and_push`` (and the other names it offered) still works; new
code imports from :mod:`hf_prune.job` (or ``hf_prune`` itself).
"""

from __future__ import annotations

from .config import level_name
from .job.arguments import DEFAULT_CALIBRATION
from .job.checks import resolve_primary
from .job.memory import check_memory, model_config
from .job.result import PruneAndPushResult
from .job.run import prune_and_push
from .job.save import EVAL_FILE

__all__ = ["prune_and_push", "PruneAndPushResult", "DEFAULT_CALIBRATION", "EVAL_FILE", "level_name",
           "resolve_primary", "check_memory", "model_config"]
