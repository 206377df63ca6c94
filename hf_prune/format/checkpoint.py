"""Writing pruned checkpoints: all-or-nothing folders with the plan next to the weights."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..fileio import atomic_dir
from .plan import PruningPlan

__all__ = ["save_pruned_model", "PLAN_FILE"]

PLAN_FILE = "pruning_plan.json"


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
