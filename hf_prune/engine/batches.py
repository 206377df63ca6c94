"""What the scoring rounds do with calibration batches: a progress bar, per-window losses, a per-domain loss log.

The batches themselves come from :meth:`hf_prune.data.calibration.Calibration.batches`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .objectives import lm_loss

__all__ = ["LossRecorder", "window_losses", "batch_progress"]


def batch_progress(batches: Iterable[Any], desc: str, disable: bool) -> Iterator[Any]:
    """``batches`` with a per-batch progress bar that disappears when done (every criterion shows one)."""
    total = len(batches) if hasattr(batches, "__len__") else None
    return iter(tqdm(batches, desc=desc, total=total, disable=disable, leave=False, unit="batch"))


def window_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each window (fp32)."""
    logits = model(input_ids=ids, use_cache=False).logits
    targets = ids[:, 1:].to(logits.device)  # a model split over devices gives its logits on the last one
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), targets, reduction="none").mean(1)


class LossRecorder:
    """Wraps the objective to log the loss per domain (the forward pass is shared with scoring)."""

    def __init__(self, objective: Callable):
        self.objective = objective
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def __call__(self, model, batch):
        domains = batch.get("domains")
        if self.objective is lm_loss and domains is not None and "labels" not in batch:
            per_sample = window_losses(model, batch["input_ids"])
            for d, value in zip(domains, per_sample.detach().tolist()):
                self.sums[d] = self.sums.get(d, 0.0) + value
                self.counts[d] = self.counts.get(d, 0) + 1
            return per_sample.mean()
        loss = self.objective(model, batch)
        self.sums["all"] = self.sums.get("all", 0.0) + float(loss.detach())
        self.counts["all"] = self.counts.get("all", 0) + 1
        return loss

    def reduce(self) -> None:
        """Add up the losses of every data-parallel rank (once per round), so each logs the whole set's."""
        from .distributed import all_reduce_floats, is_distributed

        if is_distributed():
            both = all_reduce_floats({**{f"s:{k}": v for k, v in self.sums.items()},
                                      **{f"c:{k}": float(v) for k, v in self.counts.items()}})
            self.sums = {k[2:]: v for k, v in both.items() if k.startswith("s:")}
            self.counts = {k[2:]: int(v) for k, v in both.items() if k.startswith("c:")}

    def per_domain(self) -> dict[str, float]:
        return {d: self.sums[d] / self.counts[d] for d in sorted(self.sums)}

    def mean(self) -> float | None:
        total = sum(self.counts.values())
        return sum(self.sums.values()) / total if total else None
