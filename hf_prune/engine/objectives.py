"""Objectives whose gradient drives the first-order (Taylor) importance: ``loss(model, batch) -> scalar``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import PruningError

__all__ = ["Objective", "lm_loss", "margin_loss", "get_objective"]

Objective = Callable[[Any, Mapping[str, torch.Tensor]], torch.Tensor]


def lm_loss(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy (labels default to the inputs; -100 labels are ignored)."""
    labels = batch.get("labels", batch["input_ids"])
    return model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=labels,
                 use_cache=False).loss


def _sequence_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Mean CE over each sequence's labelled (answer) tokens, next-token aligned.
    logits, labels = logits[:, :-1].float(), labels[:, 1:]
    mask = labels != -100
    ce = F.cross_entropy(logits.transpose(1, 2), labels.clamp(min=0), reduction="none")
    return (ce * mask).sum(1) / mask.sum(1).clamp(min=1)


def margin_loss(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """GISP's multiple-choice objective: mean CE of correct answers minus mean CE of wrong answers.

    The batch holds one sequence per choice with ``labels`` (-100 outside the answer tokens) and a boolean
    ``is_correct``.
    """
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False).logits
    ce = _sequence_ce(logits, batch["labels"].to(logits.device))  # logits: on the last device of a split model
    correct = batch["is_correct"].bool().to(ce.device)
    parts = []
    if correct.any():
        parts.append(ce[correct].mean())
    if (~correct).any():
        parts.append(-ce[~correct].mean())
    return sum(parts)


_OBJECTIVES: dict[str, Objective] = {"lm": lm_loss, "margin": margin_loss}


def get_objective(objective: str | Objective) -> Objective:
    if callable(objective):
        return objective
    try:
        return _OBJECTIVES[objective]
    except KeyError:
        raise PruningError(f"Unknown objective {objective!r}; choose one of {sorted(_OBJECTIVES)} or pass a callable.") from None
