"""Writing pruned checkpoints: all-or-nothing folders."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import HfPruneError
from .plan import PruningPlan

__all__ = ["OutputExistsError", "check_output_dir", "atomic_dir", "save_pruned_model", "PLAN_FILE"]

PLAN_FILE = "pruning_plan.json"


class OutputExistsError(HfPruneError, FileExistsError):
    """The output folder exists and is not empty, and overwriting was not asked for."""


def check_output_dir(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Refuse a non-empty existing folder unless ``overwrite``; call before any expensive work."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputExistsError(f"{path} exists and is not a folder.")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise OutputExistsError(f"{path} exists and is not empty; pass overwrite=True (--overwrite) to replace it.")
    return path


@contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling folder that replaces ``path`` only if the block finishes.

    A crash or error part-way leaves ``path`` as it was: never a half-written folder under the final name.
    """
    path = check_output_dir(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.partial-", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_pruned_model(
    model: Any,
    path: str | os.PathLike,
    *,
    tokenizer: Any = None,
    plan: PruningPlan | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = "2GB",
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Save a pruned model (safetensors, config with ``auto_map``, modeling files), its tokenizer and plan.

    The folder appears complete or not at all. ``extra(folder)`` may add files (model card, evaluation...)
    before it is moved into place.
    """
    with atomic_dir(path, overwrite) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if plan is not None:
            plan.save(tmp / PLAN_FILE)
        if extra is not None:
            extra(tmp)
    return Path(path)
