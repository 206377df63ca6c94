"""``data.as_calibration``: one object for every accepted form of calibration data, asked by every consumer."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from hf_prune.data import CalibrationMix, CalibrationWindows, as_calibration, check_overlap
from hf_prune.data.multiple_choice import MultipleChoiceBatch
from hf_prune.data.windows import allocate_counts, derived_seed, domain_token_stream, draw_windows, pack_windows
from hf_prune.errors import CalibrationError

WORDS = {"a": ["apple", "banana", "cherry", "grape"], "b": ["tiger", "horse", "zebra", "camel"]}


@pytest.fixture(scope="module")
def tokenizer():
    from hf_prune.demo.assets import load_smollm2

    return load_smollm2()[1]


@pytest.fixture()
def mix(tmp_path: Path, monkeypatch) -> CalibrationMix:
    monkeypatch.setenv("HF_PRUNE_CACHE", str(tmp_path / "cache"))
    spec = {}
    for name, words in WORDS.items():
        rng = random.Random(name)
        docs = [" " + " ".join(rng.choice(words) for _ in range(60)) for _ in range(30)]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
        spec[name] = {"source": str(path), "weight": 0.5}
    return CalibrationMix(spec)


def test_every_form_gives_one_object(mix, tmp_path):
    text = ",".join(f"{s.name}={s.source}@0.5" for s in mix.sources)
    for form in (mix, text, mix.to_dict()):
        calibration = as_calibration(form)
        assert calibration.mix == mix and calibration.kind == "CalibrationMix"
        assert as_calibration(calibration) is calibration  # already checked: passed through
    assert as_calibration(None) is None
    ids = torch.randint(0, 100, (6, 8))
    tokens = as_calibration(ids)
    assert tokens.mix is None and tokens.kind == "Tensor" and tokens.domains() is None
    assert torch.equal(tokens.draw(99, 4, 7).input_ids, ids)  # given tokens are used as given
    documents = as_calibration({"x": ["one text", "another"], "y": {"source": str(mix.sources[0].source)}})
    assert documents.domains()["x"] == ["one text", "another"] and documents.domains()["y"].name == "y"
    with pytest.raises(CalibrationError, match="evaluation text"):
        documents.draw(4, 8, 0)
    with pytest.raises(CalibrationError, match="got int"):
        as_calibration(42)
    with pytest.raises(CalibrationError, match="does not exist"):
        as_calibration(f"a={tmp_path / 'missing.jsonl'}")


def test_a_mix_draws_what_sample_windows_draws_and_keeps_it(mix, tokenizer):
    calibration = as_calibration(mix)
    drawn = calibration.draw(10, 16, 3, tokenizer=tokenizer)
    assert torch.equal(drawn.input_ids, mix.sample(tokenizer, 10, 16, seed=3).input_ids)
    assert calibration.draw(10, 16, 3, tokenizer=tokenizer) is drawn  # asked again: the same draw
    assert calibration.draw(10, 16, 4, tokenizer=tokenizer) is not drawn
    with pytest.raises(CalibrationError, match="tokenizer"):
        calibration.draw(10, 16, 3)


def test_the_held_back_windows_reuse_the_scoring_draw(mix, tokenizer, monkeypatch):
    from hf_prune.engine.priors import holdout_windows

    calibration = as_calibration(mix)
    scoring = calibration.draw(8, 16, 0, tokenizer=tokenizer)
    calls = []
    sample = CalibrationMix.sample
    monkeypatch.setattr(CalibrationMix, "sample", lambda self, *a, **k: calls.append(a[1]) or sample(self, *a, **k))
    held = holdout_windows(calibration, tokenizer, 8, 16, seed=0)
    assert calls == [8 + 16]  # only the larger draw; the scoring windows were not drawn again
    seen = {tuple(row.tolist()) for row in scoring.input_ids}
    assert len(held) == 16 and not any(tuple(row.tolist()) in seen for row in held)


def test_draw_windows_against_a_direct_computation():
    """Each domain's rows follow a permutation seeded from (seed, domain), or per pass (seed, "domain:pass")."""
    pools = {"a": torch.arange(5).unsqueeze(1).repeat(1, 3), "b": 100 + torch.arange(3).unsqueeze(1).repeat(1, 3)}
    counts = {"a": 2, "b": 7}
    once = draw_windows({"a": pools["a"]}, {"a": 4}, 11)
    perm = torch.randperm(5, generator=torch.Generator().manual_seed(derived_seed(11, "a")))[:4]
    assert sorted(once.input_ids[:, 0].tolist()) == sorted(perm.tolist())
    repeated = draw_windows(pools, counts, 11, passes=True)
    b_rows = torch.cat([torch.randperm(3, generator=torch.Generator().manual_seed(derived_seed(11, f"b:{p}")))
                        for p in range(3)])[:7]
    assert sorted(repeated.by_domain()["b"][:, 0].tolist()) == sorted((100 + b_rows).tolist())
    assert repeated.domain_counts == counts


def test_pools_hold_every_window_of_each_domain(mix, tokenizer):
    pools = as_calibration(mix).pools(16, tokenizer)
    for source in mix.sources:
        weight, windows = pools[source.name]
        assert weight == source.weight
        assert torch.equal(windows, pack_windows(domain_token_stream(source, tokenizer), 16))
    given = CalibrationWindows(torch.arange(24).view(6, 4), ["x", "y", "x", "x", "y", "x"])
    assert {d: (w, t.shape[0]) for d, (w, t) in as_calibration(given).pools(4).items()} == {"x": (4.0, 4),
                                                                                          "y": (2.0, 2)}
    batch = MultipleChoiceBatch(*(torch.zeros(2, 3, dtype=torch.long) for _ in range(3)),
                                torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([True, False]))
    with pytest.raises(CalibrationError, match="got MultipleChoiceBatch"):
        as_calibration(batch).pools(4)
    assert allocate_counts({d: w for d, (w, _) in pools.items()}, 10) == {"a": 5, "b": 5}


def test_windows_remember_their_mix_for_the_overlap_check(mix, tokenizer):
    windows = mix.sample(tokenizer, 4, 16, seed=0)
    evaluation = {"a": {"source": mix.sources[0].source}}
    with pytest.raises(CalibrationError, match="same as calibration domain 'a'"):
        check_overlap(windows, evaluation, documents=False)
    check_overlap(torch.zeros(2, 4, dtype=torch.long), evaluation, documents=False)  # bare tokens: nothing to compare
