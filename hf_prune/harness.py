"""The lm-eval model that scores multiple-choice requests: lm-eval's ``HFLM``, with each prompt run once for all of
its choices and the language-model head applied only where a log-likelihood needs it.

``HFLM`` runs every (context, continuation) pair as its own sequence and computes full-vocabulary logits at every
position, prompt included. A question sends its context once per choice, so most of that work repeats, and nearly
all of the logits are discarded. :class:`PromptSharingLM` takes the same requests, already tokenised by lm-eval
(so the task definitions, the empty-context prefix token and the metrics stay lm-eval's), and per batch of contexts
of similar length:

1. runs the contexts once, left-padded, keeping their KV cache, with logits at the last position only (they score
   each choice's first token);
2. gives every choice its own copy of its context's cache (an index-select: nothing shared is written to) and runs
   the choices' tokens but the last on top of it, right-padded;
3. scores each continuation as ``HFLM`` does: the sum of its tokens' log-probabilities, and whether every token is
   the argmax (lm-eval's ``is_greedy``).

Log-probabilities are computed in float32 (``HFLM`` uses the model's dtype), from the same token ids: results agree
with ``HFLM``'s to float rounding. Requests it cannot take go to ``HFLM``'s own loop: a pair longer than the model's
window (lm-eval cuts each pair from the left, which would differ per choice), an empty continuation, a model without
a cache or ``logits_to_keep`` argument, or one whose cache does not hold the prompt afterwards.

Importing this module imports lm-eval and torch; :mod:`hf_prune.accuracy` imports it only when evaluating.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from lm_eval.models.huggingface import HFLM
from tqdm import tqdm
from transformers import DynamicCache

__all__ = ["PromptSharingLM"]

#: lm-eval's request: ((context, continuation), context token ids, continuation token ids).
Request = tuple[tuple[str, str], list[int], list[int]]


class PromptSharingLM(HFLM):
    """``HFLM`` whose log-likelihood requests share each context's forward pass between its continuations."""

    def _loglikelihood_tokens(self, requests: list[Request], disable_tqdm: bool = False,
                              override_bs: int | None = None) -> list[tuple[float, bool]]:
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        shared = [i for i, (_, ctx, cont) in enumerate(requests) if self._shareable(ctx, cont)]
        rest = sorted(set(range(len(requests))) - set(shared))
        bar = tqdm(total=len(shared), disable=disable_tqdm or self.rank != 0, desc="Scoring choices (shared prompts)")
        for batch in _batches(requests, shared, self._rows_per_batch(override_bs)):
            answers = self._score_batch(requests, batch)
            if answers is None:  # the cache did not hold the prompt: HFLM's loop takes this batch
                rest += [i for group in batch for i in group]
                continue
            for i, answer in answers:
                results[i] = answer
                self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
            bar.update(len(answers))
        bar.close()
        if rest:
            for i, answer in zip(rest, super()._loglikelihood_tokens([requests[i] for i in rest], disable_tqdm,
                                                                     override_bs)):
                results[i] = answer
        return results  # type: ignore[return-value]

    # ---- what can be shared ----------------------------------------------------------------------------------
    @property
    def _cache_argument(self) -> str | None:
        """The forward argument that takes a cache (``past_key_values`` before transformers 5.24, ``cache`` after),
        or ``None`` when the model cannot be continued from a cache or lacks ``logits_to_keep``."""
        if not hasattr(self, "_cache_arg"):
            params = inspect.signature(self.model.forward).parameters
            names = [n for n in ("cache", "past_key_values") if n in params]
            usable = self.backend == "causal" and names and "logits_to_keep" in params
            self._cache_arg = names[0] if usable and hasattr(DynamicCache, "batch_select_indices") else None
        return self._cache_arg

    def _shareable(self, context: Sequence[int], continuation: Sequence[int]) -> bool:
        return (self._cache_argument is not None and len(context) > 0 and len(continuation) > 0
                and len(context) + len(continuation) <= self.max_length + 1)

    def _rows_per_batch(self, override_bs: int | None) -> int:
        size = override_bs if self.batch_size == "auto" else self.batch_size
        return int(size) if size and size != "auto" else 8

    # ---- the forward passes ------------------------------------------------------------------------------------
    def _score_batch(self, requests: list[Request], batch: list[list[int]]) -> list[tuple[int, tuple[float, bool]]] | None:
        """``[(request index, (log-likelihood, is_greedy))]`` for the requests of ``batch`` (groups of one context)."""
        contexts = [requests[group[0]][1] for group in batch]
        rows = [i for group in batch for i in group]
        row_context = torch.tensor([k for k, group in enumerate(batch) for _ in group], device=self.device)
        continuations = [requests[i][2] for i in rows]
        with torch.no_grad():
            cache, prompt_mask, first = self._prompt_pass(contexts)
            if cache.get_seq_length() != prompt_mask.shape[1]:
                return None
            width = max(len(c) for c in continuations) - 1
            rest = self._choice_pass(cache, prompt_mask, row_context, continuations, width) if width else None
        answers = []
        for r, (i, cont) in enumerate(zip(rows, continuations)):
            logits = first[row_context[r]].unsqueeze(0)
            if len(cont) > 1:
                logits = torch.cat([logits, rest[r, : len(cont) - 1]])
            answers.append((i, _answer(logits, cont)))
        return answers

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: DynamicCache,
                 logits_to_keep: int) -> torch.Tensor:
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                          logits_to_keep=logits_to_keep, **{self._cache_argument: cache}).logits

    def _prompt_pass(self, contexts: list[list[int]]) -> tuple[DynamicCache, torch.Tensor, torch.Tensor]:
        """The contexts, left-padded, through the model: their cache, mask and last-position logits ``[G, V]``."""
        ids, mask = _padded(contexts, self._pad_id, self.device, left=True)
        positions = (mask.cumsum(-1) - 1).clamp_min(0)
        cache = DynamicCache()
        logits = self._forward(ids, mask, positions, cache, logits_to_keep=1)
        return cache, mask, logits[:, -1].float()

    def _choice_pass(self, cache: DynamicCache, prompt_mask: torch.Tensor, row_context: torch.Tensor,
                     continuations: list[list[int]], width: int) -> torch.Tensor:
        """Each continuation but its last token, on a copy of its context's cache: logits ``[R, width, V]``."""
        cache.batch_select_indices(row_context)  # new tensors: one copy of the context's keys/values per choice
        ids, mask = _padded([c[:-1] for c in continuations], self._pad_id, self.device, left=False, width=width)
        lengths = prompt_mask.sum(-1)[row_context]
        positions = lengths[:, None] + torch.arange(width, device=self.device)
        full_mask = torch.cat([prompt_mask[row_context], mask], dim=1)
        return self._forward(ids, full_mask, positions, cache, logits_to_keep=0).float()

    @property
    def _pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.eot_token_id)


