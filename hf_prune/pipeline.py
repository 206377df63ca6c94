"""``prune_and_push``: the whole job, as a short pipeline of steps a user can also call one by one.

check (everything cheap, before any loading) -> load (:mod:`hf_prune.loading`) -> prune (:func:`hf_prune.prune`,
one nested run for every level) -> evaluate (:func:`hf_prune.evaluate_perplexity`, dense and each level) ->
recover (optional, :func:`hf_prune.recover`: each level trained from its own pruned weights, evaluated again) ->
save (:mod:`hf_prune.saving`, one folder per level) -> push (:func:`hf_prune.hub.push_pruned_folders`, one
branch per level, ``main`` last). A typo fails in a second and leaves nothing on disk.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PruneConfig, level_name
from .errors import PruningError, PushArgumentError
from .saving import EVAL_FILE

__all__ = ["prune_and_push", "PruneAndPushResult", "DEFAULT_CALIBRATION", "EVAL_FILE", "level_name",
           "resolve_primary", "check_memory", "model_config"]

logger = logging.getLogger(__name__)

#: Used when no calibration is given: public Hub datasets (see ``hf_prune.data.PRESETS``).
DEFAULT_CALIBRATION = "web=0.3,code=0.3,math=0.2,dialogue=0.2"


@dataclass
class PruneAndPushResult:
    """What :func:`prune_and_push` returns.

    Attributes:
        folders: sparsity -> saved level folder.
        metrics: ``{"dense": {...}, "levels": {sparsity: {...}}}``; each entry holds ``params``, and for
            levels ``target_sparsity``, ``sparsity`` (measured), ``kv_cache_reduction``, ``branch``; plus
            ``perplexity`` (a :meth:`PerplexityReport.to_dict`, before recovery) when an evaluation was given.
            With recovery, a level also holds ``recovery`` (:meth:`RecoveryResult.to_dict`: settings, tokens,
            throughput) and ``recovered`` (``{"perplexity": ...}`` after recovery, when evaluated). With
            ``eval_tasks``, dense, each level and each recovered level also hold ``accuracy``
            (:meth:`AccuracyReport.to_dict`: ``{task: {"acc", "acc_stderr", "n", ...}}``).
        pushes: one :class:`~hf_prune.hub.PushResult` per branch, then ``main`` (empty when not pushed).
        result: the :class:`~hf_prune.PruneResult` of the run.
        primary: the level that is (or would be) on ``main``.
        repo_id: the Hub repo pushed to, if any.
    """

    folders: dict[float, Path]
    metrics: dict[str, Any]
    pushes: list[Any] = field(default_factory=list)
    result: Any = field(default=None, repr=False)
    primary: float | None = None
    repo_id: str | None = None

    def summary(self) -> str:
        """Markdown table: one row for the dense model, one per level (params, sparsity, KV, mean perplexity)."""
        dense = self.metrics["dense"]
        has_ppl = "perplexity" in dense
        has_rec = has_ppl and any("recovered" in m for m in self.metrics["levels"].values())
        head = ("| model | params | sparsity | KV cache removed |" + (" mean ppl |" if has_ppl else "")
                + (" recovered ppl |" if has_rec else "") + " folder |")
        rows = [head, "|---|---:|---:|---:|" + ("---:|" if has_ppl else "") + ("---:|" if has_rec else "") + "---|"]
        ppl = lambda m: f" {m['perplexity']['mean']:.2f} |" if has_ppl else ""  # noqa: E731
        rec = lambda m: (f" {m['recovered']['perplexity']['mean']:.2f} |" if "recovered" in m else " |") \
            if has_rec else ""  # noqa: E731
        rows.append(f"| dense | {dense['params'] / 1e6:.2f} M | 0% | 0% |{ppl(dense)}{rec(dense)} |")
        for s, m in sorted(self.metrics["levels"].items()):
            mark = " (main)" if s == self.primary and self.pushes else ""
            rows.append(f"| {m['branch']}{mark} | {m['params'] / 1e6:.2f} M | {m['sparsity']:.1%} | "
                        f"{m['kv_cache_reduction']:.1%} |{ppl(m)}{rec(m)} {self.folders[s]} |")
        return "\n".join(rows)

    def accuracy_table(self) -> str:
        """Markdown table of accuracy per task (%): dense, then every level; the mean (empty if not evaluated)."""
        dense = self.metrics["dense"].get("accuracy")
        if dense is None:
            return ""
        columns = [("dense", dense)]
        for _, m in sorted(self.metrics["levels"].items()):
            columns.append((m["branch"], m["accuracy"]))
            if "accuracy" in m.get("recovered", {}):
                columns.append((f"{m['branch']} recovered", m["recovered"]["accuracy"]))
        rows = ["| task | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---:|" * len(columns)]
        for task in dense:
            rows.append(f"| {task} | " + " | ".join(f"{100 * c[task]['acc']:.1f}" for _, c in columns) + " |")
        rows.append("| **mean** | " + " | ".join(
            f"**{100 * sum(c[t]['acc'] for t in dense) / len(dense):.1f}**" for _, c in columns) + " |")
        return "\n".join(rows)

    def perplexity_table(self) -> str:
        """Markdown table of per-domain perplexity: dense, then every level (empty string if not evaluated)."""
        dense = self.metrics["dense"].get("perplexity")
        if dense is None:
            return ""
        # One column per level, and one per recovered level next to it.
        columns = []
        for _, m in sorted(self.metrics["levels"].items()):
            columns.append((m["branch"], m["perplexity"]))
            if "recovered" in m:
                columns.append((f"{m['branch']} recovered", m["recovered"]["perplexity"]))
        head = "| domain | dense | " + " | ".join(name for name, _ in columns) + " |"
        rows = [head, "|---|---:|" + "---:|" * len(columns)]
        for d, v in dense["per_domain"].items():
            rows.append(f"| {d} | {v:.2f} | " + " | ".join(f"{p['per_domain'][d]:.2f}" for _, p in columns) + " |")
        rows.append(f"| **mean** | **{dense['mean']:.2f}** | "
                    + " | ".join(f"**{p['mean']:.2f}**" for _, p in columns) + " |")
        return "\n".join(rows)


def resolve_primary(primary: float | str | None, levels: list[float]) -> float:
    """The level for ``main``: ``primary`` as a sparsity or a level name; ``None`` gives the lowest level."""
    if primary is None:
        return levels[0]
    if isinstance(primary, str):
        by_name = {level_name(s): s for s in levels}
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


@dataclass(frozen=True)
class _Job:
    """The checked arguments of one run (the result of the *check* step)."""

    config: PruneConfig
    primary: float
    out: Path
    repo_id: str | None
    calibration: Any
    evaluation: Any
    tasks: Any = None  # the task specs, then (before loading) the prepared TaskSuite
    task_options: Mapping[str, Any] = field(default_factory=dict)


def _check(config: PruneConfig, *, repo_id, push, token, primary, output_dir, overwrite, calibration, evaluation,
           eval_seq_len, eval_max_windows, torch_dtype, eval_tasks=None, task_options=None) -> _Job:
    """Every check that needs neither the model nor the network (the Hub token is looked up locally)."""
    from .data.spec import as_mix, check_overlap
    from .evaluation import check_evaluation_options
    from .fileio import check_output_dir
    from .hub.push import check_repo_id, resolve_token
    from .loading import parse_dtype

    levels = list(config.target_sparsity)
    chosen = resolve_primary(primary, levels)
    out = check_output_dir(output_dir, overwrite)
    if push and repo_id is None:
        raise PushArgumentError("push=True needs a repo_id ('namespace/name').")
    target = repo_id if push is not False else None
    if target is not None:
        check_repo_id(target)
    check_evaluation_options(seq_len=eval_seq_len, max_windows_per_domain=eval_max_windows)
    tasks = _check_tasks(eval_tasks, task_options or {})
    calib = as_mix(DEFAULT_CALIBRATION if calibration is None else calibration)
    evals = as_mix(evaluation)
    check_overlap(calib, evals, documents=False)
    if config.recovery is not None:
        config.recovery.check_available()
    parse_dtype(torch_dtype)
    if target is not None:
        resolve_token(token)
    return _Job(config, chosen, out, target, calib, evals, tasks, dict(task_options or {}))


def _check_tasks(eval_tasks: Any, options: Mapping[str, Any]) -> Any:
    """The accuracy tasks' specs and settings, checked without lm-eval (None: no accuracy evaluation)."""
    if eval_tasks is None:
        return None
    from .accuracy import TaskSuite, check_task_options, resolve_task_specs

    check_task_options(**options)
    if not isinstance(eval_tasks, TaskSuite):
        resolve_task_specs(eval_tasks)  # a missing file or an empty folder fails here; lm-eval loads them later
    return eval_tasks


