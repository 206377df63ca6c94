"""Every exception (and the one warning) hf_prune raises.

Each error derives from :class:`HfPruneError` and from the builtin a caller would expect (``ValueError``,
``TypeError``, ``FileExistsError``...), so ``except ValueError`` keeps working. Messages are one line and
name what is wrong (the domain, the layer, the argument). This module imports nothing heavy.
"""

from __future__ import annotations

__all__ = [
    "HfPruneError",
    "ModelLoadError",
    "UnsupportedModelError",
    "TokenizerError",
    "InvalidPlanError",
    "ConfigMismatchError",
    "ExportError",
    "NotUniformError",
    "CalibrationError",
    "DataOverlapWarning",
    "PruningError",
    "EvaluationError",
    "RecoveryError",
    "RecoveryDivergedError",
    "OutputExistsError",
    "OutputNotWritableError",
    "AssetNotFoundError",
    "DataFetchError",
    "ModelCardError",
    "HubError",
    "PushArgumentError",
    "HubAuthError",
    "RepoExistsError",
    "PushIncompleteError",
    "InsufficientMemoryError",
]


class HfPruneError(Exception):
    """Base class of every hf_prune error."""


# ---- the model and its tokenizer -----------------------------------------------------------------------
class ModelLoadError(HfPruneError, ValueError):
    """A model cannot be loaded as given: no such folder, no ``config.json``, not a Hub id, a bad dtype."""


class UnsupportedModelError(HfPruneError, TypeError):
    """The model is not a Qwen2 / Qwen3 causal LM that hf_prune can slice (Llama models convert exactly to Qwen2)."""


class TokenizerError(HfPruneError, ValueError):
    """The tokenizer loaded for a model cannot tokenise text (e.g. a folder without tokenizer files)."""


# ---- the format ----------------------------------------------------------------------------------------
class InvalidPlanError(HfPruneError, ValueError):
    """A :class:`~hf_prune.PruningPlan` does not fit the model it is applied to."""


class ConfigMismatchError(HfPruneError, ValueError):
    """A model's config disagrees with the shapes of its weights."""


class ExportError(HfPruneError, ValueError):
    """A model cannot be written in the export format asked for (:func:`hf_prune.export`): an unknown format, one
    meant for another model type, or shapes / options the format's servers cannot run (the message says which)."""


class NotUniformError(ExportError):
    """A pruned model's layers differ where the export format needs one value for all: every shape for a stock
    ``qwen2`` / ``qwen3`` checkpoint, the query-head count for ``deci``."""


# ---- data, pruning, evaluation -------------------------------------------------------------------------
class CalibrationError(HfPruneError, ValueError):
    """A calibration or evaluation data spec is invalid (names the domain at fault)."""


class DataOverlapWarning(UserWarning):
    """Evaluation documents also appear in the calibration data (the evaluation is optimistic)."""


class PruningError(HfPruneError, ValueError):
    """Pruning options (a :class:`~hf_prune.PruneConfig`) are invalid or cannot be satisfied by the model."""


class EvaluationError(HfPruneError, ValueError):
    """Evaluation options are invalid (window length, stride, batch size...)."""


class RecoveryError(PruningError):
    """Recovery options (a :class:`~hf_prune.recovery.RecoveryConfig`) are invalid or cannot be met (a token budget
    the data cannot supply, LoRA without PEFT installed)."""


class RecoveryDivergedError(HfPruneError, FloatingPointError):
    """The recovery loss became NaN or infinite; the message names the optimizer step.

    Attributes:
        step: the optimizer step whose loss was not finite.
    """

    def __init__(self, message: str, *, step: int) -> None:
        super().__init__(message)
        self.step = step


# ---- files ---------------------------------------------------------------------------------------------
class OutputExistsError(HfPruneError, FileExistsError):
    """The output folder exists and is not empty, and overwriting was not asked for."""


class OutputNotWritableError(HfPruneError, PermissionError):
    """An output location cannot be created or written (no permission, a file in the way, a read-only filesystem)."""


class AssetNotFoundError(HfPruneError, FileNotFoundError):
    """A real-model asset (e.g. the SmolLM2 GGUF wheel) is not installed; the message gives the command."""


class DataFetchError(HfPruneError, RuntimeError):
    """Demo text could not be fetched from a package registry (names the package)."""


# ---- model cards and the Hub ---------------------------------------------------------------------------
class ModelCardError(HfPruneError, ValueError):
    """A model card cannot be rendered from the given :class:`~hf_prune.hub.CardInfo` or its metadata is invalid."""


class HubError(HfPruneError, RuntimeError):
    """An upload to the Hugging Face Hub failed or was refused."""


class PushArgumentError(HfPruneError, ValueError):
    """Arguments of a push are invalid (checked before any network call)."""


class HubAuthError(HubError):
    """The Hub refused the token (missing, invalid or without write access). Never retried."""


class RepoExistsError(HubError):
    """The target repo already has content and ``overwrite=True`` was not given."""


class PushIncompleteError(HubError):
    """A push failed part-way. ``landed`` lists the branches that were committed; ``main`` was not changed.

    Attributes:
        landed: one :class:`~hf_prune.hub.PushResult` per branch committed before the failure.
        failed_branch: the branch whose commit failed.
        status_code: the HTTP status of the last failure, if it was an HTTP error.
    """

    def __init__(self, message: str, *, landed: list, failed_branch: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.landed = list(landed)
        self.failed_branch = failed_branch
        self.status_code = status_code


class InsufficientMemoryError(HfPruneError, MemoryError):
    """The memory plan says the run cannot fit the devices it was given (raised before any weights are loaded).

    The message names the device, what the run needs and has, and the options that would make it fit.
    """