def _batches(requests: list[Request], indices: list[int], rows: int) -> Iterator[list[list[int]]]:
    """Groups of requests with one context, longest first, packed into batches of at most ``rows`` requests (a
    group larger than that is a batch of its own): similar lengths share a batch, so padding stays small."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in indices:
        groups.setdefault(tuple(requests[i][1]), []).append(i)
    order = sorted(groups.values(), key=lambda g: -(len(requests[g[0]][1]) + max(len(requests[i][2]) for i in g)))
    batch: list[list[int]] = []
    for group in order:
        if batch and sum(map(len, batch)) + len(group) > rows:
            yield batch
            batch = []
        batch.append(group)
    if batch:
        yield batch


def _padded(seqs: list[list[int]], pad: int, device: Any, *, left: bool,
            width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    width = width if width is not None else max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for k, seq in enumerate(seqs):
        if seq:
            span = slice(width - len(seq), width) if left else slice(0, len(seq))
            ids[k, span] = torch.tensor(seq, dtype=torch.long)
            mask[k, span] = 1
    return ids.to(device), mask.to(device)


def _answer(logits: torch.Tensor, continuation: list[int]) -> tuple[float, bool]:
    """lm-eval's answer for one continuation from the logits that predict its tokens (``[len, V]``)."""
    target = torch.tensor(continuation, device=logits.device)
    # log_softmax at the target only: the logit minus the log-normaliser (no second vocabulary-sized tensor).
    logp = logits.gather(-1, target[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    return float(logp.sum()), bool((logits.argmax(-1) == target).all())
