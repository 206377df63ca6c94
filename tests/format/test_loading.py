"""The load step: bad model paths refused in one line before any weights are read; tokenizers checked."""

from __future__ import annotations

import json
import logging

import pytest

from hf_prune.errors import ModelLoadError, UnsupportedModelError
from hf_prune.loading import check_model_source, load_tokenizer, parse_dtype

from conftest import make_tiny_base


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


def test_a_model_folder_is_read_from_its_config(tmp_path):
    base = make_tiny_base(tmp_path)["base"]
    source = check_model_source(base)
    assert source.local and source.model_type == "qwen2" and source.folder == base
    assert source.config["num_hidden_layers"] == 4


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "empty", r"empty is not a model folder: it has no config\.json"),
        (lambda root: root / "missing" / "model", "no such model folder: .*missing/model"),
        (lambda root: root / "weights.bin", r"weights\.bin is a file; give the model folder"),
        (lambda root: "models/smollm2", "no such model folder: models/smollm2 \\(relative to "),
        (lambda root: "no-such-org/no-such-model", "not in the local cache \\(HF_HUB_OFFLINE is set\\)"),
        (lambda root: "not a/valid id!", "neither a local folder nor a Hub model id"),
    ],
)
def test_bad_model_paths_fail_in_one_line(tmp_path, monkeypatch, make, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "models").mkdir()  # a mistyped folder under an existing one is a path, not a Hub id
    (tmp_path / "weights.bin").write_bytes(b"\0")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelLoadError, match=message) as info:
        check_model_source(make(tmp_path))
    assert "\n" not in str(info.value)


def test_another_architecture_is_refused_from_its_config(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    with pytest.raises(UnsupportedModelError, match="is a 'bert' model; hf-prune prunes Qwen2- and Qwen3-family"):
        check_model_source(tmp_path / "bert")


def test_dtype_names_are_checked_without_torch():
    assert parse_dtype("bf16") == "bfloat16" and parse_dtype("torch.float16") == "float16"
    assert parse_dtype("auto") == "auto" and parse_dtype(None) is None
    with pytest.raises(ModelLoadError, match="unknown dtype 'float8'"):
        parse_dtype("float8")


def test_a_tokenizer_that_contradicts_its_vocabulary_is_replaced(smollm2, caplog):
    """transformers 5 gives a folder whose config says qwen2 Qwen's pre-tokenizer, whatever vocabulary it holds:
    the SmolLM2 folder converted to Qwen2 is tokenised differently from its own tokenizer.json by AutoTokenizer."""
    import inspect

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    model, _ = smollm2
    folder = model.config._name_or_path  # the cached folder the asset was converted into
    text = inspect.getsource(inspect)[:4000] + "\n这些\n        命令 Portable\n    Document Format"
    saved = Tokenizer.from_file(f"{folder}/tokenizer.json").encode(text, add_special_tokens=False).ids
    assert AutoTokenizer.from_pretrained(folder)(text, add_special_tokens=False)["input_ids"] != saved  # the trap
    caplog.set_level(logging.WARNING, logger="hf_prune")
    tokenizer = load_tokenizer(folder)
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == saved
    assert "tokenises differently from the vocabulary's own tokenizer.json" in caplog.text


def test_a_consistent_tokenizer_is_kept_without_a_warning(tmp_path, caplog):
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    base = make_tiny_base(tmp_path)["base"]
    caplog.set_level(logging.WARNING, logger="hf_prune")
    tokenizer = load_tokenizer(base)
    assert type(tokenizer) is type(AutoTokenizer.from_pretrained(base)) and caplog.text == ""
    text = "the cat sat on a mat 12345 and ran"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == \
        Tokenizer.from_file(str(base / "tokenizer.json")).encode(text, add_special_tokens=False).ids
