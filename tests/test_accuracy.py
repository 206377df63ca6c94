"""Zero-shot accuracy through lm-eval: a tiny random model on generated local tasks, against a direct computation."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_qwen2
from hf_prune.data.multiple_choice import IGNORE_INDEX, score_choices
from hf_prune.errors import CalibrationError, EvaluationError

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'hf-prune[eval]')")

from hf_prune.accuracy import evaluate_tasks, prepare_tasks, resolve_task_specs  # noqa: E402

WORDS = ("river stone cloud bright quiet market window garden silver engine paper winter music yellow "
         "forest number ocean basket candle morning planet letter mirror thunder").split()


def _text(seed: int, n: int) -> str:
    g = torch.Generator().manual_seed(seed)
    return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=g))


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer trained here on generated text (no download, no asset)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([_text(i, 40) for i in range(50)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


@pytest.fixture(scope="module")
def model(tokenizer):
    return tiny_qwen2(seed=3, vocab_size=len(tokenizer), pad_token_id=0, eos_token_id=1, bos_token_id=1)


def _records(n: int, seed: int = 0) -> list[dict]:
    """Questions whose choices differ in length (so acc_norm can differ from acc); answers as index, text, letter."""
    out = []
    for i in range(n):
        choices = [_text(seed * 1000 + i * 10 + k, 1 + (i + k) % 4) for k in range(4)]
        answer = [i % 4, choices[(i + 1) % 4], "ABCD"[(i + 2) % 4]][i % 3]
        out.append({"prompt": _text(seed * 1000 + i, 6 + i % 5), "choices": choices, "answer": answer})
    return out


def _answer_index(rec: dict) -> int:
    a = rec["answer"]
    if isinstance(a, int):
        return a
    return rec["choices"].index(a) if a in rec["choices"] else "ABCD".index(a)


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _direct(model, tokenizer, records: list[dict]) -> tuple[list[float], list[float]]:
    """Per question, 1.0 if the highest-scoring choice is the answer (acc) and the same after dividing each score by
    the choice's length in characters (acc_norm), as lm-eval defines them: the continuation is " " + choice, its
    tokens are those of prompt + continuation after the prompt's tokens, and the score is their summed
    log-probability (computed here with score_choices on one unpadded sequence per choice)."""
    acc, acc_norm = [], []
    for rec in records:
        context = tokenizer(rec["prompt"])["input_ids"]
        scores = []
        for choice in rec["choices"]:
            whole = tokenizer(rec["prompt"] + " " + choice)["input_ids"]
            assert whole[: len(context)] == context
            ids = torch.tensor([whole])
            labels = torch.tensor([[IGNORE_INDEX] * len(context) + whole[len(context):]])
            with torch.no_grad():
                scores.append(float(score_choices(model(input_ids=ids).logits, labels)[0]))
        gold = _answer_index(rec)
        best = max(range(len(scores)), key=lambda k: (scores[k], -k))  # argmax: the first of equal scores
        norm = [s / len(c) for s, c in zip(scores, rec["choices"])]
        best_norm = max(range(len(norm)), key=lambda k: (norm[k], -k))
        acc.append(float(best == gold))
        acc_norm.append(float(best_norm == gold))
    return acc, acc_norm


def test_local_task_matches_direct_computation(model, tokenizer, tmp_path) -> None:
    records = _records(24)
    path = _write(tmp_path / "tiny_mc.jsonl", records)
    report = evaluate_tasks(model, tokenizer, str(path), batch_size=5)
    acc, acc_norm = _direct(model, tokenizer, records)
    got = report.per_task["tiny_mc"]
    assert got["n"] == len(records)
    assert got["acc"] == pytest.approx(statistics.mean(acc), abs=1e-9)
    assert got["acc_norm"] == pytest.approx(statistics.mean(acc_norm), abs=1e-9)
    assert got["acc_stderr"] == pytest.approx(statistics.stdev(acc) / math.sqrt(len(acc)), rel=1e-6)
    assert 0 < got["acc"] < 1 and got["acc"] != got["acc_norm"]  # the check would be weak otherwise
    assert report.mean == got["acc"]
    assert "| tiny_mc | 24 |" in report.to_markdown()


def test_context_field_folder_and_limit(model, tokenizer, tmp_path) -> None:
    folder = tmp_path / "suite"
    folder.mkdir()
    a, b = _records(10, seed=1), _records(7, seed=2)
    _write(folder / "alpha.jsonl", [{"context": r["prompt"], **{k: r[k] for k in ("choices", "answer")}} for r in a])
    _write(folder / "beta.jsonl", b)
    report = evaluate_tasks(model, tokenizer, [folder], limit=5, batch_size=3)
    assert list(report.per_task) == ["alpha", "beta"]
    for name, records in (("alpha", a), ("beta", b)):
        acc, _ = _direct(model, tokenizer, records[:5])
        assert report.per_task[name]["n"] == 5
        assert report.per_task[name]["acc"] == pytest.approx(statistics.mean(acc), abs=1e-9)
    out = tmp_path / "out.json"
    report.to_json(out)
    assert json.loads(out.read_text())["beta"]["n"] == 5


def test_bad_specs_fail_before_model(tmp_path) -> None:
    with pytest.raises(EvaluationError, match="does not exist"):
        resolve_task_specs(str(tmp_path / "missing.jsonl"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no multiple-choice"):
        resolve_task_specs(str(tmp_path / "empty"))
    _write(tmp_path / "x.jsonl", _records(2))
    with pytest.raises(EvaluationError, match="two tasks"):
        resolve_task_specs([tmp_path / "x.jsonl", str(tmp_path / "x.jsonl")])
    _write(tmp_path / "bad.jsonl", [{"prompt": "p", "choices": ["a", "b"], "answer": 5}])
    with pytest.raises(CalibrationError, match="out of range"):
        prepare_tasks(str(tmp_path / "bad.jsonl"))
    with pytest.raises(EvaluationError, match="not an lm-eval task name"):
        prepare_tasks("surely_no_such_task_xyz")


def test_missing_lm_eval_names_the_extra(monkeypatch, tmp_path) -> None:
    _write(tmp_path / "x.jsonl", _records(2))
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval then raises ImportError
    with pytest.raises(EvaluationError, match=r"pip install 'hf-prune\[eval\]'"):
        prepare_tasks(str(tmp_path / "x.jsonl"))
