"""``learning_rate="auto"``: a short probe picks the recovery learning rate on the held-back windows.

The learning rate that heals one model can damage another (full-parameter KD at 1e-4 improves SmolLM2-135M and
made Qwen2.5-Coder-0.5B worse), so the default does not guess: before training, each candidate of
:attr:`RecoveryConfig.lr_candidates` trains the model for :attr:`RecoveryConfig.lr_probe_steps` optimizer steps
from the same weights, on the same first training windows (a warm-up over the first half of those steps, as the run
warms up, then the candidate's rate), and the held-back loss after them is measured. The run then starts again
from the weights it was given with the candidate whose held-back loss was lowest (ties: the lower rate).

The probe spends at most ``LR_PROBE_SHARE`` of the token budget, on top of it; a budget too small to give every
candidate ``LR_PROBE_MIN_STEPS`` steps, or a run with nothing held back, does not probe and uses
:attr:`RecoveryConfig.lr`. A candidate whose loss becomes NaN or infinite scores infinity.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import RecoveryDivergedError
from ..fileio import write_text_atomic
from .config import RecoveryConfig
from .guard import HeldBackGuard, load_weights

__all__ = ["LearningRateProbe", "probe_learning_rate", "probe_config"]

logger = logging.getLogger(__name__)

#: File a state dir keeps the probe's outcome in (a resumed run does not probe again).
PROBE_STATE = "lr_probe.json"


@dataclass
class LearningRateProbe:
    """What the probe measured.

    Attributes:
        losses: held-back loss (mean next-token cross-entropy) after the probe steps, per candidate rate.
        before: held-back loss of the model as given.
        chosen: the rate the run used.
        steps: optimizer steps per candidate; ``tokens``: training tokens of all candidates together.
        seconds: wall time of the probe.
    """

    losses: dict[float, float]
    before: float
    chosen: float
    steps: int
    tokens: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["losses"] = [[lr, v if math.isfinite(v) else None] for lr, v in self.losses.items()]  # JSON has no inf
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LearningRateProbe:
        data = dict(data)
        data["losses"] = {float(lr): math.inf if v is None else float(v) for lr, v in data["losses"]}
        return cls(**data)

    def describe(self) -> str:
        """One line for logs and the model card."""
        tried = ", ".join(f"{lr:g}: {v:.4f}" for lr, v in self.losses.items())
        return (f"chosen by a probe: held-back loss after {self.steps} steps of each rate ({tried}; {self.before:.4f} "
                f"before), {self.tokens:,} probe tokens")


def probe_config(config: RecoveryConfig, learning_rate: float) -> RecoveryConfig:
    """The options one candidate trains with: ``lr_probe_steps`` steps, warm-up over the first half, then constant."""
    return config.replace(learning_rate=learning_rate, tokens=config.lr_probe_steps * config.tokens_per_step,
                          lr_scheduler="constant_with_warmup", warmup=0.5, save_steps=0)


def probe_learning_rate(model: torch.nn.Module, config: RecoveryConfig, guard: HeldBackGuard,
                        train: Callable[[RecoveryConfig], None], *, state_dir: Path | None = None,
                        show_progress: bool = True) -> LearningRateProbe:
    """Run the probe of the module docstring and leave ``model``'s trainable weights as they came.

    Args:
        model: the model recovery trains (its trainable parameters are what the candidates change).
        config: the run's options (``learning_rate="auto"``, ``lr_probe_steps`` > 0).
        guard: the run's held-back guard, after :meth:`~HeldBackGuard.begin`: it measures each candidate, and its
            copy of the input's weights and loss before training are the probe's start.
        train: trains ``model`` in place with the options it is given (a Trainer built like the run's).
        state_dir: where a resumable run keeps its files: the outcome is written there and read back on resume.
    """
    saved = state_dir / PROBE_STATE if state_dir is not None else None
    if saved is not None and saved.is_file():
        return LearningRateProbe.from_dict(json.loads(saved.read_text(encoding="utf-8")))
    t0 = time.perf_counter()
    losses: dict[float, float] = {}
    for lr in tqdm(config.lr_candidates, desc="learning-rate probe", disable=not show_progress, leave=False):
        try:
            train(probe_config(config, lr))
            losses[lr] = guard.measure(model)[0]
        except RecoveryDivergedError:
            losses[lr] = math.inf
        if not math.isfinite(losses[lr]):
            losses[lr] = math.inf
        load_weights(model, guard.input_weights)
        logger.info("learning-rate probe: %g -> held-back loss %.4f", lr, losses[lr])
    chosen = min(losses, key=lambda lr: (losses[lr], lr))
    steps = config.lr_probe_steps
    probe = LearningRateProbe(losses, guard.report.before, chosen, steps, steps * config.tokens_per_step * len(losses),
                              round(time.perf_counter() - t0, 2))
    logger.info("recovery learning rate %g, %s", chosen, probe.describe())
    if saved is not None:
        write_text_atomic(saved, json.dumps(probe.to_dict()) + "\n")
    return probe
