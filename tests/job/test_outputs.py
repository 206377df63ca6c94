"""Nothing lost, nothing stale: every output location is tried before the model loads, ``overwrite`` leaves exactly
the run's levels, and a run killed while saving resumes with the same command and state folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from conftest import FAST, make_tiny_base

from hf_prune import prune_and_push
from hf_prune.errors import OutputExistsError, OutputNotWritableError


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    return make_tiny_base(tmp_path_factory.mktemp("outputs_base"))


@pytest.fixture(scope="module")
def clean(base, tmp_path_factory) -> tuple[Path, object]:
    """An uninterrupted run: what a resumed one must end with."""
    out = tmp_path_factory.mktemp("clean") / "out"
    return out, run(base, out)


@pytest.fixture
def no_loading(monkeypatch):
    """Any attempt to load the model fails the test: the checks must come first."""
    import hf_prune.job.levels as levels

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(levels, "load_model", refuse)


def run(base, out, repo_id=None, **kwargs):
    return prune_and_push(str(base["base"]), repo_id, calibration=base["calibration"], evaluation=base["evaluation"],
                          output_dir=out, target_sparsity=kwargs.pop("target_sparsity", (0.2, 0.4)), **FAST, **kwargs)


def fake_level(folder: Path) -> Path:
    """A level folder as an earlier run left it (hf-prune's own: it has a pruning plan)."""
    folder.mkdir(parents=True)
    (folder / "pruning_plan.json").write_text('{"layers": []}')
    (folder / "model.safetensors").write_bytes(b"old weights")
    return folder


# ---- 1. every output location is writable, before any loading ----------------------------------------------------
@pytest.mark.parametrize("where", ["file", "proc"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_loading(base, tmp_path, no_loading, where):
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "sub" if where == "file" else Path("/proc/hf-prune-out")
    with pytest.raises(OutputNotWritableError, match=str(out)):
        run(base, out)


def test_a_state_folder_that_cannot_be_written_is_refused_before_loading(base, tmp_path, no_loading):
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputNotWritableError, match="a_file/state cannot be created: .*a_file is a file"):
        run(base, tmp_path / "out", state_dir=tmp_path / "a_file" / "state")
    assert not (tmp_path / "out").exists()


def test_evaluate_json_that_cannot_be_written_is_refused_before_loading(base, tmp_path, no_loading, capsys):
    from hf_prune.cli import main

    (tmp_path / "a_file").write_text("x")
    code = main(["evaluate", str(base["base"]), "--evaluation", base["evaluation"], "--json",
                 str(tmp_path / "a_file" / "report.json")])
    assert code == 1
    assert "report.json cannot be created" in capsys.readouterr().err


# ---- 2. overwrite: exactly this run's levels afterwards ----------------------------------------------------------
def test_overwrite_leaves_exactly_the_levels_of_the_run(base, tmp_path):
    out = tmp_path / "out"
    fake_level(out / "sparsity-50")
    (out / ".sparsity-20.partial-k9x2").mkdir()  # what a kill during an atomic save leaves
    (out / ".sparsity-20.partial-k9x2" / "model.safetensors").write_bytes(b"half")
    result = run(base, out, overwrite=True, target_sparsity=(0.3,))
    assert sorted(p.name for p in out.iterdir()) == ["sparsity-30"]
    plan = json.loads((out / "sparsity-30" / "pruning_plan.json").read_text())
    assert plan["target_sparsity"] == 0.3 and result.folders == {0.3: out / "sparsity-30"}


def test_overwrite_refuses_a_folder_holding_what_hf_prune_did_not_write(base, tmp_path, no_loading):
    out = tmp_path / "out"
    fake_level(out / "sparsity-50")
    (out / "notes.txt").write_text("mine")
    (out / "sparsity-old").mkdir()  # named like a level, but no plan: not hf-prune's
    with pytest.raises(OutputExistsError, match=r"holds notes.txt, sparsity-old, which hf-prune did not write"):
        run(base, out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and (out / "sparsity-50" / "model.safetensors").exists()


# ---- 3. a run killed while saving resumes with the same command ----------------------------------------------------
def interrupted_run(base, out, state, monkeypatch):
    """The run saves its first level, then dies while writing the second (leaving its partial folder)."""
    from hf_prune.job import save

    real, calls = save.save_level, []

    def dying(folder, *args, **kwargs):
        calls.append(folder)
        if len(calls) == 2:
            partial = Path(folder).parent / f".{Path(folder).name}.partial-killed"
            partial.mkdir()
            (partial / "model.safetensors").write_bytes(b"half written")
            raise KeyboardInterrupt  # a kill: the second level is never completed
        return real(folder, *args, **kwargs)

    monkeypatch.setattr(save, "save_level", dying)
    with pytest.raises(KeyboardInterrupt):
        run(base, out, state_dir=state)
    monkeypatch.undo()


def test_the_same_command_resumes_after_a_kill_during_the_save(base, clean, tmp_path, monkeypatch):
    out, state = tmp_path / "out", tmp_path / "state"
    interrupted_run(base, out, state, monkeypatch)
    kept = out / "sparsity-20" / "model.safetensors"
    before = os.stat(kept)
    assert sorted(p.name for p in out.iterdir()) == [".sparsity-40.partial-killed", "sparsity-20"]

    with pytest.raises(OutputExistsError, match="same options and --state-dir"):
        run(base, out)  # without the state folder it is somebody else's output: refused
    result = run(base, out, state_dir=state)

    assert sorted(p.name for p in out.iterdir()) == ["sparsity-20", "sparsity-40"]
    after = os.stat(kept)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # kept, not written again
    # The resumed run's output is the uninterrupted run's.
    clean_out, clean_result = clean
    for level in ("sparsity-20", "sparsity-40"):
        for name in ("eval_results.json", "pruning_plan.json", "README.md"):
            assert (out / level / name).read_text() == (clean_out / level / name).read_text(), (level, name)
    assert result.metrics["levels"] == clean_result.metrics["levels"]


def test_a_kept_level_whose_files_changed_is_built_again(base, clean, tmp_path, monkeypatch):
    out, state = tmp_path / "out", tmp_path / "state"
    interrupted_run(base, out, state, monkeypatch)
    weights = out / "sparsity-20" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    run(base, out, state_dir=state)
    assert weights.read_bytes() == (clean[0] / "sparsity-20" / "model.safetensors").read_bytes()


# ---- 4. push publishes only hf-prune's levels, under their own names ---------------------------------------------
@pytest.mark.parametrize("case", ["base model", "gpt2 without weights", "renamed level", "mixed runs",
                                  "missing shard"])
def test_push_refuses_what_is_not_a_level_before_any_network_call(base, clean, tmp_path, hub, case, capsys,
                                                                  monkeypatch):
    import shutil

    import huggingface_hub.constants as hf_constants
    from conftest import HUB_TOKEN, HUB_USER

    from hf_prune.cli import main

    folder = tmp_path / "sparsity-20"
    if case == "base model":
        shutil.copytree(base["base"], folder)
    elif case == "gpt2 without weights":
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    else:
        shutil.copytree(clean[0] / "sparsity-40", folder)  # the 40% level...
        if case == "renamed level":
            pass  # ... under the 20% level's name
        elif case == "mixed runs":
            (folder / "pruning_plan.json").write_text((clean[0] / "sparsity-20" / "pruning_plan.json").read_text())
        else:
            (folder / "model.safetensors").unlink()
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.setattr(hf_constants, "ENDPOINT", hub.endpoint)
    code = main(["push", f"{HUB_USER}/refused", str(folder)])
    err = capsys.readouterr().err
    assert code == 1, err
    expected = {"base model": "not a pruned checkpoint (model_type 'qwen2'",
                "gpt2 without weights": "not a pruned checkpoint (model_type 'gpt2'",
                "renamed level": "holds the level of sparsity 0.4 by its pruning plan, but its name makes it branch "
                                 "'sparsity-20'",
                "mixed runs": "the folder mixes files of different runs",
                "missing shard": "the weights file model.safetensors is missing"}[case]
    assert expected in err
    assert hub.requests == []  # refused before any call to the Hub


# ---- 5. malformed inputs: one line, before the model loads ------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--calibration", "code=0.5=0.3"], "'0.5=0.3' is neither a local file nor a Hugging Face dataset id"),
    (["--calibration", "a={tmp}/empty.jsonl"], "empty.jsonl' is empty"),
    (["--calibration", "a={tmp}/binary.jsonl"], "binary.jsonl' is not UTF-8 text"),
    (["--calibration", "a={tmp}/fields.jsonl"], "text field 'text' not found in '{tmp}/fields.jsonl'; columns are "
                                                "['body']"),
    (["--calibration", "a={tmp}/notjson.jsonl"], "the first line of '{tmp}/notjson.jsonl' is not a JSON record"),
    (["--max-memory", "0=lots"], "not a memory size: 'lots'"),
    (["--max-memory", "cpu=-5GiB"], "not a memory size: '-5GiB'"),
    (["--device-map", "banana"], "device_map 'banana' is neither a device"),
    (["--device-map", "cuda:99"], "device_map 'cuda:99': this machine has"),
])
def test_malformed_inputs_fail_in_one_line_before_loading(base, tmp_path, no_loading, capsys, args, message):
    from hf_prune.cli import main

    (tmp_path / "empty.jsonl").write_text("\n \n")
    (tmp_path / "binary.jsonl").write_bytes(bytes(range(256)) * 8)
    (tmp_path / "fields.jsonl").write_text('{"body": "some text"}\n')
    (tmp_path / "notjson.jsonl").write_text("just a line of text\n")
    args = [a.format(tmp=tmp_path) for a in args]
    code = main(["prune", str(base["base"]), "--calibration", base["calibration"], "--output-dir",
                 str(tmp_path / "out"), "-q", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and message.format(tmp=tmp_path) in err[0], err
    assert not (tmp_path / "out").exists()


# ---- 6. nothing of this machine is published -----------------------------------------------------------------------
def test_no_local_path_is_pushed(base, tmp_path, hub):
    from conftest import HUB_TOKEN, HUB_USER

    repo = f"{HUB_USER}/no-paths"
    out = tmp_path / "out"
    result = run(base, out, target_sparsity=(0.3,), repo_id=repo, token=HUB_TOKEN, endpoint=hub.endpoint)
    assert [p.branch for p in result.pushes] == ["sparsity-30", "main"]
    local = {str(out.resolve()), str(base["base"].resolve()), str(base["cal_a"].resolve().parent),
             os.path.expanduser("~"), os.getcwd()}
    for branch in ("sparsity-30", "main"):
        for name, data in hub.branch_files(repo, branch).items():
            leaked = [p for p in local if p.encode() in data]
            assert not leaked, f"{branch}/{name} holds {leaked}"
    # Local calibration files are named by file name and checksum instead.
    import hashlib

    plan = json.loads(hub.branch_files(repo, "main")["pruning_plan.json"])
    domain = plan["calibration"]["domains"]["a"]
    assert domain["source"] == "cal_a.jsonl"
    assert domain["sha256"] == hashlib.sha256(base["cal_a"].read_bytes()).hexdigest()
    assert plan["base_model_path"] == "base"


# ---- 8. a level asked for twice is refused, not merged -------------------------------------------------------------
def test_duplicate_sparsities_are_refused_on_the_command_line(base, tmp_path, no_loading, capsys):
    from hf_prune.cli import main

    code = main(["prune", str(base["base"]), "--sparsity", "0.3,0.3", "--output-dir", str(tmp_path / "out")])
    assert code == 1
    assert capsys.readouterr().err.strip() == "hf-prune: error: target_sparsity lists 0.3 more than once: give each " \
                                              "level once."
