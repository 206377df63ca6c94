"""What only Qwen3 has: per-head q_norm / k_norm (one head wide, shared by all heads) kept whole, no q/k/v biases, an
explicit head_dim (16 here, against 64 / 8 = 8), the export formats that cannot hold it, and a whole job on a Qwen3
base. What holds for every family (slicing, caching, loading, stock export, the engine, compensation, recovery) is
tested on Qwen3 too, by the ``family`` fixture of those tests."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_tiny_base, tiny_qwen3
from transformers import AutoModelForCausalLM, Qwen3ForCausalLM

from hf_prune import PruningPlan, apply_plan
from hf_prune.errors import NotUniformError, UnsupportedModelError
from hf_prune.format import to_qwen2, to_qwen3
from hf_prune.modeling import PrunedQwen3ForCausalLM

# The modeling files ship in every checkpoint and run on the user's transformers: a deprecation is a failure.
pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

HEAD_DIM = 16
INPUT = torch.randint(3, 128, (2, 11), generator=torch.Generator().manual_seed(1))
# Layer 0 attention-free, layer 2 MLP-free, the rest pruned unevenly.
PLAN = {"layers": [
    {"query_heads": [], "mlp_channels": list(range(0, 96, 2))},
    {"query_heads": [4, 5, 6, 7]},
    {"query_heads": [0, 3, 5, 6], "mlp_channels": []},
    {"query_heads": [1, 6], "mlp_channels": list(range(30))},
]}
UNIFORM = {"layers": [{"query_heads": [2, 3, 6, 7], "mlp_channels": list(range(40))}] * 4}


def logits(model, ids=INPUT):
    with torch.no_grad():
        return model(ids).logits


def test_head_pruning_keeps_q_norm_and_k_norm_whole_and_attention_removal_drops_them():
    model = tiny_qwen3(seed=5)
    pruned = apply_plan(model, PruningPlan.from_dict(PLAN))
    state = pruned.state_dict()
    assert not any(k.startswith("model.layers.0.self_attn") for k in state)
    for idx in (1, 2, 3):
        dense, ours = model.model.layers[idx].self_attn, pruned.model.layers[idx].self_attn
        assert ours.q_proj.weight.shape == (len(PLAN["layers"][idx]["query_heads"]) * HEAD_DIM, 64)
        assert ours.q_proj.bias is None  # Qwen3: no q/k/v biases
        for name in ("q_norm", "k_norm"):
            assert torch.equal(getattr(ours, name).weight, getattr(dense, name).weight)
    # Layer 3 keeps heads 1 and 6: one per KV group, so k_proj holds both KV heads.
    assert pruned.model.layers[3].self_attn.k_proj.weight.shape == (2 * HEAD_DIM, 64)


def test_export_api_writes_stock_qwen3_and_refuses_the_deci_and_gguf_formats(tmp_path):
    import hf_prune
    from hf_prune.errors import ExportError

    pruned = apply_plan(tiny_qwen3(seed=2), PruningPlan.from_dict(UNIFORM))
    hf_prune.export(pruned, "qwen3", tmp_path / "q3")
    reloaded = Qwen3ForCausalLM.from_pretrained(tmp_path / "q3")
    torch.testing.assert_close(logits(reloaded), logits(pruned), rtol=0, atol=1e-6)
    for fmt in ("deci", "gguf", "qwen2"):  # q_norm / k_norm have no place in DeciLM or llama.cpp's deci graph
        with pytest.raises(ExportError, match=f"'{fmt}' does not apply to a 'pruned_qwen3' model.*qwen3"):
            hf_prune.export(pruned, fmt, tmp_path / fmt)
        assert not (tmp_path / fmt).exists()
    mixed = apply_plan(tiny_qwen3(seed=2), PruningPlan.from_dict(PLAN))
    with pytest.raises(NotUniformError, match="stock qwen3"):
        hf_prune.export(mixed, "qwen3", tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()


def test_export_refuses_mixed_shapes_and_the_other_family():
    model = tiny_qwen3(seed=2)
    with pytest.raises(NotUniformError, match="stock qwen3.*pruned_qwen3"):
        to_qwen3(apply_plan(model, PruningPlan.from_dict(PLAN)))
    with pytest.raises(UnsupportedModelError, match="use to_qwen3"):
        to_qwen2(apply_plan(model, PruningPlan.from_dict(UNIFORM)))


def test_gisp_run_end_to_end_gives_a_loadable_checkpoint(tmp_path):
    from hf_prune import prune_and_push

    base = make_tiny_base(tmp_path)  # a tokenizer and calibration / evaluation text (its model is Qwen2)
    folder = tmp_path / "qwen3"
    tiny_qwen3(vocab_size=320).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base["base"] / name, folder / name)
    res = prune_and_push(folder, target_sparsity=0.3, calibration=base["calibration"], evaluation=base["evaluation"],
                         method="gisp", steps=2, num_samples=8, seq_len=32, eval_seq_len=32, compensation="lsq",
                         compensation_samples=8, output_dir=tmp_path / "out", show_progress=False)
    level = res.folders[0.3]
    assert json.loads((level / "config.json").read_text())["model_type"] == "pruned_qwen3"
    assert {"README.md", "pruning_plan.json", "modeling_pruned_qwen3.py", "modeling_pruned_qwen2.py"} <= {
        p.name for p in level.iterdir()}
    loaded = AutoModelForCausalLM.from_pretrained(level)
    assert isinstance(loaded, PrunedQwen3ForCausalLM)
    # The checkpoint is the run's level exactly as PruneResult.apply rebuilds it from the dense model.
    dense = AutoModelForCausalLM.from_pretrained(folder).eval()
    applied = res.result.apply(dense, 0.3).state_dict()
    assert all(torch.equal(t, applied[k]) for k, t in loaded.state_dict().items())
    assert res.metrics["levels"][0.3]["perplexity"]
