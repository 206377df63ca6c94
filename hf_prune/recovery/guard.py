"""The held-back guard: recovery never returns a model worse on its held-back windows than the one it was given.

:class:`HeldBackGuard` measures the next-token loss of the held-back windows (:func:`recovery_windows`, disjoint from
the training windows) before training, every ``eval_steps`` optimizer steps and at the last step; it keeps a copy
of the trainable weights at the best measurement so far (the input's at first), asks the Trainer to stop after
``patience`` measurements without a new best, and :meth:`restore` puts the best weights back at the end. When no
step beat the input, the input comes back unchanged, with a warning.

Under ``torchrun`` each process measures its share of the held-back windows and the sums are added up, so every
process takes the same decisions. With a state dir, the guard's numbers and best weights are written beside each
Trainer checkpoint and read back on resume.
"""

from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from ..fileio import write_text_atomic
from .losses import token_losses

__all__ = ["HeldBackGuard", "HeldBackReport", "held_back_loss", "trainable_weights", "load_weights"]

logger = logging.getLogger(__name__)

#: Files the guard writes into a Trainer checkpoint folder.
GUARD_STATE, GUARD_WEIGHTS = "held_back.json", "held_back_best.safetensors"


@torch.no_grad()
def held_back_loss(model: torch.nn.Module, input_ids: torch.Tensor, batch_size: int,
                   bf16: bool = False) -> torch.Tensor:
    """Each window's mean next-token cross-entropy ``[N]`` (fp32, on the CPU). Under ``torch.distributed`` each
    process computes every ``world``-th window and the results are summed, so all processes return the same."""
    dist = torch.distributed
    world, rank = (dist.get_world_size(), dist.get_rank()) if dist.is_available() and dist.is_initialized() else (1, 0)
    device = next(model.parameters()).device
    out = torch.zeros(input_ids.shape[0], dtype=torch.float64)
    mine = torch.arange(rank, input_ids.shape[0], world)
    was_training = model.training
    model.eval()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for i in range(0, len(mine), batch_size):
        rows = mine[i:i + batch_size]
        ids = input_ids[rows].to(device)
        with autocast:
            logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
        for row, window_logits, targets in zip(rows.tolist(), logits, ids[:, 1:]):
            out[row] = float(token_losses(window_logits, targets)[0])
    model.train(was_training)
    if world > 1:
        if dist.get_backend() == "nccl":
            out = out.to(device)
        dist.all_reduce(out)
    return out.float().cpu()


def trainable_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the parameters training changes (all of them, or the LoRA adapters)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}


@torch.no_grad()
def load_weights(model: torch.nn.Module, weights: dict[str, torch.Tensor]) -> None:
    """Copy :func:`trainable_weights` back into ``model``."""
    params = dict(model.named_parameters())
    for name, value in weights.items():
        params[name].copy_(value)


