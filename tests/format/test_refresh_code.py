"""Checkpoints written by an earlier hf-prune keep loading, and their shipped code can be replaced, nothing else.

`fixtures/pruned_qwen2_v1/` holds the remote-code files and the config.json that the previous release wrote (format
version 1, saved with transformers 5.23); the weights are made here, by slicing a seeded tiny model with the same
plan, so the test knows what the checkpoint must compute.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import MIXED_INPUT as INPUT
from conftest import MIXED_PLAN as PLAN
from conftest import run_without_hf_prune, tiny_qwen2
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from hf_prune import PruningPlan, apply_plan
from hf_prune.errors import ModelLoadError
from hf_prune.format import refresh_code_files, stale_code_files
from hf_prune.modeling import PrunedQwen2ForCausalLM, shipped_files

pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

FIXTURE = Path(__file__).parent / "fixtures" / "pruned_qwen2_v1"


def old_checkpoint(folder: Path) -> torch.Tensor:
    """Write the previous release's checkpoint of PLAN into ``folder``; returns the logits it must give."""
    shutil.copytree(FIXTURE, folder)
    model = apply_plan(tiny_qwen2(seed=7), PruningPlan.from_dict(PLAN))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "model.safetensors",
              metadata={"format": "pt"})
    (folder / "pruning_plan.json").write_text(json.dumps(PLAN))
    with torch.no_grad():
        return model(torch.tensor(INPUT)).logits


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


def test_a_checkpoint_of_the_previous_release_loads_with_the_plugin(tmp_path):
    expected = old_checkpoint(tmp_path / "old")
    assert json.loads((tmp_path / "old" / "config.json").read_text())["pruned_format_version"] == 1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "old")
    assert isinstance(model, PrunedQwen2ForCausalLM)  # the installed plugin wins over the bundled old code
    with torch.no_grad():
        assert torch.equal(model(torch.tensor(INPUT)).logits, expected)