def _tokenizer(model_id_or_path: Any, tokenizer: Any, *, revision, token):
    """(checked model source or None for a loaded model, tokenizer): both before any weights are read."""
    from .loading import check_model_source, load_tokenizer

    source = None
    if isinstance(model_id_or_path, (str, os.PathLike)):
        source = check_model_source(model_id_or_path, revision=revision, token=token)
    elif tokenizer is None:
        raise PruningError("a loaded model needs its tokenizer: prune_and_push(model, tokenizer=tokenizer, ...).")
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        name = source.name if tokenizer is None else os.fspath(tokenizer)
        hub = {"token": token} if token is not None and not Path(name).expanduser().exists() else {}
        tokenizer = load_tokenizer(name, **hub, **({"revision": revision} if tokenizer is None and revision else {}))
    return source, tokenizer


def _model(model_id_or_path: Any, source, *, revision, token, torch_dtype, device_map, max_memory=None):
    """(model as a Qwen2-family causal LM in eval mode, name it came from, local?)."""
    from .loading import load_model, to_qwen2_family

    if source is None:  # an already loaded model
        name = str(getattr(model_id_or_path.config, "_name_or_path", "") or "model")
        return to_qwen2_family(model_id_or_path).eval(), name, True
    model = load_model(source, dtype=torch_dtype, device_map=device_map, revision=revision, token=token,
                       max_memory=max_memory)
    return model, source.name, source.local


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
    from .data.mix import CalibrationMix
    from .data.spec import check_overlap
    if _world_size() > 1:  # torchrun: join the process group (torch is imported only then, before the checks)
        from .engine.distributed import init_from_env

        init_from_env()
        # fsdp: every rank keeps the whole model on the CPU (for slicing); only the scoring copy's shards go to
        # the GPUs (hf_prune/engine/fsdp.py)
        if not PruneConfig.coerce(config, **overrides).fsdp:
            device_map = _rank_device_map(device_map)
        show_progress = show_progress and _rank() == 0
    job = _check(PruneConfig.coerce(config, **overrides), repo_id=repo_id, push=push, token=token, primary=primary,
                 output_dir=output_dir, overwrite=overwrite, calibration=calibration, evaluation=evaluation,
                 eval_seq_len=eval_seq_len, eval_max_windows=eval_max_windows, torch_dtype=torch_dtype,
                 eval_tasks=eval_tasks, task_options={"num_fewshot": eval_num_fewshot, "limit": eval_limit})
    source, tokenizer = _tokenizer(model_id_or_path, tokenizer, revision=revision, token=token)
    if job.tasks is not None and _rank() == 0:  # rank 0 alone evaluates
        from dataclasses import replace

        from .accuracy import prepare_tasks

        job = replace(job, tasks=prepare_tasks(job.tasks))
    check_overlap(job.calibration, job.evaluation, tokenizer=tokenizer)  # documents, once for the whole run
    windows = _recovery_windows(job, tokenizer)  # before loading: a budget the data cannot supply fails here
    if source is not None:  # refused here, before any weights are read, if the devices cannot hold the run
        # fsdp: the plan is of the rank's GPU (its shards), while the model itself is loaded on the CPU
        check_memory(model_config(source, revision=revision, token=token), job.config,
                     device_map=_rank_device_map(None) if job.config.fsdp and _world_size() > 1 else device_map,
                     max_memory=max_memory, dtype=torch_dtype)
    model, name, local = _model(model_id_or_path, source, revision=revision, token=token, torch_dtype=torch_dtype,
                                device_map=device_map, max_memory=max_memory)
    result = _prune(model, tokenizer, job, state_dir=state_dir, show_progress=show_progress)
    from .engine.distributed import barrier, is_main, world_size

    if not is_main():  # rank > 0: take part in every level's refit (collectives), write nothing
        for s in result.config.target_sparsity:
            if not (s == result.config.target_sparsity[-1] and result.model is not None):
                result.apply(model, s)
        barrier()
        return PruneAndPushResult(folders={}, metrics={}, result=result, primary=job.primary)

    from .saving import calibration_description, describe_base_model

    base = describe_base_model(model, name, local=local, base_model=base_model, license=license,
                               revision=revision, token=token)
    calib_desc = calibration_description(job.calibration, result.config, calibration_sources)
    evaluate = _evaluator(tokenizer, job.evaluation, eval_seq_len, eval_max_windows, show_progress)
    evaluate = _with_accuracy(evaluate, tokenizer, job)
    dense_report, dense_accuracy = evaluate(model, "dense")
    metrics: dict[str, Any] = {"dense": {"params": base.params}, "levels": {}}
    if job.config.recovery is not None:
        metrics["recovery"] = job.config.recovery.to_dict()
    if dense_report is not None:
        metrics["dense"]["perplexity"] = dense_report.to_dict()
    if dense_accuracy is not None:
        metrics["dense"]["accuracy"] = dense_accuracy.to_dict()
    folders: dict[float, Path] = {}
    cards: dict[float, Any] = {}
    job.out.mkdir(parents=True, exist_ok=True)
    for s in result.config.target_sparsity:
        folders[s], metrics["levels"][s], cards[s] = _save_level(
            model, tokenizer, result, s, base=base, job=job, evaluate=evaluate, dense_report=dense_report,
            calibration=calib_desc, eval_seq_len=eval_seq_len, overwrite=overwrite, show_progress=show_progress,
            dense_accuracy=dense_accuracy,
            mix=job.calibration.to_dict() if isinstance(job.calibration, CalibrationMix) else None,
            recovery=_Recovery(windows, state_dir) if windows is not None else None)

    if dense_accuracy is not None:
        _cards_with_all_levels(folders, cards, metrics)
    pushes: list[Any] = []
    if job.repo_id is not None:
        from .hub.push import push_pruned_folders

        logger.info("pushing %d level(s) to %s (main = %s)", len(folders), job.repo_id, level_name(job.primary))
        pushes = push_pruned_folders(job.repo_id, {level_name(s): f for s, f in folders.items()},
                                     primary=level_name(job.primary), token=token, private=private,
                                     overwrite=overwrite, endpoint=endpoint)
    if world_size() > 1:
        barrier()
    return PruneAndPushResult(folders=folders, metrics=metrics, pushes=pushes, result=result, primary=job.primary,
                              repo_id=job.repo_id)


