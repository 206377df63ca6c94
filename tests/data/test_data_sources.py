"""Local sources of every supported format (read through ``datasets``), folders, chat rendering, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hf_prune.data import CalibrationMix, DomainSource, load_documents
from hf_prune.data.sources import hub_offline
from hf_prune.errors import CalibrationError

DOCS = [" apple banana cherry", " grape lemon\nmango apple", " cherry, \"quoted\" banana"]


@pytest.fixture(scope="module")
def tokenizer():
    from hf_prune.demo.assets import load_smollm2

    return load_smollm2()[1]


def _write(path: Path, fmt: str, docs: list[str], field: str = "text") -> Path:
    if fmt == "txt":
        # One document per .txt file: write the first doc only; folders hold the others.
        path.write_text(docs[0], encoding="utf-8")
    elif fmt == "jsonl":
        path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)), encoding="utf-8")
    elif fmt == "json":
        path.write_text(json.dumps([{field: d, "id": i} for i, d in enumerate(docs)]), encoding="utf-8")
    elif fmt == "csv":
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["id", field])
            w.writeheader()
            for i, d in enumerate(docs):
                w.writerow({"id": i, field: d})
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": list(range(len(docs))), field: docs}), path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_each_tabular_format_loads(tmp_path: Path, fmt: str) -> None:
    path = _write(tmp_path / f"data.{fmt}", fmt, DOCS)
    assert load_documents(DomainSource("d", str(path))) == DOCS


def test_txt_file_is_one_document(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("line one\nline two\n\nparagraph two\n", encoding="utf-8")
    assert load_documents(DomainSource("prose", str(path))) == ["line one\nline two\n\nparagraph two\n"]


def test_folder_of_mixed_files(tmp_path: Path) -> None:
    folder = tmp_path / "code"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha text", encoding="utf-8")
    (folder / "sub" / "b.txt").write_text("beta text", encoding="utf-8")
    _write(folder / "c.jsonl", "jsonl", DOCS[:2])
    _write(folder / "d.parquet", "parquet", DOCS[2:])
    (folder / "ignored.bin").write_bytes(b"\0\1")
    (folder / ".hidden.txt").write_text("hidden", encoding="utf-8")
    docs = load_documents(DomainSource("code", str(folder)))
    assert sorted(docs) == sorted(["alpha text", "beta text", *DOCS])


def test_text_field_and_joined_fields(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"question": "2+2?", "answer": "4"}) + "\n", encoding="utf-8")
    mix = CalibrationMix({"math": {"source": str(path), "text_field": ["question", "answer"]}})
    assert load_documents(mix["math"]) == ["2+2?\n4"]
    mix = CalibrationMix({"math": {"source": str(path), "text_field": "question"}})
    assert load_documents(mix["math"]) == ["2+2?"]


def test_chat_messages_rendered_with_template(tmp_path: Path, tokenizer) -> None:
    messages = [{"role": "user", "content": "hello there"}, {"role": "assistant", "content": "general kenobi"}]
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps({"messages": messages}) + "\n", encoding="utf-8")
    src = CalibrationMix({"dialogue": {"source": str(path), "chat": True}})["dialogue"]
    [doc] = load_documents(src, tokenizer)
    assert doc == tokenizer.apply_chat_template(messages, tokenize=False)
    assert "<|im_start|>assistant\ngeneral kenobi" in doc
    with pytest.raises(CalibrationError, match="'dialogue'.*tokenizer"):
        load_documents(src)  # no tokenizer to render with
    with pytest.raises(CalibrationError, match="'dialogue'.*chat=True"):
        load_documents(DomainSource("dialogue", str(path), text_field="messages"))


# ---- bad input: each names the domain ---------------------------------------------------------------
def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="'code'.*does not exist"):
        load_documents(DomainSource("code", str(tmp_path / "nope.jsonl")))


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(CalibrationError, match="'math'.*empty"):
        load_documents(DomainSource("math", str(tmp_path / "e.jsonl")))


def test_only_blank_documents(tmp_path: Path) -> None:
    _write(tmp_path / "b.jsonl", "jsonl", ["", "   "])
    with pytest.raises(CalibrationError, match="'web'.*no non-empty documents"):
        load_documents(DomainSource("web", str(tmp_path / "b.jsonl")))


def test_empty_folder_and_unsupported_type(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationError, match="'docs'.*no supported files"):
        load_documents(DomainSource("docs", str(tmp_path / "empty")))
    (tmp_path / "x.xml").write_text("<a/>", encoding="utf-8")
    with pytest.raises(CalibrationError, match="'docs'.*unsupported file type"):
        load_documents(DomainSource("docs", str(tmp_path / "x.xml")))


def test_missing_text_field(tmp_path: Path) -> None:
    path = _write(tmp_path / "c.jsonl", "jsonl", DOCS, field="content")
    with pytest.raises(CalibrationError, match="'code'.*text field 'text' not found.*content"):
        load_documents(DomainSource("code", str(path)))


def test_malformed_file(tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n', encoding="utf-8")
    with pytest.raises(CalibrationError, match="'web'"):
        load_documents(DomainSource("web", str(tmp_path / "bad.jsonl")))


def test_hub_dataset_while_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline()
    import datasets

    def must_not_call(*a, **k):
        raise AssertionError("load_dataset called while offline")

    monkeypatch.setattr(datasets, "load_dataset", must_not_call)
    mix = CalibrationMix({"web": 0.5, "code": 0.5})  # presets name Hub datasets
    with pytest.raises(CalibrationError, match=r"'web'.*HF_HUB_OFFLINE.*local"):
        load_documents(mix["web"])


def test_hub_connection_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    import datasets
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)

    def unreachable(*a, **k):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(CalibrationError, match=r"'math'.*no connection.*math\.jsonl"):
        load_documents(CalibrationMix({"math": 1.0})["math"])


def test_sample_raises_before_tokenising_on_bad_domain(tmp_path: Path, tokenizer) -> None:
    good = _write(tmp_path / "good.jsonl", "jsonl", DOCS * 20)
    mix = CalibrationMix({"good": {"source": str(good)}, "bad": {"source": str(tmp_path / "missing.jsonl")}})
    with pytest.raises(CalibrationError, match="'bad'"):
        mix.sample(tokenizer, 4, 8, cache=False)


def test_folder_mixing_txt_with_other_text_field(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("plain text file", encoding="utf-8")
    _write(tmp_path / "b.jsonl", "jsonl", DOCS[:1], field="content")
    docs = load_documents(DomainSource("code", str(tmp_path), text_field="content"))
    assert sorted(docs) == sorted(["plain text file", DOCS[0]])
