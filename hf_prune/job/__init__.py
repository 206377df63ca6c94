"""The job: everything between the arguments a user gives and the levels on disk and on the Hub.

:func:`prune_and_push` is a short sequence of named steps (:mod:`~hf_prune.job.run`) over arguments grouped in
dataclasses (:mod:`~hf_prune.job.arguments`); :func:`check_inputs` is the one check before any loading, shared
with every command of the command line; a :class:`LevelRecord` holds what is known about each level once, and the
job's metrics, ``eval_results.json`` and the model cards are views of it.

May import: ``config``, ``presets``, ``data``, ``format``, ``engine``, ``evaluation``, ``accuracy``, ``hub``,
``recovery``, ``serving``, ``loading``, ``registration``, ``errors``, ``fileio``, ``markdown``, ``options``: every layer
below it (docs/architecture.md); torch only inside the steps that load or run a model (the checks stay instant).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_EXPORTS = {
    "prune_and_push": ".run", "run_job": ".run", "Job": ".run",
    "PruneAndPushResult": ".result",
    "check_inputs": ".checks", "CheckedInputs": ".checks", "resolve_primary": ".checks",
    "DEFAULT_CALIBRATION": ".arguments", "ModelArguments": ".arguments", "DataArguments": ".arguments",
    "EvaluationArguments": ".arguments", "OutputArguments": ".arguments", "RunArguments": ".arguments",
    "LevelRecord": ".record", "DenseRecord": ".record",
    "EVAL_FILE": ".save",
    "model_config": ".memory", "check_memory": ".memory",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS)

if TYPE_CHECKING:
    from .arguments import (DEFAULT_CALIBRATION, DataArguments, EvaluationArguments, ModelArguments, OutputArguments,
                            RunArguments)
    from .checks import CheckedInputs, check_inputs, resolve_primary
    from .memory import check_memory, model_config
    from .record import DenseRecord, LevelRecord
    from .result import PruneAndPushResult
    from .run import Job, prune_and_push, run_job
    from .save import EVAL_FILE
