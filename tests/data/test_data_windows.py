"""Sampling packed calibration windows from a CalibrationMix: counts, determinism, packing, labels, cache."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

from hf_prune.data import CalibrationMix, CalibrationWindows, allocate_counts
from hf_prune.data.windows import domain_token_stream, pack_windows, tokenize_documents, tokenizer_identity
from hf_prune.errors import CalibrationError

# Each domain has its own words, each one token with a leading space in SmolLM2's tokenizer, so a decoded
# window tells which domain it came from.
VOCAB = {
    "fruit": ["apple", "banana", "cherry", "grape", "lemon", "mango"],
    "animal": ["tiger", "horse", "zebra", "camel", "panda"],
    "colour": ["red", "blue", "green"],
    "number": ["seven", "eight", "nine"],
}


@pytest.fixture(scope="module")
def tokenizer():
    from hf_prune.demo.assets import load_smollm2

    return load_smollm2()[1]


def _docs(domain: str, n_docs: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(f"{domain}:{seed}")
    return [" " + " ".join(rng.choice(VOCAB[domain]) for _ in range(words)) for _ in range(n_docs)]


def _write_jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


@pytest.fixture()
def corpus(tmp_path: Path) -> dict[str, Path]:
    return {d: _write_jsonl(tmp_path / f"{d}.jsonl", _docs(d, 40, 50)) for d in VOCAB}


def _mix(corpus: dict[str, Path], weights: dict[str, float]) -> CalibrationMix:
    return CalibrationMix({d: {"source": str(corpus[d]), "weight": w} for d, w in weights.items()})


WEIGHTS = {"fruit": 0.3, "animal": 0.3, "colour": 0.2, "number": 0.2}


def test_allocate_counts_exact_largest_remainder() -> None:
    assert allocate_counts(WEIGHTS, 10) == {"fruit": 3, "animal": 3, "colour": 2, "number": 2}
    # 7 * (.3, .3, .2, .2) = 2.1, 2.1, 1.4, 1.4 -> floors 2,2,1,1 (6); the one left goes to the largest remainder.
    assert allocate_counts(WEIGHTS, 7) == {"fruit": 2, "animal": 2, "colour": 2, "number": 1}
    for total in range(0, 50):
        counts = allocate_counts({"a": 1.0, "b": 2.0, "c": 3.3}, total)
        assert sum(counts.values()) == total
        assert all(abs(counts[k] - total * w / 6.3) < 1 for k, w in {"a": 1.0, "b": 2.0, "c": 3.3}.items())


def test_counts_match_weights_exactly(tokenizer, corpus, tmp_path) -> None:
    mix = _mix(corpus, WEIGHTS)
    w = mix.sample(tokenizer, 20, 32, seed=0, cache=tmp_path / "cache")
    assert isinstance(w, CalibrationWindows)
    assert w.input_ids.shape == (20, 32) and w.input_ids.dtype == torch.long
    assert w.domain_counts == {"fruit": 6, "animal": 6, "colour": 4, "number": 4}
    assert len(w.domains) == 20
    by = w.by_domain()
    assert {d: t.shape[0] for d, t in by.items()} == w.domain_counts
    batches = list(w.iter_batches(8))
    assert [b[0].shape[0] for b in batches] == [8, 8, 4]
    assert sum((b[1] for b in batches), []) == w.domains
    summary = w.to_dict()
    assert summary["num_samples"] == 20 and summary["seq_len"] == 32 and summary["mix"] == mix.to_dict()


def test_zero_weight_domain_gets_no_windows(tokenizer, corpus, tmp_path) -> None:
    mix = _mix(corpus, {"fruit": 1.0, "animal": 0.0})
    w = mix.sample(tokenizer, 5, 16, cache=tmp_path / "cache")
    assert w.domain_counts == {"fruit": 5}


def test_seed_determinism(tokenizer, corpus, tmp_path) -> None:
    mix = _mix(corpus, WEIGHTS)
    a = mix.sample(tokenizer, 16, 32, seed=0, cache=tmp_path / "cache")
    b = mix.sample(tokenizer, 16, 32, seed=0, cache=False)  # uncached path gives the same windows
    c = mix.sample(tokenizer, 16, 32, seed=1, cache=tmp_path / "cache")
    assert torch.equal(a.input_ids, b.input_ids) and a.domains == b.domains
    assert not torch.equal(a.input_ids, c.input_ids)
    assert a.domain_counts == c.domain_counts  # another draw, same shares
    # Other seeds draw other windows of each domain, not just another order.
    sa = {tuple(r.tolist()) for r in a.input_ids}
    sc = {tuple(r.tolist()) for r in c.input_ids}
    assert sa != sc


def test_windows_are_contiguous_slices_of_the_packed_stream(tokenizer, corpus, tmp_path) -> None:
    """No padding: every window is a full run of real tokens, documents separated by EOS."""
    mix = _mix(corpus, WEIGHTS)
    w = mix.sample(tokenizer, 24, 40, seed=3, cache=tmp_path / "cache")
    eos = tokenizer.eos_token_id
    for d in VOCAB:
        docs = [json.loads(line)["text"] for line in corpus[d].read_text().splitlines()]
        expected: list[int] = []
        for doc in docs:
            expected += tokenizer(doc, add_special_tokens=False)["input_ids"] + [eos]
        windows = pack_windows(torch.tensor(expected), 40)
        valid = {tuple(r.tolist()) for r in windows}
        for row in w.by_domain()[d]:
            assert tuple(row.tolist()) in valid
        # EOS appears only at document boundaries (~every 51 tokens), never as filler.
        assert (w.by_domain()[d] == eos).sum(dim=1).max() <= 1
    assert w.attention_mask().all()


def test_domain_labels_line_up_with_text(tokenizer, corpus, tmp_path) -> None:
    mix = _mix(corpus, WEIGHTS)
    w = mix.sample(tokenizer, 20, 32, seed=5, cache=tmp_path / "cache")
    for row, domain in zip(w.input_ids, w.domains):
        words = set(tokenizer.decode(row, skip_special_tokens=True).split())
        assert words and words <= set(VOCAB[domain]), (domain, words)


def test_domain_too_small_names_domain(tokenizer, tmp_path) -> None:
    big = _write_jsonl(tmp_path / "fruit.jsonl", _docs("fruit", 40, 50))
    small = _write_jsonl(tmp_path / "number.jsonl", _docs("number", 1, 20))
    mix = CalibrationMix({"fruit": {"source": str(big), "weight": 0.5}, "number": {"source": str(small), "weight": 0.5}})
    with pytest.raises(CalibrationError, match="'number'.*too small"):
        mix.sample(tokenizer, 8, 32, cache=tmp_path / "cache")


def test_cache_reused_and_invalidated_by_file_change(tokenizer, tmp_path, monkeypatch) -> None:
    path = _write_jsonl(tmp_path / "fruit.jsonl", _docs("fruit", 10, 30))
    mix = CalibrationMix({"fruit": {"source": str(path)}})
    cache = tmp_path / "cache"
    first = domain_token_stream(mix["fruit"], tokenizer, cache=cache)
    assert len(list(cache.glob("*.safetensors"))) == 1

    import hf_prune.data.windows as windows_mod

    def boom(*a, **k):
        raise AssertionError("re-tokenised despite a cache hit")

    monkeypatch.setattr(windows_mod, "tokenize_documents", boom)
    assert torch.equal(domain_token_stream(mix["fruit"], tokenizer, cache=cache), first)
    monkeypatch.undo()

    _write_jsonl(path, _docs("fruit", 12, 30, seed=1))  # new content: new size/mtime -> new key
    os.utime(path, ns=(1, 1))
    second = domain_token_stream(mix["fruit"], tokenizer, cache=cache)
    assert not torch.equal(first, second)
    assert len(list(cache.glob("*.safetensors"))) == 2


def test_default_cache_dir_under_assets_cache(tokenizer, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path / "hfp"))
    path = _write_jsonl(tmp_path / "fruit.jsonl", _docs("fruit", 5, 30))
    CalibrationMix({"fruit": str(path)}).sample(tokenizer, 2, 16)
    assert list((tmp_path / "hfp" / "windows").glob("fruit-*.safetensors"))


def test_tokenize_documents_budget_and_identity(tokenizer) -> None:
    stream = tokenize_documents([" apple banana", " red"], tokenizer)
    eos = tokenizer.eos_token_id
    assert stream.tolist() == [11977, 21285, eos, 2382, eos]
    assert tokenize_documents([" apple banana", " red"], tokenizer, max_tokens=3).numel() == 3
    ident = tokenizer_identity(tokenizer)
    assert ident["eos_token_id"] == eos and len(ident["vocab_sha256"]) == 64