def test_refresh_replaces_the_code_files_and_nothing_else(tmp_path):
    expected = old_checkpoint(tmp_path / "old")
    before = digests(tmp_path / "old")
    assert sorted(stale_code_files(tmp_path / "old")) == ["configuration_pruned_qwen2.py", "modeling_pruned_qwen2.py"]

    assert refresh_code_files(tmp_path / "old") == {
        tmp_path / "old": ["configuration_pruned_qwen2.py", "modeling_pruned_qwen2.py"]}
    after = digests(tmp_path / "old")
    changed = {name for name in before if before[name] != after[name]}
    assert changed == set(shipped_files("pruned_qwen2")) and set(after) == set(before)
    for name, text in shipped_files("pruned_qwen2").items():
        assert (tmp_path / "old" / name).read_text() == text
    assert refresh_code_files(tmp_path / "old") == {tmp_path / "old": []}  # current: nothing rewritten

    # The refreshed checkpoint runs through its own code, where hf-prune is not installed.
    torch.save(expected, tmp_path / "expected.pt")
    out = run_without_hf_prune(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'old')!r}, trust_remote_code=True)
        assert "hf_prune" not in type(model).__module__
        ids = torch.tensor({INPUT})
        with torch.no_grad():
            assert torch.equal(model(ids).logits, torch.load({str(tmp_path / 'expected.pt')!r}))
            out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        print("REFRESHED-OK", out.shape[1])
        """,
        cwd=tmp_path,
    )
    assert "REFRESHED-OK 12" in out


def test_refresh_of_an_output_folder_checks_every_level_before_writing(tmp_path):
    old_checkpoint(tmp_path / "out" / "sparsity-30")
    old_checkpoint(tmp_path / "out" / "sparsity-50")
    newer = tmp_path / "out" / "sparsity-50" / "config.json"
    newer.write_text(json.dumps({**json.loads(newer.read_text()), "pruned_format_version": 99}))
    before = digests(tmp_path / "out" / "sparsity-30")
    with pytest.raises(ModelLoadError, match="format version 99, newer than this hf-prune"):
        refresh_code_files(tmp_path / "out")
    assert digests(tmp_path / "out" / "sparsity-30") == before  # nothing written
    newer.write_text(json.dumps({**json.loads(newer.read_text()), "pruned_format_version": 1}))
    assert set(refresh_code_files(tmp_path / "out")) == {tmp_path / "out" / "sparsity-30",
                                                         tmp_path / "out" / "sparsity-50"}


def test_refresh_refuses_what_is_not_a_pruned_checkpoint(tmp_path):
    tiny_qwen2().save_pretrained(tmp_path / "stock")
    with pytest.raises(ModelLoadError, match="not a pruned checkpoint .*'qwen2'"):
        refresh_code_files(tmp_path / "stock")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="neither a saved pruned checkpoint nor a folder of them"):
        refresh_code_files(tmp_path / "empty")


def test_refresh_code_on_the_hub_commits_only_the_code_once_per_branch(hub, tmp_path):
    from conftest import HUB_TOKEN, HUB_USER

    from hf_prune.hub import refresh_code

    repo = f"{HUB_USER}/old-pruned"
    old_checkpoint(tmp_path / "old")
    files = {p.name: p.read_bytes() for p in (tmp_path / "old").iterdir()}
    for branch in ("sparsity-30", "sparsity-50", "main"):
        hub.create_repo_with_files(repo, files, branch=branch)
    hub.create_repo_with_files(repo, {"notes.txt": b"not a model"}, branch="scratch")
    before = {b: hub.branch_files(repo, b) for b in ("sparsity-30", "sparsity-50", "main", "scratch")}

    results = refresh_code(repo, token=HUB_TOKEN, endpoint=hub.endpoint, backoff_s=0.01)
    assert [r.branch for r in results] == ["sparsity-30", "sparsity-50", "main"]  # main last; "scratch" left alone
    code = {name: text.encode() for name, text in shipped_files("pruned_qwen2").items()}
    for branch in ("sparsity-30", "sparsity-50", "main"):
        assert len(hub.commits_on(repo, branch)) == 1
        after = hub.branch_files(repo, branch)
        assert after == {**before[branch], **code}  # the code files replaced, every other file byte-identical
    assert hub.branch_files(repo, "scratch") == before["scratch"]
    assert not hub.commits_on(repo, "scratch")

    assert refresh_code(repo, token=HUB_TOKEN, endpoint=hub.endpoint) == []  # current: no commit


def test_refresh_code_refuses_a_named_branch_that_is_not_a_pruned_checkpoint(hub):
    from conftest import HUB_TOKEN, HUB_USER

    from hf_prune.errors import PushArgumentError
    from hf_prune.hub import refresh_code

    repo = f"{HUB_USER}/mixed"
    hub.create_repo_with_files(repo, {"config.json": b'{"model_type": "gpt2"}'}, branch="main")
    with pytest.raises(ModelLoadError, match="not a pruned checkpoint"):
        refresh_code(repo, branches=["main"], token=HUB_TOKEN, endpoint=hub.endpoint)
    with pytest.raises(PushArgumentError, match="no branch \\['nope'\\]"):
        refresh_code(repo, branches=["nope"], token=HUB_TOKEN, endpoint=hub.endpoint)
    assert not hub.commits_on(repo, "main")


def test_the_refresh_code_command(tmp_path, capsys):
    from hf_prune.cli import main

    old_checkpoint(tmp_path / "out" / "sparsity-30")
    assert main(["refresh-code", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == (f"{tmp_path / 'out' / 'sparsity-30'}: configuration_pruned_qwen2.py, "
                                               "modeling_pruned_qwen2.py")
    assert main(["refresh-code", str(tmp_path / "out" / "sparsity-30")]) == 0
    assert capsys.readouterr().out.strip().endswith("already current")
    assert main(["refresh-code", str(tmp_path / "out"), "--branch", "main"]) == 1
    assert "--branch selects branches of a Hub repo: add --hub" in capsys.readouterr().err
