"""The checks before any loading: one function for :func:`~hf_prune.prune_and_push` and every command.

A typo fails in a second and leaves nothing on disk: :func:`check_inputs` checks every argument group it is
given, in one fixed order, without torch, the weights or (except for a Hub model's ``config.json``) the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import PruneConfig, level_name
from ..errors import PruningError, PushArgumentError
from .arguments import DataArguments, EvaluationArguments, ModelArguments, OutputArguments, RunArguments

__all__ = ["CheckedInputs", "check_inputs", "resolve_primary"]


@dataclass(frozen=True)
class CheckedInputs:
    """What the checks found, in the form the later steps use.

    Attributes:
        calibration, evaluation: :class:`~hf_prune.data.calibration.Calibration` of the data (``None``: not given).
        tasks: the accuracy tasks' specs as given (``None``: no accuracy); loaded by lm-eval later.
        out: the output folder (checked: new, empty or ``overwrite``).
        repo_id: the Hub repo the levels go to (``None``: not pushed).
        primary: the level for ``main``.
        source: the checked :class:`~hf_prune.loading.ModelSource` (``None`` for a model already loaded).
    """

    calibration: Any = None
    evaluation: Any = None
    tasks: Any = None
    out: Path | None = None
    repo_id: str | None = None
    primary: float | None = None
    source: Any = None


def resolve_primary(primary: float | str | None, levels: list[float], names: list[str] | None = None) -> float:
    """The level for ``main``: ``primary`` as a sparsity or a level name (``names``: the levels' names, default
    ``sparsity-XX``); ``None`` gives the lowest level."""
    if primary is None:
        return levels[0]
    if isinstance(primary, str):
        by_name = dict(zip(names or [level_name(s) for s in levels], levels))
        if primary in by_name:
            return by_name[primary]
        try:
            primary = float(primary)
        except ValueError:
            raise PushArgumentError(f"primary must be one of the levels {levels} (or {sorted(by_name)}), "
                                    f"got {primary!r}.") from None
    for s in levels:
        if abs(s - float(primary)) < 1e-6:
            return s
    raise PushArgumentError(f"primary must be one of the levels {levels}, got {primary!r}.")


def _push_target(output: OutputArguments) -> str | None:
    from ..hub.push import check_repo_id

    if output.push and output.repo_id is None:
        raise PushArgumentError("push=True needs a repo_id ('namespace/name').")
    if output.push_to is not None:
        check_repo_id(output.push_to)
    return output.push_to


def _check_evaluation(evaluation: EvaluationArguments) -> Any:
    """The window settings and the accuracy tasks (their files found, lm-eval not needed yet)."""
    from ..evaluation import check_evaluation_options

    check_evaluation_options(seq_len=evaluation.seq_len, max_windows_per_domain=evaluation.max_windows)
    if evaluation.tasks is None:
        return None
    from ..accuracy import TaskSuite, check_task_options, resolve_task_specs

    check_task_options(**evaluation.task_options())
    if not isinstance(evaluation.tasks, TaskSuite):
        resolve_task_specs(evaluation.tasks)  # a missing file or an empty folder fails here; lm-eval loads them later
    return evaluation.tasks


def _check_outputs(output: OutputArguments | None, run: RunArguments | None,
                   config: PruneConfig | None) -> Path | None:
    """Every place the command will write, tried now: the output folder (see :mod:`~hf_prune.job.outputs`), the
    report file and the state folder."""
    from ..fileio import check_writable
    from .outputs import check_output

    state_dir = run.state_dir if run is not None else None
    if output is not None and output.report_file is not None:
        check_writable(output.report_file, folder=False)
    if output is None or output.output_dir is None:
        if state_dir is not None:
            check_writable(state_dir, folder=True)
        return None
    return check_output(output.output_dir, overwrite=output.overwrite, state_dir=state_dir, config=config)


def _check_loading(model: ModelArguments) -> None:
    """What ``from_pretrained`` would refuse after reading the config: the dtype, the device map, the memory map."""
    from ..engine.memory import parse_size
    from ..loading import check_device_map, parse_dtype

    parse_dtype(model.torch_dtype)
    check_device_map(model.device_map)
    for device, size in (model.max_memory or {}).items():
        if parse_size(size) <= 0:
            raise PruningError(f"max_memory of {device!r} is {size!r}: give a positive size such as 20GiB.")


def _check_model(model: ModelArguments) -> Any:
    """A path's ``config.json`` (the checked source), or a loaded model that comes with its tokenizer."""
    from ..loading import check_model_source

    if not model.is_loaded:
        return check_model_source(model.model, revision=model.revision, token=model.token)
    if model.tokenizer is None:
        raise PruningError("a loaded model needs its tokenizer: prune_and_push(model, tokenizer=tokenizer, ...).")
    return None


def check_inputs(*, model: ModelArguments | None = None, data: DataArguments | None = None,
                 evaluation: EvaluationArguments | None = None, output: OutputArguments | None = None,
                 config: PruneConfig | None = None, run: RunArguments | None = None) -> CheckedInputs:
    """Check every group given, before anything is loaded; the groups left out are not part of the command.

    Order: the primary level, the output locations (the output folder: writable, and empty unless overwritten or
    an interrupted run's being resumed; the report file; the state folder), the Hub repo, the evaluation settings and tasks, the calibration
    and evaluation data (an evaluation source shared with the calibration is refused), recovery's extras, the
    dtype, the Hub token (when pushing), and last the model (a folder's or Hub model's ``config.json``).

    Raises:
        PruningError, RecoveryError, CalibrationError, EvaluationError, ModelLoadError, UnsupportedModelError,
            PushArgumentError, HubAuthError, OutputExistsError: the first argument found wrong.
    """
    from ..data.calibration import as_calibration
    from ..data.spec import check_overlap
    named = output is not None and config is not None and config.size_target == "sparsity"
    primary = resolve_primary(output.primary, list(config.target_sparsity), list(config.level_names())) if named else None
    out = _check_outputs(output, run, config)
    repo_id = _push_target(output) if output else None
    tasks = _check_evaluation(evaluation) if evaluation else None
    calibration = as_calibration(data.calibration) if data else None
    evals = as_calibration(evaluation.evaluation) if evaluation else None
    check_overlap(calibration, evals, documents=False)
    if config is not None and config.recovery is not None:
        from ..engine.distributed import launched_world_size

        config.recovery.check_available()
        config.recovery.per_device_batch(launched_world_size())  # the global batch splits over torchrun's processes
    if model is not None:
        _check_loading(model)
    if repo_id is not None:
        from ..hub.push import resolve_token

        resolve_token(model.token if model else None)
    source = _check_model(model) if model is not None else None
    if output is not None and config is not None and not named:  # parameter / memory levels: known on the model
        levels = _resolved(config, model, source).target_sparsity
        primary = resolve_primary(output.primary, list(levels), list(config.level_names()))
    return CheckedInputs(calibration, evals, tasks, out, repo_id, primary, source)


def _resolved(config: PruneConfig, model: ModelArguments | None, source: Any) -> PruneConfig:
    """``config``'s parameter or memory targets resolved on the model (its ``config.json``, or the loaded model):
    refused here, before loading, when the model cannot reach them."""
    if model is None:
        raise PruningError(f"target_{config.size_target} levels are resolved on a model: give the model.")
    from .memory import check_levels, model_config

    if source is None:  # a loaded model
        return check_levels(model.model, config)
    return check_levels(model_config(source, revision=model.revision, token=model.token), config, model.torch_dtype)
