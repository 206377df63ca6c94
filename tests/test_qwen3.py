"""pruned_qwen3 on tiny random Qwen3ForCausalLM models: slicing, modeling, both loading routes, stock export, the
engine and a whole gisp run. Qwen3 differs from Qwen2 by per-head q_norm / k_norm (one head wide, shared by all heads),
no q/k/v biases, and an explicit head_dim that is not hidden_size / heads (here 16, against 64 / 8 = 8)."""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from conftest import run_without_hf_prune
from test_compensation import _inputs, _ridge
from test_modeling import left_padded_batch, uncached_greedy
from test_slicing import random_plan
from transformers import AutoModel, AutoModelForCausalLM, Qwen3Config, Qwen3ForCausalLM

from hf_prune import PruningPlan, apply_plan, compensate, prune
from hf_prune.errors import NotUniformError, UnsupportedModelError
from hf_prune.format import to_qwen2
from hf_prune.modeling import PrunedQwen3Config, PrunedQwen3ForCausalLM, PrunedQwen3Model
from hf_prune.engine import decoder_params
from hf_prune.engine.memory import ModelDims
from hf_prune.format import to_qwen3

# The modeling files ship in every checkpoint and run on the user's transformers: a deprecation is a failure.
pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

HEAD_DIM = 16
INPUT = torch.randint(3, 128, (2, 11), generator=torch.Generator().manual_seed(1))
# Layer 0 attention-free (the cache trap), layer 2 MLP-free, the rest pruned unevenly.
PLAN = {"layers": [
    {"query_heads": [], "mlp_channels": list(range(0, 96, 2))},
    {"query_heads": [4, 5, 6, 7]},
    {"query_heads": [0, 3, 5, 6], "mlp_channels": []},
    {"query_heads": [1, 6], "mlp_channels": list(range(30))},
]}
UNIFORM = {"layers": [{"query_heads": [2, 3, 6, 7], "mlp_channels": list(range(40))}] * 4}


def tiny_qwen3_config(**overrides) -> Qwen3Config:
    """8 heads in 2 KV groups, head_dim 16 != hidden 64 / 8 heads, 4 layers."""
    values = dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, head_dim=HEAD_DIM, max_position_embeddings=256, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, pad_token_id=0, eos_token_id=1,
        bos_token_id=2,
    )
    values.update(overrides)
    return Qwen3Config(**values)


def tiny_qwen3(seed: int = 0, **overrides) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_qwen3_config(**overrides)).eval()
    # Random init leaves q_norm / k_norm at 1; make them differ per dimension so keeping them whole is tested.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.normal_(1, 0.3)
            layer.self_attn.k_norm.weight.normal_(1, 0.3)
    return model


def masked_reference(model, plan_dict):
    """The original with removed query heads' o_proj columns and removed channels' down_proj columns zeroed.

    Built independently of the slicing code (head_dim read from the Qwen3 config, not hidden / heads).
    """
    ref = copy.deepcopy(model)
    heads, width = model.config.num_attention_heads, model.config.intermediate_size
    with torch.no_grad():
        for layer, keep in zip(ref.model.layers, plan_dict["layers"]):
            for h in set(range(heads)) - set(keep.get("query_heads", range(heads))):
                layer.self_attn.o_proj.weight[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] = 0
            for c in set(range(width)) - set(keep.get("mlp_channels", range(width))):
                layer.mlp.down_proj.weight[:, c] = 0
    return ref


def logits(model, ids=INPUT):
    with torch.no_grad():
        return model(ids).logits


# ---- slicing ------------------------------------------------------------------------------------------------
def test_keep_all_plan_equals_stock_qwen3():
    model = tiny_qwen3()
    pruned = apply_plan(model, PruningPlan.from_dict({"layers": [{}] * 4}))
    assert isinstance(pruned, PrunedQwen3ForCausalLM) and pruned.config.model_type == "pruned_qwen3"
    assert pruned.config.head_dim == HEAD_DIM
    assert (logits(pruned) - logits(model)).abs().max().item() <= 1e-5


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("tied", [False, True])
def test_random_plans_equal_the_masked_original(seed, tied):
    model = tiny_qwen3(seed=seed, tie_word_embeddings=tied)
    plan_dict = random_plan(seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = apply_plan(model, PruningPlan.from_dict(plan_dict))
    assert (logits(pruned) - logits(masked_reference(model, plan_dict))).abs().max().item() <= 1e-4, plan_dict
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


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


# ---- the modeling: caching, attribute parity -----------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_cached_generation_equals_uncached_decoding(attn):
    pruned = apply_plan(tiny_qwen3(seed=3), PruningPlan.from_dict(PLAN))
    pruned.set_attn_implementation(attn)
    ids, mask = left_padded_batch()
    generated = pruned.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                pad_token_id=0, eos_token_id=None)
    assert torch.equal(generated, uncached_greedy(pruned, ids, mask, 12))


