"""Multiple-choice records as batches for a margin objective.

A record ``{"prompt": ..., "choices": [...], "answer": k}`` becomes one sequence per choice, prompt tokens
then choice tokens, with ``labels`` equal to the choice tokens and ``-100`` everywhere else (prompt and
right padding), so the model's loss/log-likelihood covers only the answer text. ``question_index`` and
``is_correct`` tie the sequences back to their question for a margin (correct minus best wrong choice).

The prompt and the choice are tokenised separately, so the label mask falls exactly on the choice's own
tokens whatever the tokenizer merges across the boundary.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CalibrationError

__all__ = [
    "MultipleChoiceRecord",
    "MultipleChoiceBatch",
    "load_multiple_choice",
    "build_multiple_choice_batch",
    "score_choices",
    "choice_margins",
]

IGNORE_INDEX = -100


@dataclass(frozen=True)
class MultipleChoiceRecord:
    """One question: a prompt, its candidate answers and the index of the correct one."""

    prompt: str
    choices: tuple[str, ...]
    answer: int


@dataclass
class MultipleChoiceBatch:
    """Right-padded sequences, one per (question, choice).

    Attributes:
        input_ids: ``[S, L]`` prompt + choice tokens, right-padded.
        attention_mask: ``[S, L]`` 1 on real tokens, 0 on padding.
        labels: ``[S, L]`` the choice tokens, ``-100`` on prompt and padding.
        question_index: ``[S]`` which record each sequence comes from.
        choice_index: ``[S]`` which choice of that record it holds.
        is_correct: ``[S]`` bool, whether it is the record's answer.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    question_index: torch.Tensor
    choice_index: torch.Tensor
    is_correct: torch.Tensor

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def num_questions(self) -> int:
        return int(self.question_index.max().item()) + 1 if len(self) else 0

    def to(self, device: torch.device | str) -> MultipleChoiceBatch:
        return MultipleChoiceBatch(**{k: getattr(self, k).to(device) for k in self.__dataclass_fields__})


def _record(i: int, row: Mapping[str, Any], domain: str, prompt_field: str, choices_field: str, answer_field: str) -> MultipleChoiceRecord:
    where = f"domain {domain!r}: record {i}"
    for f in (prompt_field, choices_field, answer_field):
        if f not in row:
            raise CalibrationError(f"{where} has no field {f!r} (fields: {sorted(row)})")
    prompt, choices, answer = row[prompt_field], row[choices_field], row[answer_field]
    if not isinstance(prompt, str) or not prompt.strip():
        raise CalibrationError(f"{where}: the prompt must be non-empty text (its tokens give the first choice token its context)")
    if not isinstance(choices, (list, tuple)) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise CalibrationError(f"{where}: choices must be a list of at least two non-empty strings")
    if isinstance(answer, str):
        # The choice text wins over an index reading: with choices ["3", "4"], answer "4" means "4".
        if answer in choices:
            answer = list(choices).index(answer)
        elif answer.strip().lstrip("-").isdigit():
            answer = int(answer)
        elif len(answer) == 1 and answer.upper().isalpha() and ord(answer.upper()) - 65 < len(choices):
            answer = ord(answer.upper()) - 65  # "A", "B"... letters
        else:
            raise CalibrationError(f"{where}: answer {answer!r} is neither an index, a letter nor one of the choices")
    try:
        k = int(answer)
    except (TypeError, ValueError):
        raise CalibrationError(f"{where}: answer {answer!r} is not an index") from None
    if not 0 <= k < len(choices):
        raise CalibrationError(f"{where}: answer {k} is out of range for {len(choices)} choices")
    return MultipleChoiceRecord(prompt=prompt, choices=tuple(choices), answer=k)


