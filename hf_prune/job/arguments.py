"""The arguments of a job, grouped by what they are about (as llm-compressor's ``oneshot`` groups its own).

:func:`~hf_prune.prune_and_push` takes them as keyword arguments (its public signature) and groups them here;
the command line builds the same groups for ``prune``, ``evaluate``, ``push`` and ``export``, so every command
is checked by the one :func:`~hf_prune.job.checks.check_inputs`. Nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["DEFAULT_CALIBRATION", "ModelArguments", "DataArguments", "EvaluationArguments", "OutputArguments",
           "RunArguments"]

#: Used when no calibration is given: public Hub datasets (see ``hf_prune.data.PRESETS``).
DEFAULT_CALIBRATION = "web=0.3,code=0.3,math=0.2,dialogue=0.2"


@dataclass
class ModelArguments:
    """Which model, and how it is loaded.

    Attributes:
        model: Hub id or local folder, or an already loaded model (then ``tokenizer`` is required).
        tokenizer: a tokenizer, or the Hub id / folder to load one from, instead of the model's own.
        revision, torch_dtype, device_map: passed to ``from_pretrained``.
        token: Hub token for reading (and pushing); never logged.
        max_memory: accelerate's ``{device: size}``, for ``from_pretrained`` and the memory plan.
    """

    model: Any
    tokenizer: Any = None
    revision: str | None = None
    torch_dtype: Any = "auto"
    device_map: Any = None
    token: str | None = None
    max_memory: Mapping[Any, Any] | None = None

    @property
    def is_loaded(self) -> bool:
        """Whether ``model`` is a model object rather than where to load one from."""
        return not isinstance(self.model, (str, os.PathLike))


@dataclass
class DataArguments:
    """The calibration data.

    Attributes:
        calibration: anything :func:`hf_prune.data.as_calibration` accepts (``None``: no calibration).
        sources: domain -> where its text comes from, for the model cards.
    """

    calibration: Any = None
    sources: Mapping[str, str] | None = None


@dataclass
class EvaluationArguments:
    """Perplexity per domain and accuracy on tasks.

    Attributes:
        evaluation: the evaluation domains (``None``: no perplexity).
        seq_len, max_windows: evaluation window length and per-domain cap.
        tasks: accuracy tasks (``None``: no accuracy); num_fewshot, limit, batch_size: their settings
            (``batch_size`` ``None``: :func:`~hf_prune.evaluate_tasks`'s default).
    """

    evaluation: Any = None
    seq_len: int = 256
    max_windows: int | None = None
    tasks: Any = None
    num_fewshot: int = 0
    limit: int | float | None = None
    batch_size: int | None = None

    def task_options(self) -> dict[str, Any]:
        """The keyword arguments of :func:`~hf_prune.evaluate_tasks` given here."""
        options = {"num_fewshot": self.num_fewshot, "limit": self.limit}
        return options if self.batch_size is None else {**options, "batch_size": self.batch_size}


@dataclass
class OutputArguments:
    """Where the levels go: a local folder, and the Hub.

    Attributes:
        output_dir: parent folder of the level folders; must be empty unless ``overwrite``.
        overwrite: replace a non-empty ``output_dir`` and allow pushing to a repo that has content.
        repo_id, push: the Hub repo; ``push=None`` pushes when ``repo_id`` is given, ``False`` never.
        primary: the level for ``main`` (a sparsity or a level name; default the lowest).
        private, endpoint: Hub repo visibility and URL.
        base_model, license: what the model cards name as base model and licence.
        report_file: a file the command writes its report to (``hf-prune evaluate --json``).
    """

    output_dir: str | os.PathLike | None = None
    overwrite: bool = False
    repo_id: str | None = None
    push: bool | None = None
    primary: float | str | None = None
    private: bool = False
    endpoint: str | None = None
    base_model: str | None = None
    license: str | None = None
    report_file: str | os.PathLike | None = None

    @property
    def push_to(self) -> str | None:
        """The repo the levels are pushed to, if any."""
        return self.repo_id if self.push is not False else None


@dataclass
class RunArguments:
    """How the run goes: resumable state and progress bars."""

    state_dir: str | os.PathLike | None = None
    show_progress: bool = True
