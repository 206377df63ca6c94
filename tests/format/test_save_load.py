"""Both loading routes, the plugin (import hf_prune) and bundled remote code (hf_prune not installed), and the stock
export, for every model family (the ``family`` fixture)."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from conftest import MIXED_INPUT as INPUT
from conftest import MIXED_PLAN as PLAN
from conftest import REPO_ROOT, head_dim, pruned_classes, run_without_hf_prune, tiny_causal_lm
from safetensors.torch import load_file, save_file
from transformers import AutoModel, AutoModelForCausalLM

from hf_prune import PruningPlan, apply_plan
from hf_prune.format import to_qwen2, to_qwen3

# The modeling files ship in every checkpoint and run on the user's transformers: a deprecation is a failure.
pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

# The remote-code files of each family: a Qwen3 checkpoint also carries the Qwen2 files its own import.
SHIPPED = {"qwen2": ("configuration_pruned_qwen2.py", "modeling_pruned_qwen2.py"),
           "qwen3": ("configuration_pruned_qwen3.py", "modeling_pruned_qwen3.py", "configuration_pruned_qwen2.py",
                     "modeling_pruned_qwen2.py")}
TO_STOCK = {"qwen2": to_qwen2, "qwen3": to_qwen3}


@pytest.fixture
def saved(tmp_path, family):
    model = apply_plan(tiny_causal_lm(family, seed=7), PruningPlan.from_dict(PLAN))
    model.save_pretrained(tmp_path / "pruned")
    with torch.no_grad():
        logits = model(torch.tensor(INPUT)).logits
    return tmp_path / "pruned", logits


def test_checkpoint_files_are_self_contained(saved, family):
    path, _ = saved
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", *SHIPPED[family]} <= names
    assert not any(n.endswith((".bin", ".pt", ".pth")) for n in names)  # safetensors only
    config = json.loads((path / "config.json").read_text())
    kind, name = f"pruned_{family}", pruned_classes(family)[1].__name__.removesuffix("Model")
    assert config["model_type"] == kind
    assert config["auto_map"] == {
        "AutoConfig": f"configuration_{kind}.{name}Config",
        "AutoModel": f"modeling_{kind}.{name}Model",
        "AutoModelForCausalLM": f"modeling_{kind}.{name}ForCausalLM",
    }
    # The shipped files are the package's own modeling files, byte for byte (one source of truth), and import
    # nothing but the standard library, torch, transformers (with its huggingface_hub) and their siblings.
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers", "huggingface_hub", ""}
    for file in SHIPPED[family]:
        text = (path / file).read_text()
        assert text == (REPO_ROOT / "modeling" / file).read_text()
        for line in text.splitlines():
            if line.startswith(("import ", "from ")):
                assert line.split()[1].split(".")[0] in allowed, line


def test_plugin_load_gives_identical_logits(saved, family):
    path, logits = saved
    causal_lm, model_class, _ = pruned_classes(family)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert type(model) is causal_lm
    with torch.no_grad():
        assert torch.equal(model(torch.tensor(INPUT)).logits, logits)
    assert type(AutoModel.from_pretrained(path)) is model_class


def test_remote_code_load_without_hf_prune(saved, family):
    path, logits = saved
    torch.save(logits, path.parent / "expected.pt")
    out = run_without_hf_prune(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(path)!r}, trust_remote_code=True)
        assert type(model).__name__ == {pruned_classes(family)[0].__name__!r}, type(model)
        assert "hf_prune" not in type(model).__module__
        with torch.no_grad():
            logits = model(torch.tensor({INPUT})).logits
        expected = torch.load({str(path.parent / "expected.pt")!r})
        assert torch.equal(logits, expected), (logits - expected).abs().max()
        print("REMOTE-OK", type(model).__module__)
        """,
        cwd=path.parent,
    )
    assert "REMOTE-OK" in out