def _world_size() -> int:
    """Processes of this run as torchrun describes them (read from the environment: no torch needed)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _rank_device_map(device_map: Any) -> Any:
    """A data-parallel rank's device: ``cuda:LOCAL_RANK`` on GPUs when no ``device_map`` is given."""
    import torch

    if device_map is None and torch.cuda.is_available():
        return {"": int(os.environ.get("LOCAL_RANK", "0"))}
    return device_map


def model_config(source: Any, *, revision: str | None = None, token: str | None = None) -> dict[str, Any]:
    """The full ``config.json`` of a checked model source (a Hub model's is read from the Hub: one small file)."""
    needed = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    config = dict(source.config)
    if source.local or all(k in config for k in needed):
        return config
    import json

    from huggingface_hub import hf_hub_download

    path = hf_hub_download(source.name, "config.json", revision=revision, token=token)
    return json.loads(Path(path).read_text(encoding="utf-8"))


def check_memory(config_json: Mapping[str, Any], config: PruneConfig, *, device_map: Any = None,
                 max_memory: Mapping[Any, Any] | None = None, dtype: Any = "auto"):
    """Log the memory plan and refuse a run that cannot fit (:class:`~hf_prune.InsufficientMemoryError`)."""
    from .engine.memory import check_fits
    from .loading import parse_dtype

    name = parse_dtype(dtype)
    plan = check_fits(config_json, config, device_map=device_map, max_memory=max_memory,
                      dtype=name if isinstance(name, str) else str(name), world_size=_world_size())
    if _rank() == 0:
        for line in str(plan).splitlines():
            logger.info("%s", line)
    return plan