@dataclass
class HeldBackReport:
    """What the guard saw (losses are mean next-token cross-entropies on the held-back windows).

    Attributes:
        windows, domain_counts: the held-back windows (how many, and per domain).
        before: loss of the model as given; ``best`` / ``best_step``: the lowest measured and its optimizer step
            (0: the input); ``final`` / ``final_step``: the last measurement (the last step trained).
        returned: ``"input"`` (no step beat it: returned unchanged), ``"best"`` (an earlier step's weights) or
            ``"final"``.
        stopped_early: the step training stopped at for lack of improvement, or ``None``.
        history: ``(step, loss)`` of every measurement; ``per_domain``: ``{domain: (before, best)}``.
    """

    windows: int
    domain_counts: dict[str, int]
    before: float
    best: float
    best_step: int
    final: float | None = None
    final_step: int | None = None
    returned: str = "final"
    stopped_early: int | None = None
    history: list[tuple[int, float]] = field(default_factory=list)
    per_domain: dict[str, tuple[float, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["history"] = [[s, round(v, 6)] for s, v in self.history]
        out["per_domain"] = {d: [round(a, 6), round(b, 6)] for d, (a, b) in self.per_domain.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeldBackReport:
        data = dict(data)
        data["history"] = [tuple(x) for x in data.get("history", [])]
        data["per_domain"] = {d: tuple(v) for d, v in data.get("per_domain", {}).items()}
        return cls(**data)


class HeldBackGuard(TrainerCallback):
    """The guard of the module docstring, as a ``TrainerCallback``.

    Args:
        windows: the held-back :class:`~hf_prune.data.windows.CalibrationWindows`.
        every, patience: measure every ``every`` optimizer steps; stop after ``patience`` measurements without a new
            best (0: never).
        batch_size, bf16: how the held-back windows are run.
    """

    def __init__(self, windows: Any, every: int, patience: int, batch_size: int, bf16: bool = False) -> None:
        self.windows, self.every, self.patience = windows, every, patience
        self.batch_size, self.bf16 = batch_size, bf16
        self.report: HeldBackReport | None = None
        self.best_weights: dict[str, torch.Tensor] = {}
        self.input_weights: dict[str, torch.Tensor] = {}
        self.since_best = 0
        self._per_window: dict[str, torch.Tensor] = {}

    # ---- measuring ----------------------------------------------------------------------------------------
    def measure(self, model: torch.nn.Module) -> tuple[float, torch.Tensor]:
        """(mean held-back loss of ``model`` as it is now, each window's loss)."""
        per_window = held_back_loss(model, self.windows.input_ids, self.batch_size, self.bf16)
        return float(per_window.mean()), per_window

    def begin(self, model: torch.nn.Module, resume: str | None = None) -> None:
        """Before training: keep the input's weights; measure the input, or read what a checkpoint saved."""
        self.input_weights = trainable_weights(model)
        if resume is not None and self._load(Path(resume)):
            return
        before, per_window = self.measure(model)
        self.report = HeldBackReport(len(self.windows), self.windows.domain_counts, before, before, 0,
                                     history=[(0, before)])
        self._per_window = {"before": per_window, "best": per_window}
        self.best_weights = self.input_weights

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = state.global_step
        if step % self.every and step != state.max_steps:
            return
        self._record(model, step, control)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        # Another callback stopped training between measurements: the last step trained is measured too.
        if state.global_step and self.report.final_step != state.global_step:
            self._record(model, state.global_step, control)

    def _record(self, model: torch.nn.Module, step: int, control: Any) -> None:
        loss, per_window = self.measure(model)
        report = self.report
        report.history.append((step, loss))
        report.final, report.final_step = loss, step
        if loss < report.best:
            report.best, report.best_step, self.since_best = loss, step, 0
            self.best_weights = trainable_weights(model)
            self._per_window["best"] = per_window
        else:
            self.since_best += 1
            if self.patience and self.since_best >= self.patience:
                report.stopped_early = step
                control.should_training_stop = True

    # ---- the end ------------------------------------------------------------------------------------------
    def restore(self, model: torch.nn.Module) -> HeldBackReport:
        """Put the best weights back (the input's when nothing beat it, with a warning); returns the report."""
        report = self.report
        if report.best_step == 0:
            report.returned = "input"
            logger.warning("recovery did not lower the held-back loss (%.4f before, %.4f after %s steps): the model is "
                           "returned as it was given.", report.before, report.final, report.final_step)
        else:
            report.returned = "final" if report.best_step == report.final_step else "best"
        if report.returned != "final":
            load_weights(model, self.best_weights if report.best_step else self.input_weights)
        report.per_domain = self._per_domain()
        return report

    def _per_domain(self) -> dict[str, tuple[float, float]]:
        if "before" not in self._per_window:
            return {}
        labels = self.windows.domains
        out = {}
        for d in self.windows.domain_counts:
            rows = torch.tensor([i for i, x in enumerate(labels) if x == d])
            out[d] = (float(self._per_window["before"][rows].mean()), float(self._per_window["best"][rows].mean()))
        return out

    # ---- resume -------------------------------------------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        if not args.should_save or self.report is None:
            return
        from safetensors.torch import save_file

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.report.best_step:
            save_file({n: t.contiguous() for n, t in self.best_weights.items()}, str(folder / GUARD_WEIGHTS))
        saved = {"report": self.report.to_dict(), "since_best": self.since_best,
                 "per_window": {k: v.tolist() for k, v in self._per_window.items()}}
        write_text_atomic(folder / GUARD_STATE, json.dumps(saved) + "\n")

    def _load(self, folder: Path) -> bool:
        path = folder / GUARD_STATE
        if not path.is_file():
            return False
        from safetensors.torch import load_file

        saved = json.loads(path.read_text(encoding="utf-8"))
        self.report = HeldBackReport.from_dict(saved["report"])
        self.since_best = saved["since_best"]
        self._per_window = {k: torch.tensor(v) for k, v in saved["per_window"].items()}
        self.best_weights = load_file(str(folder / GUARD_WEIGHTS)) if self.report.best_step else self.input_weights
        return True
