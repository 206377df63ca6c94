"""Names that differ between the transformers versions hf-prune supports (see docs/compatibility.md).

The one place where the package (not the shipped modeling files, which carry their own) asks which version it runs
on. May import: transformers.
"""

from __future__ import annotations

from typing import Any

#: `TrainingArguments` field that turns on activation checkpointing: renamed in transformers 5.24.
TRAINING_CHECKPOINTING_ARGUMENT = "activation_checkpointing"


def training_checkpointing_argument() -> str:
    """The installed `TrainingArguments`' name for activation checkpointing (``gradient_checkpointing`` before 5.24)."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return TRAINING_CHECKPOINTING_ARGUMENT if TRAINING_CHECKPOINTING_ARGUMENT in fields else "gradient_checkpointing"


def enable_activation_checkpointing(model: Any) -> None:
    """Recompute each decoder layer in the backward pass (non-reentrant), under the installed version's name.

    ``activation_checkpointing_enable`` from transformers 5.23 (where ``gradient_checkpointing_enable`` starts to warn),
    ``gradient_checkpointing_enable`` before.
    """
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def is_activation_checkpointing(model: Any) -> bool:
    """Whether activation checkpointing is on, under the installed version's name."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def disable_activation_checkpointing(model: Any) -> None:
    """Undo :func:`enable_activation_checkpointing`."""
    if hasattr(model, "activation_checkpointing_disable"):
        model.activation_checkpointing_disable()
    else:
        model.gradient_checkpointing_disable()