def _prune(model, tokenizer, job: _Job, *, state_dir, show_progress):
    from .engine.pruner import prune

    logger.info("pruning to %s with %s", ", ".join(f"{s:.0%}" for s in job.config.target_sparsity), job.config.method)
    return prune(model, tokenizer, job.calibration, job.config, state_dir=state_dir, show_progress=show_progress)


def _recovery_windows(job: _Job, tokenizer):
    """The training windows of the run's recovery (None without recovery), drawn from the calibration mix."""
    if job.config.recovery is None:
        return None
    from .recovery.data import training_windows

    return training_windows(job.calibration, tokenizer, job.config.recovery)


@dataclass(frozen=True)
class _Recovery:
    """What recovering a level needs besides the model: the drawn windows and where checkpoints go."""

    windows: Any
    state_dir: Any


def _recover_level(pruned, model, tokenizer, config: PruneConfig, s: float, recovery: _Recovery, evaluate,
                   show_progress: bool):
    """(recovered model, RecoveryResult, its PerplexityReport or None, its AccuracyReport or None): ``pruned`` trained
    towards ``model``."""
    from .recovery.distill import recover

    logger.info("recovering %s: %s on %s tokens", level_name(s), config.recovery.method,
                f"{config.recovery.tokens_used:,}")
    state = Path(recovery.state_dir) / "recovery" / level_name(s) if recovery.state_dir is not None else None
    result = recover(pruned, model, tokenizer, None, config.recovery, windows=recovery.windows, state_dir=state,
                     show_progress=show_progress)
    return result.model, result, *evaluate(result.model, f"{level_name(s)} recovered")


