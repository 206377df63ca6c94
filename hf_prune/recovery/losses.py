"""The recovery objectives, per predicted token, computed so that no full-vocabulary fp32 tensor exists at once.

- :func:`token_losses`: the next-token cross-entropy and the KL to the teacher, over chunks of positions. Each
  chunk is upcast to fp32, reduced to two sums and, when gradients are needed, recomputed in the backward pass
  (``torch.utils.checkpoint``): the only vocabulary-sized tensors kept are the model's own logits and their
  gradient, in the model's dtype.
- The teacher is either its full logits (``kd_top_k=0``) or a :class:`SparseTeacher`: its top-k log-probabilities
  at temperature ``T`` and the probability mass outside them. Against a sparse teacher the KL is that of the
  ``k + 1``-bucket distributions (the k tokens, everything else): ``sum_i p_i log(p_i / q_i) + r log(r / q_r)``,
  with ``q_r`` the student's mass outside the teacher's top-k. It equals the full KL when ``k`` is the vocabulary
  and never exceeds it otherwise.
- :func:`local_loss`: every decoder layer against the dense layer's output (no vocabulary at all).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["SparseTeacher", "token_losses", "kd_loss", "local_loss", "LayerTaps", "decoder", "CHUNK_ELEMENTS"]

#: Elements of one fp32 chunk (64 MiB): positions per chunk = this // vocabulary size.
CHUNK_ELEMENTS = 1 << 24


@dataclass
class SparseTeacher:
    """The teacher's next-token distribution at some positions, kept sparse: ``logprobs`` / ``indices``
    ``[..., k]`` (its top-k tokens' log-probabilities at the temperature, fp32 / int) and ``rest`` ``[...]`` (the
    probability mass outside them, exactly 0 when ``k`` is the vocabulary)."""

    logprobs: torch.Tensor
    indices: torch.Tensor
    rest: torch.Tensor

    def __getitem__(self, item: Any) -> SparseTeacher:
        return SparseTeacher(self.logprobs[item], self.indices[item], self.rest[item])

    def to(self, device: Any) -> SparseTeacher:
        return SparseTeacher(self.logprobs.to(device), self.indices.to(device, torch.long), self.rest.to(device))

    @classmethod
    @torch.no_grad()
    def from_logits(cls, logits: torch.Tensor, k: int, temperature: float = 1.0,
                    chunk_elements: int = CHUNK_ELEMENTS) -> SparseTeacher:
        """The top-k of ``softmax(logits / T)`` for logits ``[n, vocab]``, over chunks of rows (fp32 inside one)."""
        k = min(k, logits.shape[-1])
        parts = []
        for rows in _chunks(logits.shape[0], logits.shape[-1], chunk_elements):
            logp = F.log_softmax(logits[rows].float() / temperature, dim=-1)
            top = logp.topk(k, dim=-1)
            rest = logp.scatter(-1, top.indices, float("-inf")).logsumexp(-1).exp()  # 0 when k is the vocabulary
            parts.append((top.values, top.indices.to(torch.int32), rest))
        return cls(*(torch.cat(p) for p in zip(*parts)))


def _chunks(n: int, vocab: int, chunk_elements: int) -> list[slice]:
    step = max(1, chunk_elements // max(vocab, 1))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


def _chunk_sums(logits: torch.Tensor, targets: torch.Tensor | None, teacher: Any, temperature: float,
                want_ce: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed CE, summed KL * T^2) of one chunk of rows; ``teacher``: dense logits, a SparseTeacher or None."""
    s = logits.float()
    zero = s.new_zeros(())
    ce = (s.logsumexp(-1) - s.gather(-1, targets[:, None]).squeeze(-1)).sum() if want_ce else zero
    if teacher is None:
        return ce, zero
    st = s / temperature if temperature != 1 else s
    lse = st.logsumexp(-1, keepdim=True)
    if isinstance(teacher, SparseTeacher):
        logq = st.gather(-1, teacher.indices) - lse
        p = teacher.logprobs.exp()
        kl = (p * (teacher.logprobs - logq)).sum()
        # The student's mass outside the teacher's top-k; a finite fill keeps the gradient finite when nothing is
        # outside (k = vocabulary, rest = 0 exactly).
        outside = st.scatter(-1, teacher.indices, torch.finfo(torch.float32).min).logsumexp(-1) - lse.squeeze(-1)
        kl = kl + (torch.xlogy(teacher.rest, teacher.rest) - teacher.rest * outside).sum()
    else:
        logt = F.log_softmax(teacher.float() / temperature, dim=-1)
        kl = (logt.exp() * (logt - (st - lse))).sum()
    return ce, kl * temperature**2


