"""The teacher's next-token distributions, computed once per training window and reused (``kd`` with
``kd_top_k`` > 0).

One forward pass of the dense model per window, before training, keeps the top-k log-probabilities of every
position and the mass outside them (:class:`~hf_prune.recovery.losses.SparseTeacher`): ``k x 8`` bytes per token
instead of a vocabulary-sized row. The training steps then run the student alone, a repeated window (another epoch)
costs no second teacher pass, and a job that recovers several levels on the same windows fills the cache once for
all of them. A window the cache lacks (a process that trains on rows nobody predicted) is filled when first met,
if the teacher is still at hand.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from tqdm.auto import tqdm

from ..errors import RecoveryError
from .config import RecoveryConfig
from .losses import SparseTeacher

__all__ = ["TeacherCache"]


class TeacherCache:
    """:class:`SparseTeacher` rows of every distinct training window (``[windows, seq_len - 1, k]``), filled on
    demand.

    Args:
        input_ids: the training windows ``[N, seq_len]`` (the cache belongs to these windows only).
        k, temperature: how many of the teacher's tokens are kept, and the softmax temperature they are taken at.
    """

    def __init__(self, input_ids: torch.Tensor, k: int, temperature: float) -> None:
        self.input_ids, self.k, self.temperature = input_ids, k, temperature
        # A window drawn twice (another pass over a small domain) is one entry: the teacher runs on it once.
        self.windows, self.entry = torch.unique(input_ids, dim=0, return_inverse=True)
        n, seq_len = self.windows.shape
        self.logprobs: torch.Tensor | None = None  # allocated at the first fill (k is capped at the vocabulary)
        self.indices: torch.Tensor | None = None
        self.rest = torch.zeros(n, seq_len - 1)
        self.filled = torch.zeros(n, dtype=torch.bool)
        self.teacher_passes = 0  # windows the teacher ran on

    def serves(self, input_ids: torch.Tensor, config: RecoveryConfig) -> bool:
        """Whether this cache holds the distributions ``config`` asks for on these windows."""
        return (self.k == config.kd_top_k and self.temperature == config.temperature
                and self.input_ids.shape == input_ids.shape and torch.equal(self.input_ids, input_ids))

    @property
    def complete(self) -> bool:
        return bool(self.filled.all())

    def _entries(self, rows: torch.Tensor) -> torch.Tensor:
        return self.entry[rows.cpu()]

    @property
    def nbytes(self) -> int:
        held = [t for t in (self.logprobs, self.indices, self.rest) if t is not None]
        return sum(t.numel() * t.element_size() for t in held)

    def fill(self, teacher: torch.nn.Module, rows: torch.Tensor, batch_size: int, bf16: bool = False,
             show_progress: bool = False) -> None:
        """Run the teacher on the windows ``rows`` (of ``input_ids``) not yet filled, ``batch_size`` at a time."""
        entries = self._entries(rows).unique()
        todo = entries[~self.filled[entries]]
        device = next(teacher.parameters()).device
        batches = range(0, len(todo), batch_size)
        for i in tqdm(batches, desc="teacher logits", unit="batch", disable=not show_progress or not len(batches),
                      leave=False, dynamic_ncols=True):
            batch = todo[i:i + batch_size]
            autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
            with torch.no_grad(), autocast:
                logits = teacher(input_ids=self.windows[batch].to(device), use_cache=False).logits[:, :-1]
            sparse = SparseTeacher.from_logits(logits.reshape(-1, logits.shape[-1]), self.k, self.temperature)
            self._store(batch, sparse, logits.shape[:2])
            self.teacher_passes += len(batch)

    def _store(self, rows: torch.Tensor, sparse: SparseTeacher, shape: torch.Size) -> None:
        if self.logprobs is None:
            n, positions, k = self.windows.shape[0], self.windows.shape[1] - 1, sparse.logprobs.shape[-1]
            self.logprobs = torch.zeros(n, positions, k)
            self.indices = torch.zeros(n, positions, k, dtype=torch.int32)
        self.logprobs[rows] = sparse.logprobs.reshape(*shape, -1).cpu()
        self.indices[rows] = sparse.indices.reshape(*shape, -1).cpu()
        self.rest[rows] = sparse.rest.reshape(shape).cpu()
        self.filled[rows] = True

    def get(self, rows: torch.Tensor, device: Any, teacher: torch.nn.Module | None = None,
            bf16: bool = False) -> SparseTeacher:
        """The :class:`SparseTeacher` of windows ``rows`` (``[B, seq_len - 1, k]`` on ``device``); missing rows are
        filled with ``teacher`` first.

        Raises:
            RecoveryError: a row is missing and no teacher is given.
        """
        entries = self._entries(rows)
        if not bool(self.filled[entries].all()):
            if teacher is None:
                raise RecoveryError("the teacher's distributions of some training windows were not computed and the "
                                    "teacher is gone; pass the teacher to recover().")
            self.fill(teacher, rows, len(rows), bf16=bf16)
        return SparseTeacher(self.logprobs[entries], self.indices[entries], self.rest[entries]).to(device)