def _evaluator(tokenizer, evaluation, seq_len: int, max_windows: int | None, show_progress: bool):
    """``evaluate(model, label) -> PerplexityReport | None`` on the run's evaluation text (None: no evaluation)."""
    from .evaluation import evaluate_perplexity

    def evaluate(model, label: str):
        if evaluation is None:
            return None
        logger.info("evaluating %s", label)
        return evaluate_perplexity(model, tokenizer, evaluation, seq_len=seq_len, max_windows_per_domain=max_windows,
                                   label=label, progress=show_progress)

    return evaluate


def _with_accuracy(evaluate, tokenizer, job: _Job):
    """``evaluate(model, label) -> (PerplexityReport | None, AccuracyReport | None)``: perplexity, then the tasks."""
    def both(model, label: str):
        report = evaluate(model, label)
        if job.tasks is None:
            return report, None
        from .accuracy import evaluate_tasks

        logger.info("accuracy of %s on %s", label, ", ".join(job.tasks.names))
        return report, evaluate_tasks(model, tokenizer, job.tasks, label=label, **job.task_options)

    return both


def _cards_with_all_levels(folders: Mapping[float, Path], cards: Mapping[float, Any], metrics: Mapping[str, Any]) -> None:
    """Rewrite each level's card so its accuracy table holds dense and every level of the run (a level's card is
    written before the later levels are evaluated)."""
    from .hub.card import render_model_card
    from .fileio import write_text_atomic

    columns = [("dense", metrics["dense"]["accuracy"])]
    for s, m in sorted(metrics["levels"].items()):
        columns.append((m["branch"], m["accuracy"]))
        if "accuracy" in m.get("recovered", {}):
            columns.append((f"{m['branch']} recovered", m["recovered"]["accuracy"]))
    for s, folder in folders.items():
        cards[s].accuracy_columns = columns
        write_text_atomic(folder / "README.md", render_model_card(cards[s]))


