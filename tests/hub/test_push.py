"""prune_and_push end to end on a tiny random Qwen2 saved to a folder, pushed to the local Hub server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from conftest import FAST, HUB_TOKEN as TOKEN, HUB_USER as USER, make_tiny_base
from hub_server import download_logits

from hf_prune.errors import OutputExistsError
from hf_prune.errors import CalibrationError, HubAuthError, PruningError, PushArgumentError
from hf_prune.config import level_name
from hf_prune.job import EVAL_FILE, prune_and_push

REPO = f"{USER}/tiny-prune-and-push"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_base(tmp_path_factory.mktemp("tiny_base"))


def test_level_name():
    assert [level_name(s) for s in (0.2, 0.35, 0.5, 0.125)] == ["sparsity-20", "sparsity-35", "sparsity-50", "sparsity-12.5"]


def test_prune_and_push_saves_levels_and_pushes_one_branch_each(hub, base, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    out = tmp_path / "out"
    res = prune_and_push(
        base["base"], REPO, target_sparsity=(0.4, 0.2), calibration=base["calibration"],
        evaluation=base["evaluation"], output_dir=out, token=TOKEN, endpoint=hub.endpoint, **FAST,
    )
    # ---- folders ----
    assert sorted(res.folders) == [0.2, 0.4]
    for s, folder in res.folders.items():
        assert folder == out / level_name(s)
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors", "README.md", "pruning_plan.json", EVAL_FILE, "layer_sizes.png",
                "tokenizer.json", "generation_config.json", "modeling_pruned_qwen2.py",
                "configuration_pruned_qwen2.py"} <= names
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"]["AutoModelForCausalLM"].endswith("PrunedQwen2ForCausalLM")
        plan = json.loads((folder / "pruning_plan.json").read_text())
        # a local base model is published by its folder name only, never by its path on this machine
        assert plan["base_model"] == "base" and plan["base_model_path"] == base["base"].name
        assert plan["target_sparsity"] == s and "calibration" in plan
        evals = json.loads((folder / EVAL_FILE).read_text())
        assert set(evals["dense"]["per_domain"]) == set(evals["pruned"]["per_domain"]) == {"a", "b"}
        card = (folder / "README.md").read_text()
        assert f"revision=\"{level_name(s)}\"" in card and REPO in card
        assert abs(res.metrics["levels"][s]["sparsity"] - s) < 0.01
    assert res.metrics["dense"]["params"] > res.metrics["levels"][0.2]["params"] > res.metrics["levels"][0.4]["params"]
    assert res.result.plans.keys() == {0.2, 0.4}
    assert "sparsity-20" in res.summary() and "| a |" in res.perplexity_table()

    # ---- push: one commit per branch, main (= lowest level) last ----
    assert [p.branch for p in res.pushes] == ["sparsity-20", "sparsity-40", "main"]
    assert [c["branch"] for c in hub.commits] == ["sparsity-20", "sparsity-40", "main"]
    assert all(len(p.commit_id) == 40 for p in res.pushes)
    assert {p.repo_url for p in res.pushes} == {f"{hub.endpoint}/{REPO}"}
    text = caplog.text + "".join(capsys.readouterr())
    assert TOKEN not in text and "TESTSECRET" not in text

    # ---- transformers loads each branch from the server: same logits as the local folder ----
    remote, _ = download_logits(hub, REPO, ["sparsity-20", "sparsity-40", "main"],
                                torch.arange(3, 35).reshape(2, 16).tolist(), tmp_path, with_hf_prune=True)

    from transformers import AutoModelForCausalLM

    ids = torch.arange(3, 35).reshape(2, 16)
    for rev, s in (("sparsity-20", 0.2), ("sparsity-40", 0.4), ("main", 0.2)):
        with torch.no_grad():
            local = AutoModelForCausalLM.from_pretrained(res.folders[s]).eval()(ids).logits
        torch.testing.assert_close(remote[rev], local, rtol=0, atol=0)
    assert not torch.equal(remote["sparsity-20"], remote["sparsity-40"])


def test_primary_marks_main_and_no_push_without_repo(base, tmp_path):
    res = prune_and_push(base["base"], target_sparsity=0.3, calibration=base["calibration"], method="magnitude",
                         output_dir=tmp_path / "out", **FAST)
    assert res.pushes == [] and res.repo_id is None and sorted(res.folders) == [0.3]
    assert "perplexity" not in res.metrics["dense"]  # no evaluation asked for
    card = (res.folders[0.3] / "README.md").read_text()
    assert "Not evaluated." in card


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"target_sparsity": (0.2, 1.5)}, PruningError, "fraction in \\(0, 1\\)"),
        ({"output_dir": "NONEMPTY"}, OutputExistsError, "not empty"),
        ({"repo_id": "not a repo id"}, PushArgumentError, "namespace/model-name"),
        ({"repo_id": REPO, "primary": 0.3}, PushArgumentError, "primary must be one of the levels"),
        ({"calibration": "a=/nonexistent/cal.jsonl@1"}, CalibrationError, "does not exist"),
        ({"evaluation": "x=EVAL_IS_CAL"}, CalibrationError, "same as calibration"),
        ({"method": "nope"}, PruningError, "Unknown method"),
        ({"repo_id": REPO}, HubAuthError, "token"),
        ({"push": True}, PushArgumentError, "needs a repo_id"),
    ],
)
def test_bad_input_fails_before_the_model_is_loaded(base, tmp_path, monkeypatch, kwargs, error, match):
    import huggingface_hub.constants as hf_constants
    import transformers

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))

    def boom(*args, **kw):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", boom)
    out = tmp_path / "out"
    args = {"target_sparsity": (0.2, 0.4), "calibration": base["calibration"], "output_dir": out, **FAST, **kwargs}
    if args["output_dir"] == "NONEMPTY":
        out.mkdir()
        (out / "keep.txt").write_text("x")
        args["output_dir"] = out
    if kwargs.get("evaluation") == "x=EVAL_IS_CAL":
        args["evaluation"] = f"x={base['cal_a']}"
    with pytest.raises(error, match=match):
        prune_and_push(base["base"], args.pop("repo_id", None), **args)
    if kwargs.get("output_dir") == "NONEMPTY":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()


def test_llama_folder_is_converted_and_loaded_model_accepted(base, tmp_path):
    import shutil

    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False, pad_token_id=0,
        eos_token_id=1, bos_token_id=2)).eval()
    folder = tmp_path / "llama"
    llama.save_pretrained(folder)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base["base"] / f, folder / f)
    res = prune_and_push(folder, target_sparsity=0.25, calibration=base["calibration"], method="magnitude",
                         output_dir=tmp_path / "out", license="mit", **FAST)
    config = json.loads((res.folders[0.25] / "config.json").read_text())
    assert config["model_type"] == "pruned_qwen2"
    assert "license: mit" in (res.folders[0.25] / "README.md").read_text()

    # An already loaded model with its tokenizer (what the demo does), base model named for the card.
    model = AutoModelForCausalLM.from_pretrained(base["base"])
    tokenizer = AutoTokenizer.from_pretrained(base["base"])
    res = prune_and_push(model, tokenizer=tokenizer, base_model="org/tiny", target_sparsity=0.25,
                         calibration=base["calibration"], method="magnitude", output_dir=tmp_path / "out2", **FAST)
    assert json.loads((res.folders[0.25] / "pruning_plan.json").read_text())["base_model"] == "org/tiny"
    with pytest.raises(PruningError, match="tokenizer"):
        prune_and_push(model, target_sparsity=0.25, output_dir=tmp_path / "out3")


def test_level_folders_are_readable_by_others_and_carry_their_config(base, tmp_path):
    """Saved levels get the permissions of the user's umask (not tempfile's private 0700/0600); each level holds
    the PruneConfig it was made with."""
    import os
    import stat

    from hf_prune import PruneConfig

    old = os.umask(0o022)
    try:
        res = prune_and_push(base["base"], target_sparsity=0.3, calibration=base["calibration"], method="magnitude",
                             output_dir=tmp_path / "out", **FAST)
    finally:
        os.umask(old)
    folder = res.folders[0.3]
    assert stat.S_IMODE(folder.stat().st_mode) == 0o755
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
    assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes
    assert PruneConfig.load(folder) == res.result.config
    assert PruneConfig.load(folder) == PruneConfig(target_sparsity=0.3, method="magnitude", num_samples=8, seq_len=32,
                                                   steps=2).resolved()


def test_card_of_a_local_base_model_links_nowhere_and_reads_its_licence(base, tmp_path):
    import shutil

    local = tmp_path / "my-local-model"
    shutil.copytree(base["base"], local)
    (local / "README.md").write_text("---\nlicense: mit\n---\n# my model\n")
    res = prune_and_push(local, target_sparsity=0.3, calibration=base["calibration"], method="magnitude",
                         output_dir=tmp_path / "out", **FAST)
    card = (res.folders[0.3] / "README.md").read_text()
    metadata = card.split("---")[1]
    assert "base_model" not in metadata and "license: mit" in metadata
    assert "huggingface.co/my-local-model" not in card and "`my-local-model` (a local model, not on the Hub)" in card
    # Named explicitly, the Hub model is the card's base model.
    res = prune_and_push(local, target_sparsity=0.3, calibration=base["calibration"], method="magnitude",
                         output_dir=tmp_path / "out2", base_model="org/my-model", **FAST)
    card = (res.folders[0.3] / "README.md").read_text()
    assert "base_model: org/my-model" in card and "(https://huggingface.co/org/my-model)" in card
