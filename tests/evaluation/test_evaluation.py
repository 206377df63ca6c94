"""Per-domain perplexity of real SmolLM2 on real offline text (Python stdlib sources, the Zen of Python)."""

from __future__ import annotations

import codecs
import contextlib
import inspect
import io
import json
import math
import textwrap
from pathlib import Path

import pytest
import torch

from hf_prune.data import CalibrationMix
from hf_prune.data.windows import tokenize_documents
from hf_prune.errors import CalibrationError
from hf_prune.errors import DataOverlapWarning
from hf_prune.evaluation import PerplexityReport, evaluate_perplexity


def _zen() -> str:
    with contextlib.redirect_stdout(io.StringIO()):
        import this
    return codecs.decode(this.s, "rot13")


@pytest.fixture(scope="module")
def smollm2():
    from hf_prune.demo.assets import load_smollm2

    return load_smollm2()


@pytest.fixture(scope="module")
def texts() -> dict[str, list[str]]:
    return {
        "code": [inspect.getsource(json.decoder), inspect.getsource(textwrap)],
        "docs": [json.__doc__ or "", textwrap.dedent(json.dumps.__doc__ or "")],
        "zen": [_zen()],
    }


def _reference(model, tokenizer, docs: list[str], seq_len: int, cap: int | None = None) -> tuple[float, int]:
    """Straightforward perplexity: non-overlapping windows, model(labels=...) loss per window, token-weighted."""
    stream = tokenize_documents(docs, tokenizer)
    n = stream.numel() // seq_len
    idx = list(range(n))
    if cap is not None and n > cap:
        idx = sorted({round(i * (n - 1) / (cap - 1)) for i in range(cap)})
    total, count = 0.0, 0
    with torch.no_grad():
        for i in idx:
            window = stream[i * seq_len : (i + 1) * seq_len].long().unsqueeze(0)
            loss = model(input_ids=window, labels=window).loss.item()  # mean over seq_len - 1 targets
            total += loss * (seq_len - 1)
            count += seq_len - 1
    return math.exp(total / count), len(idx)


def test_matches_reference_and_is_finite(smollm2, texts) -> None:
    model, tok = smollm2
    report = evaluate_perplexity(model, tok, texts, seq_len=48, batch_size=4, max_windows_per_domain=4, progress=False)
    assert set(report.per_domain) == set(texts)
    for domain, docs in texts.items():
        ref, n = _reference(model, tok, docs, 48, cap=4)
        assert math.isfinite(report.per_domain[domain]) and 1.0 < report.per_domain[domain] < 1000
        assert report.per_domain[domain] == pytest.approx(ref, rel=1e-4), domain
        assert report.windows[domain] == n and report.tokens[domain] == n * 47
    assert report.mean == pytest.approx(sum(report.per_domain.values()) / 3)


def test_identical_across_batch_sizes(smollm2, texts) -> None:
    model, tok = smollm2
    kwargs = dict(seq_len=32, max_windows_per_domain=4, progress=False)
    r1 = evaluate_perplexity(model, tok, texts, batch_size=1, **kwargs)
    r4 = evaluate_perplexity(model, tok, texts, batch_size=4, **kwargs)
    for d in texts:
        assert r1.per_domain[d] == pytest.approx(r4.per_domain[d], rel=1e-5)
        assert r1.tokens[d] == r4.tokens[d]


def test_overlapping_stride_scores_each_token_once(smollm2, texts) -> None:
    model, tok = smollm2
    zen = {"zen": texts["zen"]}
    n_tokens = tokenize_documents(texts["zen"], tok).numel()
    r = evaluate_perplexity(model, tok, zen, seq_len=64, stride=48, batch_size=8, progress=False)
    n_windows = (n_tokens - 64) // 48 + 1
    assert r.windows["zen"] == n_windows and r.stride == 48
    assert r.tokens["zen"] == 63 + (n_windows - 1) * 48
    plain = evaluate_perplexity(model, tok, zen, seq_len=64, progress=False)
    assert r.per_domain["zen"] < plain.per_domain["zen"]  # more context per scored token


