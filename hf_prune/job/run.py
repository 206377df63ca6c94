"""``prune_and_push``: the whole job, as a short sequence of named steps a user can also call one by one.

check (:func:`~hf_prune.job.checks.check_inputs`: everything cheap, before any loading) -> load the tokenizer ->
draw recovery's windows -> plan memory -> load the model -> prune (:func:`hf_prune.prune`, one nested run for
every level) -> evaluate the dense model -> build each level (evaluated, recovered if asked, saved) -> write the
model cards -> push (:func:`hf_prune.hub.push_pruned_folders`, one branch per level, ``main`` last). A typo fails
in a second and leaves nothing on disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ..config import PruneConfig
from .arguments import (DEFAULT_CALIBRATION, DataArguments, EvaluationArguments, ModelArguments, OutputArguments,
                        RunArguments)
from .checks import CheckedInputs, check_inputs
from .result import PruneAndPushResult

__all__ = ["prune_and_push", "Job", "run_job"]

logger = logging.getLogger(__name__)


@dataclass
class Job:
    """The arguments of :func:`prune_and_push`, grouped."""

    model: ModelArguments
    config: PruneConfig
    data: DataArguments
    evaluation: EvaluationArguments
    output: OutputArguments
    run: RunArguments


def prune_and_push(
    model_id_or_path: Any,
    repo_id: str | None = None,
    *,
    config: PruneConfig | Mapping[str, Any] | None = None,
    calibration: Any = None,
    evaluation: Any = None,
    output_dir: str | os.PathLike = "pruned",
    eval_seq_len: int = 256,
    eval_max_windows: int | None = None,
    eval_tasks: Any = None,
    eval_num_fewshot: int = 0,
    eval_limit: int | float | None = None,
    primary: float | str | None = None,
    private: bool = False,
    token: str | None = None,
    push: bool | None = None,
    overwrite: bool = False,
    torch_dtype: Any = "auto",
    device_map: Any = None,
    revision: str | None = None,
    endpoint: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    tokenizer: Any = None,
    calibration_sources: Mapping[str, str] | None = None,
    state_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    max_memory: Mapping[Any, Any] | None = None,
    **overrides: Any,
) -> PruneAndPushResult:
    """Prune a model to several sparsities, evaluate, save one checkpoint folder per level, and push them.

    The keyword arguments are grouped into a :class:`Job` (see :mod:`hf_prune.job.arguments`) and run by
    :func:`run_job`.

    Args:
        model_id_or_path: Hub model id or local folder of a Qwen2 / Qwen3 (or Llama, converted exactly) causal LM, or an
            already loaded model (then ``tokenizer`` is required).
        repo_id: ``"namespace/name"`` to push to; ``None`` saves locally only.
        config: the :class:`~hf_prune.PruneConfig` of the run; ``**overrides`` replace its fields
            (``target_sparsity=(0.2, 0.3)``, ``method="gisp"``, ``num_samples=64``, ...).
        calibration: a :class:`CalibrationMix`, its CLI form (``"web=0.3,code=data/code.jsonl@0.7"``), a
            YAML/JSON mix file, a mapping, or anything :func:`hf_prune.prune` accepts. Default:
            :data:`DEFAULT_CALIBRATION` (public Hub datasets).
        evaluation: evaluation domains in the same forms (or ``{domain: [texts]}``); ``None`` skips evaluation.
            A source shared with the calibration is refused.
        output_dir: parent folder of the ``sparsity-XX/`` level folders; must be empty unless ``overwrite``.
        eval_seq_len, eval_max_windows: evaluation window length and per-domain cap.
        eval_tasks: accuracy tasks (lm-eval names, multiple-choice ``.jsonl`` files or folders, task YAMLs; see
            :func:`hf_prune.evaluate_tasks`) for the dense model and every level; ``None`` skips them. They are
            loaded before the model (an unreachable dataset fails then). Needs ``hf-prune[eval]``.
        eval_num_fewshot, eval_limit: examples per prompt (0: zero-shot) and per-task cap of the accuracy tasks.
        primary: the level that goes to ``main`` (a sparsity or a level name); default the lowest.
        private, token, endpoint: Hub repo visibility, token (default: ``HF_TOKEN`` or the stored login),
            Hub URL. The token is never logged.
        push: ``None`` pushes when ``repo_id`` is given; ``False`` never pushes.
        overwrite: replace a non-empty ``output_dir`` and allow pushing to a repo that has content.
        torch_dtype, device_map, revision: passed to ``from_pretrained``.
        base_model, license: what the model cards name as base model (a Hub id) and licence (default: the model's
            Hub id, none for a local folder; the licence in its card).
        tokenizer: a tokenizer, or the Hub id / folder to load one from, instead of the model's own.
        calibration_sources: domain -> where its text comes from, for the model cards (default: the file
            name of a local source, the dataset id of a Hub one).
        state_dir, show_progress: passed to :func:`hf_prune.prune` (resumable runs, progress bars); with
            recovery, each level's training checkpoints go to ``state_dir/recovery/sparsity-XX/`` and resume.
        max_memory: accelerate's ``{device: size}`` (``{0: "75GiB", 1: "75GiB"}``), passed to ``from_pretrained``
            and used by the memory plan; without it the plan checks what the devices report (free GPU memory,
            the CPU's available RAM). The plan is logged before loading; a run that cannot fit is refused then.

    Recovery (``recovery={"method": "kd", "tokens": 100_000}`` or a :class:`~hf_prune.recovery.RecoveryConfig`,
    a field of the config): after a level is built (and compensated) and evaluated, it is trained from its own
    weights towards the dense model on windows drawn from the calibration mix (a seed of their own, drawn once
    before the model is loaded), evaluated again, and saved recovered; ``eval_results.json`` then holds
    ``"recovered"`` next to ``"dense"`` and ``"pruned"``.

    Under ``torchrun --nproc-per-node N`` (``WORLD_SIZE`` > 1) the run is data parallel: every rank loads the
    model (on GPU ``cuda:LOCAL_RANK`` unless ``device_map`` says otherwise), scores its share of the calibration
    windows and takes part in every reduction and refit; rank 0 alone evaluates, writes and pushes, and the
    others return an empty result after a barrier.

    Raises:
        PruningError, RecoveryError, CalibrationError, EvaluationError, ModelLoadError, UnsupportedModelError,
            PushArgumentError, HubAuthError, OutputExistsError, InsufficientMemoryError: bad arguments or a run
            that cannot fit, all raised before the model is loaded (a recovery budget the data cannot supply
            included). Errors of :func:`prune` and of the push propagate.
    """
    return run_job(Job(
        model=ModelArguments(model_id_or_path, tokenizer, revision, torch_dtype, device_map, token, max_memory),
        config=PruneConfig.coerce(config, **overrides),
        data=DataArguments(DEFAULT_CALIBRATION if calibration is None else calibration, calibration_sources),
        evaluation=EvaluationArguments(evaluation, eval_seq_len, eval_max_windows, eval_tasks, eval_num_fewshot,
                                       eval_limit),
        output=OutputArguments(output_dir, overwrite, repo_id, push, primary, private, endpoint, base_model, license),
        run=RunArguments(state_dir, show_progress)))


def run_job(job: Job) -> PruneAndPushResult:
    """The steps of :func:`prune_and_push`, in order (see the module docstring)."""
    from ..data.spec import check_overlap
    from ..engine.distributed import is_main
    from .levels import load_model, load_tokenizer

    job = _join_process_group(job)
    checked = check_inputs(model=job.model, data=job.data, evaluation=job.evaluation, output=job.output,
                           config=job.config, run=job.run)
    tokenizer = load_tokenizer(job.model, checked.source)
    checked = _prepare_tasks(checked)
    check_overlap(checked.calibration, checked.evaluation, tokenizer=tokenizer)  # documents, once for the whole run
    windows = _recovery_windows(job.config, checked, tokenizer)  # a budget the data cannot supply fails here
    _check_memory(job, checked.source)  # refused here, before any weights are read, if the devices cannot hold it
    model, name, local = load_model(job.model, checked.source)
    result = _prune(model, tokenizer, job, checked)
    if not is_main():
        return _follow_levels(model, tokenizer, result, checked, job, windows)
    return _evaluate_save_push(job, checked, model, tokenizer, result, name, local, windows)


def _join_process_group(job: Job) -> Job:
    """Under torchrun: join the process group (torch is imported only then, before the checks); each rank on its
    GPU, rank 0 alone showing progress."""
    from ..engine.distributed import init_from_env, launched_rank, launched_world_size, rank_device_map

    if launched_world_size() <= 1:
        return job
    init_from_env()
    model = job.model
    # fsdp: every rank keeps the whole model on the CPU (for slicing); only the scoring copy's shards go to
    # the GPUs (hf_prune/engine/fsdp.py)
    if not job.config.fsdp:
        model = replace(model, device_map=rank_device_map(model.device_map))
    return replace(job, model=model, run=replace(job.run, show_progress=job.run.show_progress and launched_rank() == 0))


def _prepare_tasks(checked: CheckedInputs) -> CheckedInputs:
    """lm-eval loads every task now (rank 0 alone evaluates): an unreachable dataset fails before the model loads."""
    from ..engine.distributed import launched_rank

    if checked.tasks is None or launched_rank() != 0:
        return checked
    from ..accuracy import prepare_tasks

    return replace(checked, tasks=prepare_tasks(checked.tasks))


def _recovery_windows(config: PruneConfig, checked: CheckedInputs, tokenizer) -> Any:
    """The training and held-back windows of the run's recovery (None without recovery), drawn from the calibration
    mix once."""
    if config.recovery is None:
        return None
    from ..recovery.data import recovery_windows

    return recovery_windows(checked.calibration, tokenizer, config.recovery)


def _check_memory(job: Job, source: Any) -> None:
    from ..engine.distributed import launched_world_size, rank_device_map
    from .memory import check_memory, model_config

    if source is None:  # a loaded model: it is in memory already
        return
    # fsdp: the plan is of the rank's GPU (its shards), while the model itself is loaded on the CPU
    device_map = rank_device_map(None) if job.config.fsdp and launched_world_size() > 1 else job.model.device_map
    check_memory(model_config(source, revision=job.model.revision, token=job.model.token), job.config,
                 device_map=device_map, max_memory=job.model.max_memory, dtype=job.model.torch_dtype)


def _prune(model, tokenizer, job: Job, checked: CheckedInputs):
    from ..engine.pruner import prune

    logger.info("pruning to %s with %s", ", ".join(job.config.level_names()), job.config.method)
    return prune(model, tokenizer, checked.calibration, job.config, state_dir=job.run.state_dir,
                 show_progress=job.run.show_progress)


def _follow_levels(model, tokenizer, result, checked: CheckedInputs, job: Job, windows: Any) -> PruneAndPushResult:
    """Rank > 0: take part in every level's refit and recovery (collectives), write nothing."""
    from ..engine.distributed import barrier
    from .levels import LevelBuilder

    follower = LevelBuilder(model, tokenizer, result, None, checked.out, {}, windows=windows,
                            state_dir=job.run.state_dir, show_progress=False)
    for s in result.config.target_sparsity:
        follower.follow(s)
    barrier()
    return PruneAndPushResult(folders={}, metrics={}, result=result, primary=checked.primary)


def _evaluate_save_push(job: Job, checked: CheckedInputs, model, tokenizer, result, name: str, local: bool,
                        windows: Any) -> PruneAndPushResult:
    """Rank 0: evaluate the dense model, build and save every level, write the cards, push."""
    from ..engine.distributed import barrier, world_size
    from .levels import Evaluator, LevelBuilder
    from .outputs import LevelLedger, remove_stale
    from .save import describe_base_model

    out = job.output
    base = describe_base_model(model, name, local=local, base_model=out.base_model, license=out.license,
                               revision=job.model.revision, token=job.model.token)
    evaluate = Evaluator(tokenizer, checked.evaluation, job.evaluation, checked.tasks, job.run.show_progress)
    dense = evaluate.dense(model, base.params)
    checked.out.mkdir(parents=True, exist_ok=True)
    mix = checked.calibration.mix
    # What every level's pruning_plan.json says of its origin, as published: no path of this machine.
    builder = LevelBuilder(model, tokenizer, result, evaluate, checked.out, plan_metadata={
        "base_model": base.name, "base_model_path": Path(base.path).name if local else base.path,
        "base_model_revision": base.revision,
        "calibration": mix.to_public_dict() if mix is not None else None, "settings": result.settings},
        windows=windows, state_dir=job.run.state_dir, overwrite=out.overwrite, show_progress=job.run.show_progress,
        ledger=LevelLedger(job.run.state_dir, checked.out, job.config))
    records = [builder.build(s, dense, base.name) for s in result.config.target_sparsity]
    metrics = _metrics(job.config, dense, records)
    _write_cards(job, checked, result.config, base, dense, records, metrics)
    # The folder now holds exactly this run's levels: other levels (overwrite) and leftovers of a kill go.
    remove_stale(checked.out, {r.branch for r in records})
    folders = {r.target: r.folder for r in records}
    pushes = _push(job, checked, folders)
    if world_size() > 1:
        barrier()
    return PruneAndPushResult(folders=folders, metrics=metrics, pushes=pushes, result=result, primary=checked.primary,
                              repo_id=checked.repo_id)


def _metrics(config: PruneConfig, dense, records) -> dict[str, Any]:
    metrics: dict[str, Any] = {"dense": dense.metrics(), "levels": {r.target: r.metrics() for r in records}}
    if config.recovery is not None:
        metrics["recovery"] = config.recovery.to_dict()
    return metrics


def _write_cards(job: Job, checked: CheckedInputs, config: PruneConfig, base, dense, records,
                 metrics: Mapping[str, Any]) -> None:
    """Every level's card, rendered once every level is evaluated: each compares its level with all the others
    (``config``: the run's, every method default filled in)."""
    from .record import accuracy_columns
    from .save import calibration_description, level_card, write_cards

    calibration = calibration_description(checked.calibration, config, job.data.sources)
    columns = accuracy_columns(metrics)
    write_cards({r.folder: level_card(base, r, dense, config=config, calibration=calibration,
                                      eval_seq_len=job.evaluation.seq_len, repo_id=checked.repo_id,
                                      accuracy_columns=columns) for r in records})


def _push(job: Job, checked: CheckedInputs, folders) -> list[Any]:
    if checked.repo_id is None:
        return []
    from ..hub.push import push_pruned_folders

    name = Path(folders[checked.primary]).name  # each level's folder is named as its branch
    logger.info("pushing %d level(s) to %s (main = %s)", len(folders), checked.repo_id, name)
    return push_pruned_folders(checked.repo_id, {Path(f).name: f for f in folders.values()},
                               primary=name, token=job.model.token, private=job.output.private,
                               overwrite=job.output.overwrite, endpoint=job.output.endpoint)
