"""CalibrationMix: the forms of the spec, parsing, mix files, presets, round trip and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_prune.data import PRESETS, CalibrationMix, DomainSource
from hf_prune.errors import CalibrationError


def test_preset_weights_are_normalised() -> None:
    mix = CalibrationMix({"web": 3, "code": 3, "math": 2, "dialogue": 2})
    assert mix.domains == ["web", "code", "math", "dialogue"]
    assert mix.weights == pytest.approx({"web": 0.3, "code": 0.3, "math": 0.2, "dialogue": 0.2})
    assert mix["web"].source == PRESETS["web"]["source"] and mix["web"].is_streaming
    assert mix["dialogue"].chat and mix["dialogue"].fields == ("messages",)
    assert mix["math"].fields == ("question", "answer")
    assert not mix["web"].is_local


def test_every_preset_builds() -> None:
    mix = CalibrationMix(dict.fromkeys(PRESETS, 1.0))
    assert set(mix.domains) == set(PRESETS)
    assert all(not s.is_local for s in mix)


def test_local_source_overrides_preset(tmp_path: Path) -> None:
    path = tmp_path / "code.jsonl"
    path.write_text('{"text": "x = 1"}\n', encoding="utf-8")
    mix = CalibrationMix({"code": {"source": str(path), "weight": 0.5}, "web": 0.5})
    code = mix["code"]
    assert code.is_local and code.source == str(path)
    # Nothing of the Hub preset (config, text field "content", streaming) leaks into the local source.
    assert code.fields == ("text",) and code.config is None and not code.is_streaming


def test_full_mapping_form() -> None:
    mix = CalibrationMix(
        {"code": {"source": "org/some-dataset", "weight": 0.5, "text_field": "content", "config": "python", "split": "test", "chat": False}}
    )
    s = mix["code"]
    assert (s.source, s.fields, s.config, s.split, s.chat) == ("org/some-dataset", ("content",), "python", "test", False)


def test_source_string_form_and_sequence_form(tmp_path: Path) -> None:
    mix = CalibrationMix({"docs": str(tmp_path)})
    assert mix["docs"].is_local and mix.weights == {"docs": 1.0}
    mix2 = CalibrationMix([DomainSource("a", "x.jsonl", 1.0), DomainSource("b", "y.jsonl", 3.0)])
    assert mix2.weights == {"a": 0.25, "b": 0.75}


def test_parse_cli_forms(tmp_path: Path) -> None:
    assert CalibrationMix.parse("web=0.3,code=0.3,math=0.2,dialogue=0.2").weights == pytest.approx(
        {"web": 0.3, "code": 0.3, "math": 0.2, "dialogue": 0.2}
    )
    assert CalibrationMix.parse("web, code").weights == {"web": 0.5, "code": 0.5}
    mix = CalibrationMix.parse(f"code={tmp_path}/code.jsonl@0.75, web=0.25")
    assert mix["code"].source == f"{tmp_path}/code.jsonl" and mix.weights["code"] == pytest.approx(0.75)
    mix = CalibrationMix.parse("mine=data/mine.jsonl")
    assert mix["mine"].source == "data/mine.jsonl" and mix["mine"].is_local


def test_from_file_yaml_and_json_resolve_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "code.jsonl").write_text('{"text": "x"}\n', encoding="utf-8")
    (tmp_path / "mix.yaml").write_text(
        "code:\n  source: data/code.jsonl\n  weight: 0.6\nweb: 0.4\n", encoding="utf-8"
    )
    mix = CalibrationMix.from_file(tmp_path / "mix.yaml")
    assert mix["code"].source == str(tmp_path / "data" / "code.jsonl")
    assert mix.weights == pytest.approx({"code": 0.6, "web": 0.4})
    (tmp_path / "mix.json").write_text(json.dumps({"domains": {"code": {"source": "data/code.jsonl"}}}), encoding="utf-8")
    assert CalibrationMix.from_file(tmp_path / "mix.json")["code"].source == str(tmp_path / "data" / "code.jsonl")
    assert CalibrationMix.parse(str(tmp_path / "mix.yaml")) == mix


def test_to_dict_round_trips_and_is_json() -> None:
    mix = CalibrationMix({"web": 0.3, "math": {"weight": 0.7, "max_tokens": 1000}})
    d = mix.to_dict()
    json.dumps(d)
    assert d["domains"]["math"]["max_tokens"] == 1000 and d["domains"]["math"]["text_field"] == ["question", "answer"]
    assert CalibrationMix(d) == mix
    assert "web" in repr(mix)


# ---- bad input --------------------------------------------------------------------------------------
def test_unknown_preset_names_domain() -> None:
    with pytest.raises(CalibrationError, match="'legal'.*unknown preset"):
        CalibrationMix({"web": 0.5, "legal": 0.5})
    with pytest.raises(CalibrationError, match="'legal'"):
        CalibrationMix.parse("web=0.5,legal=0.5")


def test_negative_weight_names_domain() -> None:
    with pytest.raises(CalibrationError, match="'code'.*>= 0"):
        CalibrationMix({"web": 0.5, "code": -0.1})
    with pytest.raises(CalibrationError, match="'code'"):
        CalibrationMix.parse("web=0.5,code=-1")
    with pytest.raises(CalibrationError, match="'code'.*not a number"):
        CalibrationMix({"code": {"weight": "lots"}})
    with pytest.raises(CalibrationError, match="'code'"):
        CalibrationMix({"code": float("nan")})


def test_weights_summing_to_zero_name_domains() -> None:
    with pytest.raises(CalibrationError, match=r"'web', 'code'.*sum to 0"):
        CalibrationMix({"web": 0, "code": 0.0})


def test_unknown_field_and_duplicates_and_empty() -> None:
    with pytest.raises(CalibrationError, match="'code'.*unknown field.*'wieght'"):
        CalibrationMix({"code": {"wieght": 1}})
    with pytest.raises(CalibrationError, match="'web' is given twice"):
        CalibrationMix.parse("web=1,web=2")
    with pytest.raises(CalibrationError, match="no domains"):
        CalibrationMix({})


def test_bad_mix_file(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="does not exist"):
        CalibrationMix.from_file(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("- just\n- a list\n", encoding="utf-8")
    with pytest.raises(CalibrationError, match="mapping"):
        CalibrationMix.from_file(tmp_path / "bad.yaml")