def _save_level(model, tokenizer, result, s: float, *, base, job: _Job, evaluate, dense_report, calibration,
                eval_seq_len: int, overwrite: bool, mix, show_progress: bool,
                recovery: _Recovery | None = None, dense_accuracy=None) -> tuple[Path, dict[str, Any], Any]:
    """Build one level from the dense model, evaluate it, recover it (if asked) and evaluate it again, save its
    folder; returns (folder, its metrics, its CardInfo)."""
    import copy

    import torch

    from .saving import level_card, save_level

    top = s == result.config.target_sparsity[-1] and result.model is not None
    if top:  # the run's own top-level model: recovery trains a copy, so result.model stays as pruned
        pruned = copy.deepcopy(result.model) if recovery is not None else result.model
    else:
        pruned = result.apply(model, s, show_progress=show_progress)
    pruned.eval()
    if getattr(pruned, "generation_config", None) is None and getattr(model, "generation_config", None) is not None:
        pruned.generation_config = model.generation_config
    report, accuracy = evaluate(pruned, level_name(s))
    entry = {"branch": level_name(s), "target_sparsity": s, "sparsity": result.sparsity[s],
             "kv_cache_reduction": result.kv_cache_reduction[s], "params": sum(p.numel() for p in pruned.parameters())}
    if report is not None:
        entry["perplexity"] = report.to_dict()
    if accuracy is not None:
        entry["accuracy"] = accuracy.to_dict()
    trained = recovered = recovered_accuracy = None
    if recovery is not None:
        pruned, trained, recovered, recovered_accuracy = _recover_level(pruned, model, tokenizer, result.config, s,
                                                                        recovery, evaluate, show_progress)
        entry["recovery"] = trained.to_dict()
        entry["recovered"] = {k: v.to_dict() for k, v in (("perplexity", recovered), ("accuracy", recovered_accuracy))
                              if v is not None}
        if not entry["recovered"]:
            del entry["recovered"]
    accuracies = ({"dense": dense_accuracy, "pruned": accuracy, "recovered": recovered_accuracy}
                  if accuracy is not None else None)
    plan = result.plans[s]
    plan = type(plan)(layers=plan.layers, metadata={
        **plan.metadata, "base_model": base.name, "base_model_path": base.path, "base_model_revision": base.revision,
        "calibration": mix, "settings": result.settings,
    })
    card = level_card(base, pruned, config=result.config, sparsity=s, measured=result.sparsity[s],
                      kv_cache_reduction=result.kv_cache_reduction[s], calibration=calibration, dense=dense_report,
                      pruned=report, eval_seq_len=eval_seq_len, repo_id=job.repo_id, recovered=recovered,
                      recovery=trained, accuracy=accuracies)
    evaluation = {"base_model": base.name, "branch": level_name(s), "target_sparsity": s,
                  "sparsity": result.sparsity[s], "kv_cache_reduction": result.kv_cache_reduction[s],
                  "params_before": base.params, "params_after": entry["params"],
                  "dense": dense_report.to_dict() if dense_report is not None else None,
                  "pruned": report.to_dict() if report is not None else None}
    if trained is not None:
        evaluation["recovered"] = recovered.to_dict() if recovered is not None else None
        evaluation["recovery"] = trained.to_dict()
    if accuracies is not None:  # perplexity keeps its keys; accuracy sits beside it, model by model
        evaluation["accuracy"] = {k: v.to_dict() for k, v in accuracies.items() if v is not None}
    folder = save_level(job.out / level_name(s), pruned, tokenizer, plan=plan, config=result.config, card=card,
                        evaluation=evaluation, overwrite=overwrite)
    del pruned
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder, entry, card
