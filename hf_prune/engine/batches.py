"""Calibration input for the scoring rounds: batches from any accepted form, and a per-domain loss log."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..errors import PruningError
from .objectives import lm_loss

__all__ = ["calibration_batches", "is_mix", "LossRecorder", "describe_calibration", "window_losses"]


def is_mix(calibration: Any) -> bool:
    """Whether ``calibration`` draws its own windows (a ``CalibrationMix``), as opposed to ready tokens."""
    from ..data.windows import CalibrationWindows

    return hasattr(calibration, "sample") and not isinstance(calibration, CalibrationWindows)


def calibration_batches(calibration: Any, tokenizer: Any, num_samples: int, seq_len: int, seed: int,
                        batch_size: int, device: torch.device) -> list[dict[str, Any]]:
    """Normalise the accepted calibration inputs into a list of batches (dicts of tensors, with domain labels)."""
    from ..data.multiple_choice import MultipleChoiceBatch
    from ..data.windows import CalibrationWindows

    if is_mix(calibration):
        if tokenizer is None:
            raise PruningError("A CalibrationMix needs the tokenizer: prune(model, tokenizer, calibration, ...).")
        calibration = calibration.sample(tokenizer, num_samples, seq_len, seed=seed)
    if isinstance(calibration, torch.Tensor):
        calibration = CalibrationWindows(calibration.long(), ["calibration"] * calibration.shape[0])
    if isinstance(calibration, CalibrationWindows):
        return [
            {"input_ids": ids.to(device), "domains": list(domains)}
            for ids, domains in calibration.iter_batches(batch_size)
        ]
    if isinstance(calibration, MultipleChoiceBatch):
        # Batches hold whole questions, so the margin objective sees every question's correct and wrong choices.
        out = []
        questions = calibration.question_index
        for start in range(0, calibration.num_questions, batch_size):
            rows = (questions >= start) & (questions < start + batch_size)
            out.append({k: getattr(calibration, k)[rows].to(device) for k in calibration.__dataclass_fields__})
        return out
    if isinstance(calibration, Sequence) and calibration and isinstance(calibration[0], Mapping):
        return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()} for b in calibration]
    raise PruningError(
        "calibration must be a CalibrationMix, CalibrationWindows, a [N, seq_len] tensor of token ids, a "
        f"MultipleChoiceBatch or a list of batch dicts; got {type(calibration).__name__}."
    )


def describe_calibration(calibration: Any) -> Any:
    """What identifies the calibration data in a run's state: a mix's spec, else the type's name."""
    return calibration.to_dict() if hasattr(calibration, "to_dict") else type(calibration).__name__


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