def test_model_sets_every_attribute_the_stock_qwen3_model_sets():
    from transformers.models.qwen3.modeling_qwen3 import Qwen3Model

    config = tiny_qwen3_config()
    data = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "transformers_version")}
    pruned = PrunedQwen3ForCausalLM(PrunedQwen3Config(**data))
    for stock, ours in ((Qwen3Model(config), pruned.model), (Qwen3ForCausalLM(config), pruned)):
        assert not set(vars(stock)) - set(vars(ours)), type(ours).__name__
        assert set(stock._modules) <= set(ours._modules)
    assert isinstance(pruned.model, PrunedQwen3Model) and set(pruned._no_split_modules) == {"PrunedQwen3DecoderLayer"}


# ---- both loading routes --------------------------------------------------------------------------------------
@pytest.fixture
def saved(tmp_path):
    model = apply_plan(tiny_qwen3(seed=7), PruningPlan.from_dict(PLAN))
    model.save_pretrained(tmp_path / "pruned")
    return tmp_path / "pruned", logits(model)


def test_checkpoint_carries_the_qwen3_files_and_the_qwen2_ones_they_import(saved):
    path, _ = saved
    shipped = ("configuration_pruned_qwen3.py", "modeling_pruned_qwen3.py", "configuration_pruned_qwen2.py",
               "modeling_pruned_qwen2.py")
    assert set(shipped) <= {p.name for p in path.iterdir()}
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "pruned_qwen3" and config["head_dim"] == HEAD_DIM
    assert config["auto_map"] == {
        "AutoConfig": "configuration_pruned_qwen3.PrunedQwen3Config",
        "AutoModel": "modeling_pruned_qwen3.PrunedQwen3Model",
        "AutoModelForCausalLM": "modeling_pruned_qwen3.PrunedQwen3ForCausalLM",
    }
    import hf_prune.modeling

    source = Path(hf_prune.modeling.__file__).parent
    allowed = set(sys.stdlib_module_names) | {"torch", "transformers", "huggingface_hub", ""}
    for name in shipped:  # byte for byte the package's files, importing nothing but their siblings and transformers
        text = (path / name).read_text()
        assert text == (source / name).read_text()
        for line in text.splitlines():
            if line.startswith(("import ", "from ")):
                assert line.split()[1].split(".")[0] in allowed, line


def test_plugin_load_gives_identical_logits(saved):
    path, expected = saved
    model = AutoModelForCausalLM.from_pretrained(path)
    assert isinstance(model, PrunedQwen3ForCausalLM)
    assert torch.equal(logits(model), expected)
    assert isinstance(AutoModel.from_pretrained(path), PrunedQwen3Model)


