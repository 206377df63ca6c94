"""hf_prune.hub against a local Hub-compatible server, with the real huggingface_hub client.

Nothing in hf_prune is patched: the tests only point the client at the local server (``endpoint=``)
and turn Xet off in huggingface_hub (the server speaks basic LFS only).
"""

from __future__ import annotations

import json
import logging
import traceback
from pathlib import Path

import pytest

from conftest import HUB_TOKEN as TOKEN, HUB_USER as USER
from hub_server import LocalHub, download_logits

from hf_prune.errors import (
    HubAuthError,
    HubError,
    PushArgumentError,
    PushIncompleteError,
    RepoExistsError,
)
from hf_prune.hub import PushResult, push_pruned_folders

REPO = f"{USER}/tiny-pruned"


# ---------------------------------------------------------------------------------------------- fixtures
def _save_tiny_qwen2(folder: Path, seed: int) -> None:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=False,
    )
    Qwen2ForCausalLM(config).eval().save_pretrained(folder, safe_serialization=True)
    # The other kinds of file a pruned checkpoint folder carries.
    (folder / "pruning_plan.json").write_text(json.dumps({"seed": seed, "layers": [{}, {}]}))
    (folder / "eval.json").write_text(json.dumps({"web": 12.5 + seed}))
    (folder / "modeling_stub.py").write_text(f"# remote code placeholder {seed}\n")
    (folder / "README.md").write_text(
        f"---\nbase_model: Qwen/Qwen2.5-0.5B\nlicense: apache-2.0\ntags:\n- pruned\n---\n\n# tiny {seed}\n"
    )
    (folder / "layer_sizes.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes([seed]) * 32)


@pytest.fixture(scope="module")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pruned")
    folders = {}
    for seed, branch in ((1, "sparsity-30"), (2, "sparsity-50")):
        folder = root / branch
        folder.mkdir()
        _save_tiny_qwen2(folder, seed)
        folders[branch] = folder
    return folders


def _local_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _assert_no_token(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
        assert "TESTSECRET" not in text


def _push(hub: LocalHub, folders, **kwargs) -> list[PushResult]:
    kwargs.setdefault("primary", "sparsity-30")
    kwargs.setdefault("token", TOKEN)
    kwargs.setdefault("backoff_s", 0.01)
    return push_pruned_folders(REPO, folders, endpoint=hub.endpoint, **kwargs)


# ---------------------------------------------------------------------------------------------- happy path
def test_push_one_commit_per_branch_then_load_with_transformers(hub, tiny_folders, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    results = _push(hub, tiny_folders, private=True)

    assert [r.branch for r in results] == ["sparsity-30", "sparsity-50", "main"]
    assert all(len(r.commit_id) == 40 and r.commit_url.endswith(r.commit_id) for r in results)
    assert {r.repo_url for r in results} == {f"{hub.endpoint}/{REPO}"}
    assert hub.repos[REPO].private

    # Exactly one commit per branch, main last, each branch equal to its folder.
    assert [c["branch"] for c in hub.commits] == ["sparsity-30", "sparsity-50", "main"]
    for branch, folder in tiny_folders.items():
        assert hub.branch_files(REPO, branch) == {**_local_files(folder), ".gitattributes": hub.branch_files(REPO, branch)[".gitattributes"]}
    assert {k: v for k, v in hub.branch_files(REPO, "main").items() if k != ".gitattributes"} == _local_files(
        tiny_folders["sparsity-30"]
    )
    # Branches start from the initial commit, not from each other.
    initial = hub.repos[REPO].commits[hub.commits[0]["oid"]].parent
    assert all(hub.repos[REPO].commits[c["oid"]].parent == initial for c in hub.commits)

    # Weights and PNG went through LFS (basic transfer, two distinct blobs), README was validated.
    lfs_files = {p for p, f in hub.repos[REPO].commits[results[-1].commit_id].files.items() if f.lfs_sha256}
    assert lfs_files == {"model.safetensors", "layer_sizes.png"}
    assert len(hub.calls("lfs_upload")) == 4  # main reuses the blobs of sparsity-30
    assert len(hub.calls("validate_yaml")) == 3
    _assert_no_token(caplog.text, *capsys.readouterr())

    # transformers downloads each branch from the local Hub and gives the logits of the local folder.
    import torch

    ids = torch.arange(1, 17).reshape(2, 8)
    remote, proc = download_logits(hub, REPO, ["sparsity-50", "main", results[0].commit_id], ids.tolist(),
                                   tmp_path, token=TOKEN)
    _assert_no_token(proc.stdout, proc.stderr)
    assert (tmp_path / "hf_home" / "hub" / f"models--{REPO.replace('/', '--')}").is_dir()

    from transformers import AutoModelForCausalLM

    for rev, folder in (("sparsity-50", "sparsity-50"), ("main", "sparsity-30"), (results[0].commit_id, "sparsity-30")):
        with torch.no_grad():
            expected = AutoModelForCausalLM.from_pretrained(tiny_folders[folder]).eval()(ids).logits
        torch.testing.assert_close(remote[rev], expected, rtol=0, atol=0)
    assert not torch.equal(remote["sparsity-50"], remote["main"])


# ---------------------------------------------------------------------------------------------- failures
def test_transient_commit_error_is_retried(hub, tiny_folders, caplog):
    caplog.set_level(logging.DEBUG)
    hub.fail_next("commit", status=503, times=2, revision="sparsity-50")
    results = _push(hub, tiny_folders)
    assert [r.branch for r in results] == ["sparsity-30", "sparsity-50", "main"]
    statuses = [c["status"] for c in hub.calls("commit")]
    assert statuses == ["ok", 503, 503, "ok", "ok"]
    assert [c["branch"] for c in hub.commits] == ["sparsity-30", "sparsity-50", "main"]
    assert "retry 1/3" in caplog.text
    _assert_no_token(caplog.text)


def test_dropped_connection_and_lost_answer_do_not_duplicate_commits(hub, tiny_folders):
    hub.fail_next("commit", status=0, revision="sparsity-30")  # connection dropped before the commit
    hub.fail_next("commit", status=0, after=True, revision="main")  # commit landed, answer lost
    results = _push(hub, tiny_folders)
    assert [c["status"] for c in hub.calls("commit")] == ["dropped", "ok", "ok", "dropped"]
    assert [c["branch"] for c in hub.commits] == ["sparsity-30", "sparsity-50", "main"]
    assert [r.commit_id for r in results] == [c["oid"] for c in hub.commits]


def test_persistent_failure_reports_landed_branches_and_leaves_main_untouched(hub, tiny_folders, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    hub.fail_next("commit", status=500, times=100, revision="sparsity-50", message=f"boom {TOKEN}")
    with pytest.raises(PushIncompleteError) as info:
        _push(hub, tiny_folders, max_retries=2)
    err = info.value
    assert err.failed_branch == "sparsity-50" and err.status_code == 500
    assert [r.branch for r in err.landed] == ["sparsity-30"]
    landed_commit = err.landed[0].commit_id
    message = str(err)
    assert "sparsity-50" in message and f"sparsity-30 (commit {landed_commit})" in message
    assert "'main' was not changed" in message
    # 1 try + 2 retries on the failing branch; main never committed to.
    assert [c["status"] for c in hub.calls("commit")] == ["ok", 500, 500, 500]
    assert hub.commits_on(REPO, "main") == []
    assert set(hub.branch_files(REPO, "main")) == {".gitattributes"}
    assert hub.repos[REPO].branches["sparsity-30"] == landed_commit
    # The server echoed the token in its error message: it must be scrubbed everywhere.
    _assert_no_token(message, repr(err), "".join(traceback.format_exception(err)), caplog.text, *capsys.readouterr())


@pytest.mark.parametrize("where", ["whoami", "commit"])
def test_auth_error_is_clear_and_not_retried(hub, tiny_folders, where, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    hub.fail_next(where, status=401, times=5)
    with pytest.raises(HubAuthError) as info:
        _push(hub, tiny_folders)
    assert "refused the token" in str(info.value) and "HTTP 401" in str(info.value)
    assert len(hub.calls(where)) == 1  # no retry
    assert hub.commits == []
    _assert_no_token(str(info.value), "".join(traceback.format_exception(info.value)), caplog.text,
                     *capsys.readouterr())


def test_invalid_token_is_refused_before_anything_is_created(hub, tiny_folders, caplog):
    caplog.set_level(logging.DEBUG)
    bad = "hf_TESTSECRETwrongToken987654321"
    with pytest.raises(HubAuthError) as info:
        _push(hub, tiny_folders, token=bad)
    assert REPO not in hub.repos
    assert bad not in str(info.value) and bad not in caplog.text
    assert [r["endpoint"] for r in hub.requests] == ["whoami"]


def test_existing_repo_with_content_is_refused_unless_overwrite(hub, tiny_folders):
    hub.create_repo_with_files(REPO, {"old-weights.bin": b"\0" * 64, "config.json": b"{}"})
    before = dict(hub.repos[REPO].branches)
    with pytest.raises(RepoExistsError, match="overwrite=True"):
        _push(hub, tiny_folders)
    assert hub.repos[REPO].branches == before and hub.commits == []

    results = _push(hub, tiny_folders, overwrite=True)
    assert [r.branch for r in results] == ["sparsity-30", "sparsity-50", "main"]
    main = hub.branch_files(REPO, "main")
    assert "old-weights.bin" not in main  # stale files are deleted in the same commit
    assert {k: v for k, v in main.items() if k != ".gitattributes"} == _local_files(tiny_folders["sparsity-30"])
    assert len(hub.commits_on(REPO, "main")) == 1


def test_empty_existing_repo_is_not_refused(hub, tiny_folders):
    hub.create_repo_with_files(REPO, {})  # e.g. created on the website: only .gitattributes
    results = _push(hub, tiny_folders)
    assert len(results) == 3


def test_readme_with_invalid_metadata_is_a_hub_error(hub, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "README.md").write_text("---\nbase_model: a/b\nbase_model_relation: pruned\n---\n")
    with pytest.raises(PushIncompleteError, match="base_model_relation") as info:
        push_pruned_folders(REPO, {"sparsity-30": folder}, primary="sparsity-30", token=TOKEN,
                            endpoint=hub.endpoint, backoff_s=0.01)
    assert isinstance(info.value, HubError) and info.value.landed == []
    assert hub.commits == [] and len(hub.calls("validate_yaml")) == 1  # not retried


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"repo_id": "no-namespace"}, "namespace/model-name"),
        ({"repo_id": "a/b/c"}, "namespace/model-name"),
        ({"repo_id": "me/bad--name"}, "namespace/model-name"),
        ({"folders": {}}, "non-empty mapping"),
        ({"folders": {"main": "SP30"}}, "'main' cannot be a key"),
        ({"folders": {"bad branch": "SP30"}}, "Invalid branch name"),
        ({"folders": {"a" * 40: "SP30"}}, "Invalid branch name"),
        ({"folders": {"sparsity-30": "/does/not/exist"}}, "does not exist"),
        ({"folders": {"sparsity-30": "EMPTY"}}, "no config.json"),
        ({"primary": "sparsity-90"}, "primary must be one of"),
        ({"max_retries": -1}, "max_retries"),
        ({"token": ""}, "token must be"),
    ],
)
def test_invalid_arguments_fail_before_any_network_call(hub, tiny_folders, tmp_path, kwargs, match):
    (tmp_path / "empty").mkdir()
    args = {"repo_id": REPO, "folders": dict(tiny_folders), "primary": "sparsity-30", "token": TOKEN}
    args.update(kwargs)
    if isinstance(args["folders"], dict):
        args["folders"] = {
            k: {"SP30": tiny_folders["sparsity-30"], "EMPTY": tmp_path / "empty"}.get(str(v), v)
            for k, v in args["folders"].items()
        }
    with pytest.raises(PushArgumentError, match=match):
        push_pruned_folders(args.pop("repo_id"), args.pop("folders"), endpoint=hub.endpoint, **args)
    assert hub.requests == []