def load_multiple_choice(
    source: str | os.PathLike[str] | Iterable[Mapping[str, Any]],
    *,
    domain: str | None = None,
    prompt_field: str = "prompt",
    choices_field: str = "choices",
    answer_field: str = "answer",
    max_records: int | None = None,
) -> list[MultipleChoiceRecord]:
    """Read multiple-choice records from a ``.jsonl``/``.json`` file or a list of dicts.

    ``answer`` may be an index, a letter (``"B"``) or the text of the correct choice.

    Raises:
        CalibrationError: missing/empty file, missing fields, bad choices or answer (names the domain, by
            default the file's stem).
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        domain = domain or path.stem
        if not path.is_file():
            raise CalibrationError(f"domain {domain!r}: multiple-choice file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            if path.suffix.lower() == ".json":
                rows = json.loads(text)
                rows = rows if isinstance(rows, list) else rows.get("data", rows.get("records"))
            else:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        except (json.JSONDecodeError, AttributeError) as exc:
            raise CalibrationError(f"domain {domain!r}: {str(path)!r} is not valid JSON/JSON lines: {exc}") from exc
    else:
        domain = domain or "multiple_choice"
        rows = list(source)
    if not rows:
        raise CalibrationError(f"domain {domain!r}: no multiple-choice records")
    records = [
        _record(i, row, domain, prompt_field, choices_field, answer_field)
        for i, row in enumerate(rows[:max_records] if max_records else rows)
    ]
    return records


def build_multiple_choice_batch(
    records: Sequence[MultipleChoiceRecord | Mapping[str, Any]],
    tokenizer: Any,
    *,
    choice_prefix: str = " ",
    max_length: int | None = None,
) -> MultipleChoiceBatch:
    """Tokenise records into one right-padded batch, loss only on the choice tokens.

    Args:
        choice_prefix: put between prompt and choice unless the prompt ends (or the choice starts) with
            whitespace, as in ``"Q: ... Answer:" + " Paris"``.
        max_length: cut the prompt from the left so that prompt + choice fits (the choice is never cut).
    """
    recs = [r if isinstance(r, MultipleChoiceRecord) else _record(i, r, "multiple_choice", "prompt", "choices", "answer") for i, r in enumerate(records)]
    if not recs:
        raise CalibrationError("domain 'multiple_choice': no records to batch")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise CalibrationError("the tokenizer has neither a pad nor an EOS token to pad with")
    seqs: list[tuple[list[int], list[int]]] = []
    qidx: list[int] = []
    cidx: list[int] = []
    correct: list[bool] = []
    for qi, rec in enumerate(recs):
        prompt_ids = list(tokenizer(rec.prompt, add_special_tokens=False)["input_ids"])
        for ci, choice in enumerate(rec.choices):
            joined = rec.prompt[-1:].isspace() or choice[:1].isspace()
            text = choice if joined else choice_prefix + choice
            choice_ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
            p = prompt_ids
            if max_length is not None and len(p) + len(choice_ids) > max_length:
                keep = max_length - len(choice_ids)
                if keep < 1:
                    raise CalibrationError(
                        f"domain 'multiple_choice': record {qi} choice {ci} has {len(choice_ids)} tokens, "
                        f"no room left for the prompt in max_length={max_length}"
                    )
                p = p[-keep:]
            seqs.append((p + choice_ids, [IGNORE_INDEX] * len(p) + choice_ids))
            qidx.append(qi)
            cidx.append(ci)
            correct.append(ci == rec.answer)
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), int(pad), dtype=torch.long)
    labels = torch.full((len(seqs), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(seqs):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return MultipleChoiceBatch(
        input_ids=input_ids,
        attention_mask=mask,
        labels=labels,
        question_index=torch.tensor(qidx, dtype=torch.long),
        choice_index=torch.tensor(cidx, dtype=torch.long),
        is_correct=torch.tensor(correct, dtype=torch.bool),
    )


def score_choices(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Sum of the log-probabilities of the labelled (choice) tokens of each sequence, ``[S]`` float32.

    ``logits`` are the model's ``[S, L, V]`` outputs for ``batch.input_ids``; the usual causal shift
    applies (position ``t`` predicts token ``t + 1``).
    """
    logits = logits[:, :-1].float()
    target = labels[:, 1:]
    valid = target != IGNORE_INDEX
    logp = torch.log_softmax(logits, dim=-1).gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    return (logp * valid).sum(dim=-1)


def choice_margins(scores: torch.Tensor, batch: MultipleChoiceBatch) -> torch.Tensor:
    """Per question, the correct choice's score minus the best wrong choice's score, ``[Q]``."""
    q = batch.num_questions
    neg_inf = torch.finfo(scores.dtype).min
    wrong = torch.full((q,), neg_inf, dtype=scores.dtype, device=scores.device)
    wrong = wrong.scatter_reduce(0, batch.question_index[~batch.is_correct], scores[~batch.is_correct], "amax")
    right = torch.zeros((q,), dtype=scores.dtype, device=scores.device)
    right = right.scatter(0, batch.question_index[batch.is_correct], scores[batch.is_correct])
    return right - wrong