def test_uniform_export_loads_in_stock_transformers(tmp_path, family):
    dense = tiny_causal_lm(family, seed=2)
    model = apply_plan(dense, PruningPlan.from_dict({"layers": [{"query_heads": [0, 4], "mlp_channels": list(range(24))}] * 4}))
    stock = TO_STOCK[family](model)
    assert type(stock) is type(dense)
    stock.save_pretrained(tmp_path / "stock")
    config = json.loads((tmp_path / "stock" / "config.json").read_text())
    assert config["model_type"] == family and "auto_map" not in config
    assert (config["head_dim"], config["num_attention_heads"], config["intermediate_size"]) == (
        head_dim(dense.config), 2, 24)
    assert not any(p.suffix == ".py" for p in (tmp_path / "stock").iterdir())
    with torch.no_grad():
        torch.save(model(torch.tensor(INPUT)).logits, tmp_path / "expected.pt")
    out = run_without_hf_prune(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'stock')!r})
        assert type(model).__name__ == {type(dense).__name__!r}
        with torch.no_grad():
            torch.testing.assert_close(model(torch.tensor({INPUT})).logits, torch.load({str(tmp_path / 'expected.pt')!r}), rtol=0, atol=1e-6)
        print("STOCK-OK")
        """,
        cwd=tmp_path,
    )
    assert "STOCK-OK" in out


def test_weights_that_disagree_with_the_config_are_refused(saved):
    path, _ = saved
    weights = load_file(path / "model.safetensors")
    weights["model.layers.3.mlp.gate_proj.weight"] = weights["model.layers.3.mlp.gate_proj.weight"][:10]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"layer 3: model.layers.3.mlp.gate_proj.weight is \[10, 64\] in the weights but \[50, 64\]"):
        AutoModelForCausalLM.from_pretrained(path)


def _drop_a_shard_consistently(path) -> list[str]:
    """Re-save ``path`` in several shards, delete one and edit the index to match; returns the tensors lost."""
    model = AutoModelForCausalLM.from_pretrained(path)
    (path / "model.safetensors").unlink()
    model.save_pretrained(path, max_shard_size="20KB")
    index_file = path / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    shard = sorted(set(index["weight_map"].values()))[1]
    lost = sorted(k for k, v in index["weight_map"].items() if v == shard)
    index["weight_map"] = {k: v for k, v in index["weight_map"].items() if v != shard}
    index_file.write_text(json.dumps(index))
    (path / shard).unlink()
    return lost


def test_weights_missing_from_a_consistently_edited_index_are_refused(saved):
    path, _ = saved
    lost = _drop_a_shard_consistently(path)
    with pytest.raises(ValueError, match=r"lacks \d+ weight tensor\(s\).*" + re.escape(lost[0])):
        AutoModelForCausalLM.from_pretrained(path)
    out = run_without_hf_prune(
        f"""
        from transformers import AutoModelForCausalLM
        try:
            AutoModelForCausalLM.from_pretrained({str(path)!r}, trust_remote_code=True)
        except ValueError as err:
            print("REFUSED", err)
        """,
        cwd=path.parent,
    )
    assert "REFUSED" in out and lost[0] in out


def test_device_map_auto_and_dtype(saved):
    path, logits = saved
    model = AutoModelForCausalLM.from_pretrained(path, device_map="auto", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    with torch.no_grad():
        out = model(torch.tensor(INPUT)).logits.float()
    assert (out - logits).abs().max().item() < 0.05 * logits.abs().max().item()
    # When memory forces a split, accelerate never cuts through a decoder layer (_no_split_modules).
    from accelerate import infer_auto_device_map

    layer_bytes = sum(p.numel() * 2 for p in model.model.layers[1].parameters())
    device_map = infer_auto_device_map(model, max_memory={"cpu": int(2.5 * layer_bytes), "disk": 10**12},
                                       no_split_module_classes=model._no_split_modules)
    assert "disk" in device_map.values()
    assert not [k for k in device_map if k.startswith("model.layers.") and k.count(".") > 2]
