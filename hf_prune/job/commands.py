"""The other jobs of the command line: evaluate a model, push saved levels, export a level for serving.

Each starts with :func:`~hf_prune.job.checks.check_inputs`, like :func:`~hf_prune.prune_and_push`; the command line
only parses arguments and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import EvaluationError, PushArgumentError
from .arguments import DataArguments, EvaluationArguments, ModelArguments, OutputArguments
from .checks import check_inputs, resolve_primary

__all__ = ["evaluate_model", "level_folders", "primary_branch", "push_folders", "export_folder", "refresh_code"]


def evaluate_model(model: ModelArguments, data: DataArguments, evaluation: EvaluationArguments, *,
                   output: OutputArguments | None = None, show_progress: bool = True) -> tuple[Any, Any]:
    """(:class:`~hf_prune.evaluation.PerplexityReport` or ``None``, :class:`~hf_prune.accuracy.AccuracyReport` or
    ``None``) of one model, checked (and its tasks loaded) before the weights are read."""
    from ..accuracy import prepare_tasks
    from ..data.spec import check_overlap
    from .levels import Evaluator, load_model, load_tokenizer

    if evaluation.evaluation is None and evaluation.tasks is None:
        raise EvaluationError("give --evaluation (perplexity per domain), --tasks (accuracy) or both")
    checked = check_inputs(model=model, data=data, evaluation=evaluation, output=output)
    tasks = prepare_tasks(checked.tasks) if checked.tasks is not None else None  # an unreachable dataset fails now
    tokenizer = load_tokenizer(model, checked.source)
    check_overlap(checked.calibration, checked.evaluation, tokenizer=tokenizer)
    loaded, _, _ = load_model(model, checked.source)
    return Evaluator(tokenizer, checked.evaluation, evaluation, tasks, show_progress)(loaded, str(model.model))


def level_folders(paths: list[str]) -> dict[str, Path]:
    """``{branch: folder}`` of checkpoint folders, or of the ``sparsity-XX/`` level folders of output dirs.

    Each must be a level written by hf-prune (:func:`~hf_prune.format.checkpoint.check_checkpoint`: its config, plan
    and weights agree) in a folder named after its plan's sparsity: the folder's name becomes the branch.

    Raises:
        PushArgumentError, ModelLoadError: naming the first folder that is not such a level.
    """
    from ..config import LEVEL_NAME, level_name
    from ..format.checkpoint import check_checkpoint

    folders: dict[str, Path] = {}
    for given in map(Path, paths):
        if (given / "config.json").is_file():
            candidates = [given]
        else:  # an output dir: its level folders
            candidates = sorted(p for p in given.glob("*-*") if LEVEL_NAME.fullmatch(p.name)
                                and (p / "config.json").is_file()) if given.is_dir() else []
            if not candidates:
                raise PushArgumentError(f"{given} is neither a checkpoint folder (config.json) nor a folder of "
                                        "sparsity-XX/ level folders")
        for folder in candidates:
            if folder.name in folders:
                raise PushArgumentError(f"two folders would go to branch {folder.name!r}")
            metadata = check_checkpoint(folder).metadata
            target = metadata.get("target_sparsity")
            if target is None or folder.name != (metadata.get("level") or level_name(target)):
                raise PushArgumentError(f"{folder} holds the level of sparsity {target} by its pruning plan, but its "
                                        f"name makes it branch {folder.name!r}: push level folders as hf-prune named "
                                        "them.")
            folders[folder.name] = folder
    return folders


def primary_branch(primary: str | None, branches: list[str]) -> str:
    """The branch for main among level branches (``sparsity-XX``, ``params-5B``, ``memory-12GiB``: the least pruned;
    others sort last), as prune_and_push picks it."""
    from ..options import parse_bytes, parse_count
    if primary in branches:
        return primary

    def level(branch: str) -> float:
        """How much a level removes, for ordering: its sparsity, or a larger size target first."""
        kind, _, size = branch.partition("-")
        size = size.split("-kv-")[0]
        try:
            return {"sparsity": lambda: float(size) / 100, "params": lambda: -parse_count(size),
                    "memory": lambda: -parse_bytes(size)}[kind]()
        except (KeyError, ValueError):
            return float("inf")

    levels = {level(b): b for b in branches if level(b) != float("inf")}
    if primary is None:
        return min(branches, key=lambda b: (level(b), b))
    try:
        return levels[resolve_primary(primary, sorted(levels))]
    except (PushArgumentError, ValueError):
        raise PushArgumentError(f"--primary {primary!r} is none of the branches {sorted(branches)}") from None


def push_folders(output: OutputArguments, paths: list[str]) -> list[Any]:
    """Push saved level folders to ``output.repo_id``, one branch each, ``main`` last."""
    from ..hub.push import push_pruned_folders

    folders = level_folders(paths)
    check_inputs(output=output)
    return push_pruned_folders(output.repo_id, folders, primary=primary_branch(output.primary, list(folders)),
                               private=output.private, overwrite=output.overwrite)


def export_folder(model: ModelArguments, output: OutputArguments, format: str, *, dtype: str | None = None) -> Path:
    """Write a saved model folder in a serving format (checked before anything heavy is imported)."""
    check_inputs(model=model, output=output)
    from ..serving.api import export

    return export(model.model, format, output.output_dir, tokenizer=model.tokenizer, overwrite=output.overwrite,
                  dtype=dtype)


def refresh_code(target: str, *, hub: bool = False, branches: list[str] | None = None,
                 endpoint: str | None = None) -> dict[str, list[str]]:
    """Replace the shipped modeling files of saved levels (``target`` a folder) or of a Hub repo (``hub``) with this
    version's; returns ``{level folder or branch: files rewritten}`` (one commit per branch that changed)."""
    if not hub:
        if branches:
            raise PushArgumentError("--branch selects branches of a Hub repo: add --hub.")
        from ..format.refresh import refresh_code_files

        return {str(folder): names for folder, names in refresh_code_files(target).items()}
    from ..hub.refresh import refresh_code as refresh_hub

    return {result.branch: [result.commit_url] for result in refresh_hub(target, branches=branches, endpoint=endpoint)}
