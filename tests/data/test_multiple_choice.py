"""Multiple-choice records -> one sequence per choice, labels only on the choice tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hf_prune.data import MultipleChoiceRecord, build_multiple_choice_batch, load_multiple_choice, score_choices
from hf_prune.data.multiple_choice import IGNORE_INDEX, choice_margins
from hf_prune.errors import CalibrationError

RECORDS = [
    {"prompt": "The capital of France is", "choices": ["Paris", "Berlin", "a large green banana"], "answer": 0},
    {"prompt": "2 + 2 =", "choices": ["3", "4"], "answer": "4"},
]


@pytest.fixture(scope="module")
def smollm2():
    from hf_prune.demo.assets import load_smollm2

    return load_smollm2()


def test_load_from_list_and_jsonl(tmp_path: Path) -> None:
    recs = load_multiple_choice(RECORDS)
    assert recs[1] == MultipleChoiceRecord("2 + 2 =", ("3", "4"), 1)  # answer given as the choice text
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    assert load_multiple_choice(path) == recs
    letters = load_multiple_choice([{"q": "Pick", "opts": ["x", "y", "z"], "label": "C"}], prompt_field="q", choices_field="opts", answer_field="label")
    assert letters[0].answer == 2


def test_answer_token_masks(smollm2) -> None:
    _, tok = smollm2
    batch = build_multiple_choice_batch(load_multiple_choice(RECORDS), tok)
    assert len(batch) == 5 and batch.num_questions == 2
    assert batch.question_index.tolist() == [0, 0, 0, 1, 1]
    assert batch.choice_index.tolist() == [0, 1, 2, 0, 1]
    assert batch.is_correct.tolist() == [True, False, False, False, True]
    for i, (q, c) in enumerate(zip(batch.question_index.tolist(), batch.choice_index.tolist())):
        rec = RECORDS[q]
        prompt_ids = tok(rec["prompt"], add_special_tokens=False)["input_ids"]
        choice_ids = tok(" " + rec["choices"][c], add_special_tokens=False)["input_ids"]
        n = len(prompt_ids) + len(choice_ids)
        assert batch.input_ids[i, :n].tolist() == prompt_ids + choice_ids
        assert batch.attention_mask[i].tolist() == [1] * n + [0] * (batch.input_ids.shape[1] - n)
        expected = [IGNORE_INDEX] * len(prompt_ids) + choice_ids + [IGNORE_INDEX] * (batch.input_ids.shape[1] - n)
        assert batch.labels[i].tolist() == expected
        # The decoded labelled tokens are exactly the choice text.
        labelled = batch.input_ids[i][batch.labels[i] != IGNORE_INDEX]
        assert tok.decode(labelled).strip() == rec["choices"][c]


def test_no_separator_when_prompt_ends_with_space_and_truncation(smollm2) -> None:
    _, tok = smollm2
    batch = build_multiple_choice_batch([{"prompt": "Answer: ", "choices": ["yes", "no"], "answer": 1}], tok)
    labelled = batch.input_ids[0][batch.labels[0] != IGNORE_INDEX].tolist()
    assert labelled == tok("yes", add_special_tokens=False)["input_ids"]
    long = {"prompt": "word " * 50 + "so the answer is", "choices": ["Paris", "Rome"], "answer": 0}
    cut = build_multiple_choice_batch([long], tok, max_length=8)
    assert cut.input_ids.shape[1] == 8
    assert (cut.labels[0] != IGNORE_INDEX).sum() == len(tok(" Paris", add_special_tokens=False)["input_ids"])


def test_scores_and_margin_match_model_loss(smollm2) -> None:
    model, tok = smollm2
    batch = build_multiple_choice_batch(load_multiple_choice(RECORDS), tok)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        scores = score_choices(logits, batch.labels)
        for i in range(len(batch)):
            n = int(batch.attention_mask[i].sum())
            out = model(input_ids=batch.input_ids[i : i + 1, :n], labels=batch.labels[i : i + 1, :n])
            n_choice = int((batch.labels[i] != IGNORE_INDEX).sum())
            assert scores[i].item() == pytest.approx(-out.loss.item() * n_choice, rel=1e-4)
    margins = choice_margins(scores, batch)
    assert margins.shape == (2,)
    assert margins[0].item() == pytest.approx((scores[0] - scores[1:3].max()).item())
    assert margins[0] > 0  # SmolLM2 knows Paris


def test_bad_records_name_domain(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="'quiz'.*answer 5 is out of range"):
        load_multiple_choice([{"prompt": "p", "choices": ["a", "b"], "answer": 5}], domain="quiz")
    with pytest.raises(CalibrationError, match="'quiz'.*no field 'choices'"):
        load_multiple_choice([{"prompt": "p", "answer": 0}], domain="quiz")
    with pytest.raises(CalibrationError, match="'quiz'.*at least two"):
        load_multiple_choice([{"prompt": "p", "choices": ["a"], "answer": 0}], domain="quiz")
    with pytest.raises(CalibrationError, match="'mc'.*does not exist"):
        load_multiple_choice(tmp_path / "mc.jsonl")
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(CalibrationError, match="'empty'.*no multiple-choice records"):
        load_multiple_choice(tmp_path / "empty.jsonl")