def test_remote_code_load_without_hf_prune(saved):
    path, expected = saved
    torch.save(expected, path.parent / "expected.pt")
    out = run_without_hf_prune(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(path)!r}, trust_remote_code=True)
        assert type(model).__name__ == "PrunedQwen3ForCausalLM", type(model)
        assert "hf_prune" not in type(model).__module__
        with torch.no_grad():
            logits = model(torch.tensor({INPUT.tolist()})).logits
        expected = torch.load({str(path.parent / "expected.pt")!r})
        assert torch.equal(logits, expected), (logits - expected).abs().max()
        print("REMOTE-OK")
        """,
        cwd=path.parent,
    )
    assert "REMOTE-OK" in out


# ---- stock export ---------------------------------------------------------------------------------------------
def test_uniform_model_exports_as_stock_qwen3_that_plain_transformers_loads(tmp_path):
    pruned = apply_plan(tiny_qwen3(seed=2), PruningPlan.from_dict(UNIFORM))
    stock = to_qwen3(pruned)
    assert type(stock) is Qwen3ForCausalLM and stock.config.model_type == "qwen3"
    c = stock.config
    assert (c.head_dim, c.num_attention_heads, c.intermediate_size) == (HEAD_DIM, 4, 40)
    torch.testing.assert_close(logits(stock), logits(pruned), rtol=0, atol=1e-6)
    stock.save_pretrained(tmp_path / "stock")
    assert not any(p.suffix == ".py" for p in (tmp_path / "stock").iterdir())
    torch.save(logits(pruned), tmp_path / "expected.pt")
    out = run_without_hf_prune(
        f"""
        import torch
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'stock')!r})
        assert type(model).__name__ == "Qwen3ForCausalLM"
        with torch.no_grad():
            torch.testing.assert_close(model(torch.tensor({INPUT.tolist()})).logits,
                                       torch.load({str(tmp_path / 'expected.pt')!r}), rtol=0, atol=1e-6)
        print("STOCK-OK")
        """,
        cwd=tmp_path,
    )
    assert "STOCK-OK" in out


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


# ---- the engine ------------------------------------------------------------------------------------------------
CALIB = torch.randint(3, 128, (12, 24), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", ["gisp", "wanda-sp"])
def test_engine_accounts_sparsity_as_the_sliced_weights_measure(method):
    model = tiny_qwen3(seed=11)
    result = prune(model, None, CALIB, [0.2, 0.4], method=method, steps=2 if method == "gisp" else None,
                   show_progress=False)
    dense = decoder_params(model)
    for level, plan in result.plans.items():
        pruned = apply_plan(model, plan)
        measured = 1 - decoder_params(pruned) / dense  # counted from the weights, q_norm / k_norm included
        assert result.sparsity[level] == pytest.approx(measured, abs=1e-9)
        assert abs(measured - level) <= 0.005, (method, level, measured)


def test_memory_plan_counts_the_parameters_of_a_qwen3_model():
    model = tiny_qwen3()
    pruned = apply_plan(model, PruningPlan.from_dict(PLAN))
    for m in (model, pruned):
        dims = ModelDims.from_config(m.config.to_dict(), "float32")
        assert dims.total_params() == sum(p.numel() for p in m.parameters())


def test_compensation_dense_target_equals_lstsq():
    model = tiny_qwen3(seed=4, num_hidden_layers=2).double()
    plan = PruningPlan.from_dict({"layers": [
        {"query_heads": [0, 1, 4, 6], "mlp_channels": list(range(0, 96, 2))},
        {"query_heads": [2, 3, 5, 7], "mlp_channels": list(range(40))},
    ]})
    calib = torch.randint(3, 128, (16, 32), generator=torch.Generator().manual_seed(0))
    out = compensate(model, plan, calib, compensation_target="dense", compensation_damping=0.05,
                     compensation_samples=16, show_progress=False)
    assert isinstance(out, PrunedQwen3ForCausalLM)
    for dense, pruned, keep in zip(model.model.layers, out.model.layers, plan.layers):
        cols = [h * HEAD_DIM + i for h in keep.query_heads for i in range(HEAD_DIM)]
        x = _inputs(dense.self_attn.o_proj, lambda: model(calib))
        expected = _ridge(x, x[:, cols], dense.self_attn.o_proj.weight, 0.05)
        torch.testing.assert_close(pruned.self_attn.o_proj.weight, expected, rtol=1e-6, atol=1e-9)
        x = _inputs(dense.mlp.down_proj, lambda: model(calib))
        expected = _ridge(x, x[:, keep.mlp_channels], dense.mlp.down_proj.weight, 0.05)
        torch.testing.assert_close(pruned.mlp.down_proj.weight, expected, rtol=1e-6, atol=1e-9)


def test_gisp_run_end_to_end_gives_a_loadable_checkpoint(tmp_path):
    try:
        from tests.test_push import make_tiny_base
    except ImportError:  # pragma: no cover
        from test_push import make_tiny_base
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


def test_recovery_lowers_the_kl_to_the_teacher_and_lora_merges_back():
    from test_recovery import SEQ, _kl, _options, _tokens

    from hf_prune.recovery import recover

    teacher = tiny_qwen3(seed=0, initializer_range=0.1)
    student = apply_plan(teacher, PruningPlan.from_dict(PLAN))
    held_out = _tokens(16, seed=99)
    before = _kl(student, teacher, held_out)
    result = recover(student, teacher, None, _tokens(48, seed=5), _options(), show_progress=False)
    assert result.model is student and _kl(student, teacher, held_out) < 0.8 * before
    shapes = {k: v.shape for k, v in student.state_dict().items()}
    merged = recover(student, teacher, None, _tokens(16, seed=6), _options(lora=True, lora_r=4, tokens=16 * SEQ),
                     show_progress=False).model
    assert type(merged) is PrunedQwen3ForCausalLM and {k: v.shape for k, v in merged.state_dict().items()} == shapes