def token_losses(logits: torch.Tensor, targets: torch.Tensor | None = None, teacher: Any = None,
                 temperature: float = 1.0, chunk_elements: int = CHUNK_ELEMENTS) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean next-token CE, mean ``T^2 KL(teacher || student)``) over the rows of ``logits`` ``[n, vocab]``.

    Args:
        targets: ``[n]`` token ids (``None``: no CE, 0 returned).
        teacher: ``[n, vocab]`` logits, a :class:`SparseTeacher` of ``n`` rows, or ``None`` (no KL, 0 returned).
        chunk_elements: fp32 elements of one chunk of rows.
    """
    n = logits.shape[0]
    ce = kl = logits.new_zeros((), dtype=torch.float32)
    for rows in _chunks(n, logits.shape[-1], chunk_elements):
        part = teacher[rows] if teacher is not None else None
        target = targets[rows] if targets is not None else None
        args = (logits[rows], target, part, temperature, targets is not None)
        if torch.is_grad_enabled() and logits.requires_grad:
            c, k = checkpoint(_chunk_sums, *args, use_reentrant=False)
        else:
            c, k = _chunk_sums(*args)
        ce, kl = ce + c, kl + k
    return ce / n, kl / n


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | SparseTeacher, temperature: float = 1.0,
            chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Mean over tokens of ``T^2 KL(softmax(t / T) || softmax(s / T))``; logits ``[..., vocab]``, or a
    :class:`SparseTeacher` of the same leading shape."""
    vocab = student_logits.shape[-1]
    teacher = teacher_logits
    if isinstance(teacher, SparseTeacher):
        teacher = SparseTeacher(teacher.logprobs.reshape(-1, teacher.logprobs.shape[-1]),
                                teacher.indices.reshape(-1, teacher.indices.shape[-1]).long(), teacher.rest.reshape(-1))
    else:
        teacher = teacher.reshape(-1, vocab)
    return token_losses(student_logits.reshape(-1, vocab), None, teacher, temperature, chunk_elements)[1]


# ---- layer-local reconstruction -----------------------------------------------------------------------------
class LayerTaps:
    """Forward hooks on decoder layers that keep each layer's output; ``detach_inputs`` also cuts the graph at every
    layer's input (so a backward pass stays inside each layer). A context manager: the hooks go on exit."""

    def __init__(self, layers: Sequence[torch.nn.Module], detach_inputs: bool = False) -> None:
        self.outputs: list[torch.Tensor | None] = [None] * len(layers)
        self.handles = []
        for i, layer in enumerate(layers):
            if detach_inputs:
                self.handles.append(layer.register_forward_pre_hook(_detached_input, with_kwargs=True))
            self.handles.append(layer.register_forward_hook(self._keeper(i)))

    def _keeper(self, i: int):
        def keep(module, args, output):
            self.outputs[i] = output[0] if isinstance(output, tuple) else output
        return keep

    def __enter__(self) -> LayerTaps:
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()


def _detached_input(module, args, kwargs):
    if args:
        return (args[0].detach(), *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": kwargs["hidden_states"].detach()}


def decoder(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack (``model.model``) of a causal LM, through a PEFT wrapper if there is one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def local_loss(student: torch.nn.Module, teacher: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean over decoder layers of the relative squared error of the student layer's output (on its own detached
    input) to the dense layer's output (fp32). Relative, so layers with large residual norms do not dominate."""
    teacher_decoder, student_decoder = decoder(teacher), decoder(student)
    with torch.no_grad(), LayerTaps(teacher_decoder.layers) as dense:
        teacher_decoder(input_ids=ids.to(next(teacher.parameters()).device), use_cache=False)
    with LayerTaps(student_decoder.layers, detach_inputs=True) as pruned:
        student_decoder(input_ids=ids, use_cache=False)
    losses = []
    for y, t in zip(pruned.outputs, dense.outputs):
        t = t.to(y.device).float()
        losses.append((y.float() - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12))
    return torch.stack(losses).mean()