def test_report_outputs_and_compare(tmp_path: Path) -> None:
    a = PerplexityReport({"code": 4.0, "zen": 10.0}, {"code": math.log(4), "zen": math.log(10)}, {"code": 100, "zen": 100}, {"code": 2, "zen": 2}, 64, 64, label="dense")
    b = PerplexityReport({"code": 5.0, "zen": 12.0}, {"code": math.log(5), "zen": math.log(12)}, {"code": 100, "zen": 100}, {"code": 2, "zen": 2}, 64, 64, label="pruned")
    assert a.mean == 7.0 and a.token_weighted == pytest.approx(math.sqrt(40))
    data = json.loads(a.to_json(tmp_path / "r.json"))
    assert data["per_domain"] == {"code": 4.0, "zen": 10.0} and data["mean"] == 7.0
    assert PerplexityReport.from_dict(json.loads((tmp_path / "r.json").read_text())) == a
    md = a.to_markdown()
    assert "| code | 4.000 |" in md and "**7.000**" in md and "seq_len 64" in md
    cmp = a.compare(b)
    assert "| domain | dense | pruned | ratio |" in cmp and "| code | 4.000 | 5.000 | 1.250 |" in cmp
    assert "**8.500**" in cmp


class _NoModel(torch.nn.Module):
    """Fails if run: data errors must surface before any forward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, *a, **k):  # pragma: no cover - reaching it is the failure
        raise AssertionError("model ran before the data was checked")


def _jsonl(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs), encoding="utf-8")
    return path


def test_refuses_same_file_as_calibration(smollm2, texts, tmp_path) -> None:
    _, tok = smollm2
    f = _jsonl(tmp_path / "code.jsonl", texts["code"])
    calib = CalibrationMix({"code": {"source": str(f), "weight": 1.0}})
    with pytest.raises(CalibrationError, match="'pycode'.*same as calibration domain 'code'"):
        evaluate_perplexity(_NoModel(), tok, {"pycode": str(f)}, calibration=calib, progress=False)
    windows = calib.sample(tok, 2, 16, cache=False)  # drawn windows remember their mix
    with pytest.raises(CalibrationError, match="'pycode'.*same as calibration domain 'code'"):
        evaluate_perplexity(_NoModel(), tok, {"pycode": str(f)}, calibration=windows, progress=False)


def test_warns_on_shared_documents(smollm2, texts, tmp_path) -> None:
    model, tok = smollm2
    calib_file = _jsonl(tmp_path / "calib.jsonl", texts["code"][:1] + texts["docs"])
    eval_file = _jsonl(tmp_path / "dev.jsonl", texts["code"])
    calib = CalibrationMix({"code": {"source": str(calib_file)}})
    with pytest.warns(DataOverlapWarning, match="'dev_code': 1 of 2 evaluation documents.*'code'"):
        r = evaluate_perplexity(
            model, tok, {"dev_code": str(eval_file)}, calibration=calib, seq_len=32,
            max_windows_per_domain=2, progress=False, cache=tmp_path / "cache",
        )
    assert r.windows["dev_code"] == 2


def test_domain_too_small_and_bad_sources_fail_before_model(smollm2, tmp_path) -> None:
    _, tok = smollm2
    with pytest.raises(CalibrationError, match="'tiny' is too small"):
        evaluate_perplexity(_NoModel(), tok, {"ok": [_zen()], "tiny": ["just a few words"]}, seq_len=64, progress=False)
    with pytest.raises(CalibrationError, match="'gone'.*does not exist"):
        evaluate_perplexity(_NoModel(), tok, {"gone": str(tmp_path / "gone.jsonl")}, progress=False)
    with pytest.raises(CalibrationError, match="'blank'.*no non-empty"):
        evaluate_perplexity(_NoModel(), tok, {"blank": ["", "  "]}, progress=False)
