"""Targets through the whole job: levels named after what they were asked, their eval_results.json and card saying
what they reached (checked against the saved files themselves), --dry-run's forecast, refusals before loading."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from safetensors import safe_open

import hf_prune
from hf_prune import PruneConfig
from hf_prune.cli import main
from hf_prune.errors import PruningError, PushArgumentError
from hf_prune.job import EVAL_FILE
from hf_prune.job.commands import level_folders, primary_branch

from conftest import FAST, make_tiny_base


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return make_tiny_base(tmp_path_factory.mktemp("targets"))


def _saved_params(folder) -> int:
    """Parameters in a folder's safetensors shards."""
    total = 0
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as f:
            total += sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    return total


def _kv_heads(config: dict) -> int:
    """KV heads of every layer, from a saved config.json: the global count, then per_layer_config's overrides."""
    layers = [config["num_key_value_heads"]] * config["num_hidden_layers"]
    for index, sizes in (config.get("per_layer_config") or {}).items():
        if "attention" in (sizes.get("skip") or ()):
            layers[int(index)] = 0
        else:
            layers[int(index)] = sizes.get("num_key_value_heads", layers[int(index)])
    return sum(layers)


def test_levels_are_named_by_their_targets_and_say_what_they_reached(base, tmp_path):
    dense = json.loads((base["base"] / "config.json").read_text())
    total = _saved_params(base["base"])
    asked = (int(0.85 * total), int(0.7 * total))
    res = hf_prune.prune_and_push(str(base["base"]), calibration=base["calibration"], evaluation=base["evaluation"],
                                  output_dir=tmp_path / "out", target_params=asked, target_kv_cache=0.5,
                                  context_length=64, memory_batch_size=2, method="magnitude", allocation="global", **FAST)
    names = PruneConfig(target_params=asked, target_kv_cache=0.5).level_names()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(names)
    assert all(n.startswith("params-") and n.endswith("-kv-50") for n in names)
    head_dim = dense["hidden_size"] // dense["num_attention_heads"]
    for folder, params in zip((tmp_path / "out" / n for n in names), asked):
        saved = json.loads((folder / EVAL_FILE).read_text())
        config = json.loads((folder / "config.json").read_text())
        targets = saved["targets"]
        counted = _saved_params(folder)
        kv_bytes = 2 * 64 * 2 * _kv_heads(config) * head_dim * 4  # batch 2 x 64 tokens, keys and values, float32
        assert targets["asked"] == {"params": params, "kv_cache_reduction": 0.5}
        assert targets["reached"]["params"] == counted == saved["params_after"]
        assert targets["reached"]["memory_bytes"] == counted * 4 + kv_bytes
        assert targets["reached"]["kv_cache_reduction"] == pytest.approx(1 - _kv_heads(config) / _kv_heads(dense))
        assert targets["met"] == {"params": abs(counted - params) <= 0.005 * (total - 2 * 320 * 64),
                                  "kv_cache_reduction": _kv_heads(config) <= _kv_heads(dense) / 2}
        assert all(targets["met"].values())
        card = (folder / "README.md").read_text()
        assert re.search(r"target: parameters \|.* asked, .* reached: met", card)
        assert re.search(r"target: KV cache removed \| 50.0% asked, .* reached: met", card)
        assert json.loads((folder / "pruning_plan.json").read_text())["level"] == folder.name
    assert [m["branch"] for _, m in sorted(res.metrics["levels"].items())] == list(names)
    # hf-prune push finds the levels by their names (main: the least pruned), each plan says which level it holds
    assert level_folders([str(tmp_path / "out")]) == {n: tmp_path / "out" / n for n in names}
    assert primary_branch(None, sorted(names)) == names[0] == Path(res.folders[res.primary]).name
    (tmp_path / "out" / names[0]).rename(tmp_path / "renamed")
    with pytest.raises(PushArgumentError, match="push level folders as hf-prune named them"):
        level_folders([str(tmp_path / "renamed")])


def test_dry_run_prints_what_each_level_will_reach(base, capsys):
    dense = json.loads((base["base"] / "config.json").read_text())
    total = _saved_params(base["base"])
    asked = int(0.8 * total)
    code = main(["prune", str(base["base"]), "--dry-run", "--target-params", str(asked), "--target-kv-cache", "0.5",
                 "--context-length", "128", "--memory-batch-size", "4"])
    out = capsys.readouterr().out
    assert code == 0
    (row,) = [line for line in out.splitlines() if line.startswith("| params-")]
    name, params, _, memory, kv = (cell.strip() for cell in row.strip("|").split("|"))
    assert name == PruneConfig(target_params=asked, target_kv_cache=0.5).level_names()[0]
    assert float(params.removesuffix(" M")) == pytest.approx(asked / 1e6, abs=0.003)
    head_dim = dense["hidden_size"] // dense["num_attention_heads"]
    kv_left = _kv_heads(dense) // 2  # half the cache removed
    bound = float(params.removesuffix(" M")) * 1e6 * 4 + 4 * 128 * 2 * kv_left * head_dim * 4
    assert memory.startswith("<= ") and float(memory.split()[1]) * 1024 == pytest.approx(bound, rel=0.01)
    assert kv == ">= 50.0%"
    assert "memory at 128 tokens x 4, float32" in out


def test_targets_the_model_cannot_reach_are_refused_before_loading(base, tmp_path, monkeypatch, capsys):
    import hf_prune.loading

    monkeypatch.setattr(hf_prune.loading, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(PruningError, match="is not below the model's"):
        hf_prune.prune_and_push(str(base["base"]), calibration=base["calibration"], output_dir=tmp_path / "out",
                                target_params="10B", **FAST)
    with pytest.raises(PruningError, match="takes at least .* more than the level removes"):
        hf_prune.prune_and_push(str(base["base"]), calibration=base["calibration"], output_dir=tmp_path / "out",
                                target_sparsity=0.05, target_kv_cache=0.5, **FAST)
    assert not (tmp_path / "out").exists()
    assert main(["prune", str(base["base"]), "--target-memory", "12 parsecs", "--output-dir", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hf-prune: error: target_memory: not a memory size: '12 parsecs' (give e.g. 12GiB, 80GB, 512MiB or "
                   "a number of bytes)."]
