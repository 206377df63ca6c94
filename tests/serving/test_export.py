"""Serving exports (deci for vLLM / SGLang, gguf for llama.cpp, stock qwen2), each checked against an independent
forward pass that reads only what was exported; the engine option that makes a run deci-exportable; refusals."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_qwen2
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast, Qwen2ForCausalLM

import hf_prune
from hf_prune import PruningPlan, apply_plan
from hf_prune.errors import ExportError, NotUniformError, OutputExistsError, PruningError
from hf_prune.format import LayerPlan

IDS = torch.randint(3, 128, (2, 11), generator=torch.Generator().manual_seed(3))


# ---- models --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def deci_model():
    """Query heads uniform (4), KV heads 2 / 1, MLP widths 48 / 256 / 30 / 512, an attention-free and an MLP-free
    layer: everything DeciLM expresses. Widths 256 and 512 also get ``ffn_mult`` (SGLang's only width key)."""
    base = tiny_qwen2(seed=5, num_hidden_layers=5, intermediate_size=512)
    plan = PruningPlan(layers=[
        LayerPlan(query_heads=[0, 1, 4, 5], mlp_channels=list(range(0, 96, 2))),
        LayerPlan(query_heads=[4, 5, 6, 7], mlp_channels=list(range(100, 356))),
        LayerPlan(query_heads=[], mlp_channels=list(range(30))),
        LayerPlan(query_heads=[0, 2, 5, 7], mlp_channels=[]),
        LayerPlan(query_heads=[0, 1, 2, 3], mlp_channels=list(range(512))),
    ])
    return apply_plan(base, plan)


@pytest.fixture(scope="module")
def gguf_model():
    """Per-layer query heads (6 / 2 / 0 / 8), KV heads, widths; an attention-free and an MLP-free layer."""
    base = tiny_qwen2(seed=6, num_hidden_layers=4, vocab_size=320)
    plan = PruningPlan(layers=[
        LayerPlan(query_heads=[0, 1, 2, 4, 5, 6], mlp_channels=list(range(0, 96, 3))),
        LayerPlan(query_heads=[5, 7], mlp_channels=[]),
        LayerPlan(query_heads=[], mlp_channels=list(range(50))),
        LayerPlan(query_heads=list(range(8)), mlp_channels=list(range(96))),
    ])
    return apply_plan(base, plan)


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer trained here (vocabulary smaller than the model's: padding rows are tested)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([Path(__file__).read_text(encoding="utf-8")] * 2, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def logits_of(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(ids).logits


# ---- an independent DeciLM forward, following vLLM's nemotron_nas.py layer by layer ----------------------------
def rms_norm(x, weight, eps, residual=None):
    """vLLM's RMSNorm: with a residual, add it first and return (normed, new residual)."""
    if residual is not None:
        x = x + residual
        residual = x
    out = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight
    return out if residual is None else (out, residual)


def rope_neox(x, positions, theta):
    """Rotate the two halves of each head (vLLM's get_rope with is_neox_style=True)."""
    d = x.shape[-1]
    inv = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = positions[:, None].double() * inv[None]
    cos, sin = ang.cos().float()[:, None, :], ang.sin().float()[:, None, :]  # [T, 1, d/2]: every head
    a, b = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


def causal_attention(q, k, v):
    """q: [T, H, d], k/v: [T, KV, d] -> [T, H * d] (GQA: query head h reads KV head h // (H / KV))."""
    T, H, d = q.shape
    k = k.repeat_interleave(H // k.shape[1], 1)
    v = v.repeat_interleave(H // v.shape[1], 1)
    scores = torch.einsum("thd,shd->hts", q, k) / math.sqrt(d)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    return torch.einsum("hts,shd->thd", scores.softmax(-1), v).reshape(T, H * d)


def decilm_reference(folder: Path, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a DeciLM checkpoint from its config.json and safetensors alone, as vLLM computes them."""
    cfg = json.loads((folder / "config.json").read_text())
    w = {}
    for file in sorted(folder.glob("*.safetensors")):
        w.update(load_file(file))
    hidden, heads, head_dim = cfg["hidden_size"], cfg["num_attention_heads"], cfg["head_dim"]
    qkv_bias = cfg.get("qkv_bias", cfg.get("attention_bias", False))
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]
    out = []
    for seq in ids:
        positions = torch.arange(len(seq))
        x, residual = w["model.embed_tokens.weight"][seq], None
        for i, block in enumerate(cfg["block_configs"]):
            p = f"model.layers.{i}."
            if not block["attention"]["no_op"]:
                kv_heads = heads // block["attention"]["n_heads_in_group"]
                if residual is None:
                    residual, h = x, rms_norm(x, w[p + "input_layernorm.weight"], eps)
                else:
                    h, residual = rms_norm(x, w[p + "input_layernorm.weight"], eps, residual)

                def proj(name, n):
                    bias = w[p + f"self_attn.{name}.bias"] if qkv_bias else None
                    return F.linear(h, w[p + f"self_attn.{name}.weight"], bias).view(-1, n, head_dim)

                q = rope_neox(proj("q_proj", heads), positions, theta)
                k = rope_neox(proj("k_proj", kv_heads), positions, theta)
                x = F.linear(causal_attention(q, k, proj("v_proj", kv_heads)), w[p + "self_attn.o_proj.weight"])
            if not block["ffn"]["no_op"]:
                ffn = block["ffn"]
                if "ffn_mult" in ffn:  # vLLM: hasattr(ffn, "ffn_mult") first
                    width = int(2 * ffn["ffn_mult"] * hidden / 3)
                    width = width if width % 256 == 0 else width + 256 - width % 256
                else:
                    width = ffn["intermediate_size"]
                h, residual = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps, residual)
                gate, up = w[p + "mlp.gate_proj.weight"], w[p + "mlp.up_proj.weight"]
                assert gate.shape[0] == up.shape[0] == width, (i, gate.shape, width)
                x = F.linear(F.silu(F.linear(h, gate)) * F.linear(h, up), w[p + "mlp.down_proj.weight"])
        x, _ = rms_norm(x, w["model.norm.weight"], eps, residual)
        head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
        out.append(F.linear(x, head))
    return torch.stack(out)


def test_deci_export_computes_what_the_pruned_model_computes(deci_model, tmp_path):
    out = hf_prune.export(deci_model, "deci", tmp_path / "deci")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["DeciLMForCausalLM"] and cfg["model_type"] == "nemotron-nas"
    assert cfg["num_attention_heads"] == 4 and cfg["qkv_bias"] is True and cfg["attention_bias"] is False
    blocks = cfg["block_configs"]
    assert [b["attention"].get("n_heads_in_group") for b in blocks] == [2, 4, None, 2, 4]
    assert [b["attention"]["no_op"] for b in blocks] == [False, False, True, False, False]
    assert [b["ffn"].get("intermediate_size") for b in blocks] == [48, 256, 30, None, 512]
    assert ["ffn_mult" in b["ffn"] for b in blocks] == [False, True, False, False, True]
    torch.testing.assert_close(decilm_reference(out, IDS), logits_of(deci_model), atol=2e-5, rtol=1e-4)


def test_deci_config_loads_with_the_shipped_code(deci_model, tmp_path):
    out = hf_prune.export(deci_model, "deci", tmp_path / "deci")
    config = AutoConfig.from_pretrained(out, trust_remote_code=True)
    assert config.model_type == "nemotron-nas" and config.qkv_bias is True and config.head_dim == 8
    assert config.block_configs[0].attention.n_heads_in_group == 2 and config.block_configs[2].attention.no_op
    # vLLM picks the width key with hasattr: ffn_mult only where it maps back exactly.
    assert not hasattr(config.block_configs[0].ffn, "ffn_mult") and hasattr(config.block_configs[1].ffn, "ffn_mult")
    assert json.loads(config.to_json_string())["block_configs"] == json.loads((out / "config.json").read_text())["block_configs"]


def test_ffn_mult_maps_back_to_the_width():
    from hf_prune.serving.to_deci import ffn_mult_for

    for hidden in (64, 896, 1536, 3584, 4096, 5120, 8192):
        for width in range(256, 8 * hidden, 256):
            mult = ffn_mult_for(width, hidden)
            if mult is not None:
                got = int(2 * mult * hidden / 3)
                assert (got if got % 256 == 0 else got + 256 - got % 256) == width, (hidden, width, mult)
    assert ffn_mult_for(4864, 896) is not None and ffn_mult_for(100, 64) is None


def test_deci_refuses_per_layer_query_heads_before_loading_weights(gguf_model, tmp_path, monkeypatch):
    folder = tmp_path / "pruned"
    gguf_model.save_pretrained(folder)
    import hf_prune.loading

    monkeypatch.setattr(hf_prune.loading, "load_model", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(NotUniformError, match=r"one query-head count .* \[2, 6, 8\] query heads.*uniform_heads"):
        hf_prune.export(folder, "deci", tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ---- an independent GGUF forward: llama.cpp's deci graph on the tensors read back ------------------------------
def field(reader, key):
    value = reader.fields[key].contents()
    return value


def rope_normal(x, positions, theta):
    """llama.cpp's RoPE "normal" mode: rotate adjacent pairs (2i, 2i+1) of each head."""
    d = x.shape[-1]
    inv = theta ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    ang = positions[:, None] * inv[None]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = a * cos - b * sin, a * sin + b * cos
    return out


def np_rms(x, weight, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def gguf_reference(path: Path, ids: np.ndarray) -> np.ndarray:
    """Logits of ``path`` computed from the GGUF file alone, as llama.cpp's ``deci`` graph computes them."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    assert field(reader, "general.architecture") == "deci"
    t = {tensor.name: np.asarray(tensor.data, dtype=np.float64) for tensor in reader.tensors}
    heads, kv_heads = field(reader, "deci.attention.head_count"), field(reader, "deci.attention.head_count_kv")
    head_dim, eps = field(reader, "deci.attention.key_length"), field(reader, "deci.attention.layer_norm_rms_epsilon")
    theta = field(reader, "deci.rope.freq_base")
    out = []
    for seq in ids:
        x, T = t["token_embd.weight"][seq], len(seq)
        for i in range(field(reader, "deci.block_count")):
            p = f"blk.{i}."
            if heads[i]:
                h = np_rms(x, t[p + "attn_norm.weight"], eps)
                proj = {n: h @ t[p + f"attn_{n}.weight"].T + t.get(p + f"attn_{n}.bias", 0) for n in "qkv"}
                q = rope_normal(proj["q"].reshape(T, heads[i], head_dim), np.arange(T), theta)
                k = rope_normal(proj["k"].reshape(T, kv_heads[i], head_dim), np.arange(T), theta)
                v = proj["v"].reshape(T, kv_heads[i], head_dim)
                group = heads[i] // kv_heads[i]
                k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
                s = np.einsum("thd,shd->hts", q, k) / np.sqrt(head_dim) + np.triu(np.full((T, T), -np.inf), 1)
                s = np.exp(s - s.max(-1, keepdims=True))
                a = np.einsum("hts,shd->thd", s / s.sum(-1, keepdims=True), v).reshape(T, -1)
                x = x + a @ t[p + "attn_output.weight"].T
            h = np_rms(x, t[p + "ffn_norm.weight"], eps)
            gate, up = h @ t[p + "ffn_gate.weight"].T, h @ t[p + "ffn_up.weight"].T
            x = x + (gate / (1 + np.exp(-gate)) * up) @ t[p + "ffn_down.weight"].T
        x = np_rms(x, t["output_norm.weight"], eps)
        out.append(x @ t.get("output.weight", t["token_embd.weight"]).T)
    return np.stack(out)


def test_gguf_export_computes_what_the_pruned_model_computes(gguf_model, tokenizer, tmp_path):
    from gguf import GGUFReader

    out = hf_prune.export(gguf_model, "gguf", tmp_path / "gguf", tokenizer=tokenizer)
    reader = GGUFReader(out / "model.gguf")
    assert field(reader, "deci.attention.head_count") == [6, 2, 0, 8]
    assert field(reader, "deci.attention.head_count_kv") == [2, 1, 0, 2]
    assert field(reader, "deci.feed_forward_length") == [32, 32, 50, 96]  # layer 1's MLP: the all-zero one
    assert not any(tensor.name.startswith("blk.2.attn") for tensor in reader.tensors)
    ids = IDS.clamp(max=299)
    np.testing.assert_allclose(gguf_reference(out / "model.gguf", ids.numpy()), logits_of(gguf_model, ids).numpy(),
                               atol=2e-5, rtol=1e-4)


def test_gguf_tokenizer_keys(gguf_model, tokenizer, tmp_path):
    from gguf import GGUFReader

    reader = GGUFReader(hf_prune.export(gguf_model, "gguf", tmp_path / "gguf", tokenizer=tokenizer) / "model.gguf")
    tokens, types = field(reader, "tokenizer.ggml.tokens"), field(reader, "tokenizer.ggml.token_type")
    assert len(tokens) == 320 and tokens[:300] == tokenizer.convert_ids_to_tokens(list(range(300)))
    assert tokens[300] == "[PAD300]" and types[300] == 5 and types[tokenizer.eos_token_id] == 3
    assert field(reader, "tokenizer.ggml.model") == "gpt2" and field(reader, "tokenizer.ggml.pre") == "qwen2"
    assert field(reader, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id
    assert len(field(reader, "tokenizer.ggml.merges")) == len(json.loads(tokenizer.backend_tokenizer.to_str())["model"]["merges"])


def test_gguf_f16_is_close(gguf_model, tokenizer, tmp_path):
    out = hf_prune.export(gguf_model, "gguf", tmp_path / "gguf", tokenizer=tokenizer, dtype="f16")
    ids = IDS.clamp(max=299)
    np.testing.assert_allclose(gguf_reference(out / "model.gguf", ids.numpy()), logits_of(gguf_model, ids).numpy(),
                               atol=5e-3, rtol=1e-2)


@pytest.mark.skipif("llama_cpp" not in sys.modules and __import__("importlib").util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (opt-in: it builds from source in about 15 minutes)")
def test_gguf_runs_in_llama_cpp(gguf_model, tokenizer, tmp_path):
    import llama_cpp

    out = hf_prune.export(gguf_model, "gguf", tmp_path / "gguf", tokenizer=tokenizer, dtype="f32")
    # f32 KV cache and no flash attention: the settings under which llama.cpp matched a numpy forward to ~2e-6.
    llm = llama_cpp.Llama(str(out / "model.gguf"), logits_all=True, n_ctx=64, type_k=0, type_v=0, flash_attn=False,
                          verbose=False)
    ids = IDS[0].clamp(max=299)
    llm.eval(ids.tolist())
    got = np.array(llm.scores[: len(ids)])
    np.testing.assert_allclose(got, logits_of(gguf_model, ids[None])[0].numpy(), atol=1e-4, rtol=1e-3)


@pytest.mark.real
@pytest.mark.skipif(__import__("importlib").util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python is not installed (opt-in: it builds from source in about 15 minutes)")
def test_gguf_of_a_pruned_smollm2_runs_in_llama_cpp(smollm2, tmp_path):
    """Real weights, per-layer heads / KV heads / widths: llama.cpp's logits on real text equal the pruned model's."""
    import llama_cpp

    model, tok = smollm2
    g = torch.Generator().manual_seed(0)
    heads, kv = model.config.num_attention_heads, model.config.num_key_value_heads
    group = heads // kv
    layers = []
    for i in range(model.config.num_hidden_layers):
        keep_kv = sorted(torch.randperm(kv, generator=g)[: 1 + i % kv].tolist())
        width = model.config.intermediate_size // (1 + i % 3)
        layers.append(LayerPlan(query_heads=[k * group + j for k in keep_kv for j in range(group)],
                                mlp_channels=sorted(torch.randperm(model.config.intermediate_size, generator=g)[:width].tolist())))
    pruned = apply_plan(model, PruningPlan(layers=layers))
    out = hf_prune.export(pruned, "gguf", tmp_path / "gguf", tokenizer=tok, dtype="f32")
    ids = tok("The capital of France is Paris, and the capital of Italy is", return_tensors="pt").input_ids
    llm = llama_cpp.Llama(str(out / "model.gguf"), logits_all=True, n_ctx=64, type_k=0, type_v=0, flash_attn=False,
                          verbose=False)
    llm.eval(ids[0].tolist())
    got = np.array(llm.scores[: ids.shape[1]])
    want = logits_of(pruned, ids)[0].numpy()
    np.testing.assert_allclose(got, want, atol=2e-3, rtol=1e-3)
    assert (got.argmax(-1) == want.argmax(-1)).all()


# ---- stock qwen2, from a folder ----------------------------------------------------------------------------------
def test_qwen2_export_from_a_saved_folder(tmp_path):
    base = tiny_qwen2(seed=7)
    plan = PruningPlan(layers=[LayerPlan(query_heads=[0, 1, 4, 5], mlp_channels=list(range(i, i + 40)))
                               for i in range(4)])
    pruned = apply_plan(base, plan)
    pruned.save_pretrained(tmp_path / "pruned")
    out = hf_prune.export(tmp_path / "pruned", "qwen2", tmp_path / "qwen2")
    assert json.loads((out / "config.json").read_text())["model_type"] == "qwen2"
    stock = AutoModelForCausalLM.from_pretrained(out)
    assert type(stock) is Qwen2ForCausalLM
    torch.testing.assert_close(logits_of(stock), logits_of(pruned))


# ---- refusals ----------------------------------------------------------------------------------------------------
def test_refusals_name_what_is_wrong(deci_model, gguf_model, tokenizer, tmp_path):
    with pytest.raises(ExportError, match="'qwen3' does not apply to a 'pruned_qwen2' model.*qwen2, deci, gguf"):
        hf_prune.export(deci_model, "qwen3", tmp_path / "a")
    with pytest.raises(ExportError, match="unknown export format 'onnx'"):
        hf_prune.export(deci_model, "onnx", tmp_path / "a")
    with pytest.raises(NotUniformError, match="one shape exports as stock qwen2"):
        hf_prune.export(deci_model, "qwen2", tmp_path / "a")
    with pytest.raises(ExportError, match="only the gguf export takes a dtype"):
        hf_prune.export(deci_model, "deci", tmp_path / "a", dtype="f16")
    with pytest.raises(ExportError, match="embeds the tokenizer"):
        hf_prune.export(gguf_model, "gguf", tmp_path / "a")
    no_attention_first = apply_plan(tiny_qwen2(), PruningPlan(layers=[
        LayerPlan(query_heads=[], mlp_channels=list(range(96))), *[LayerPlan() for _ in range(3)]]))
    for fmt in ("deci", "gguf"):
        with pytest.raises(ExportError, match="layer 0 has no attention sublayer"):
            hf_prune.export(no_attention_first, fmt, tmp_path / "a", tokenizer=tokenizer)
    assert not (tmp_path / "a").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(OutputExistsError):
        hf_prune.export(deci_model, "deci", tmp_path / "full")


def test_a_failed_export_leaves_no_folder(gguf_model, tokenizer, tmp_path, monkeypatch):
    import hf_prune.serving.to_gguf as to_gguf

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(to_gguf, "_layer_tensors", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        hf_prune.export(gguf_model, "gguf", tmp_path / "out", tokenizer=tokenizer)
    assert list(tmp_path.iterdir()) == []


# ---- the engine option: uniform query heads ----------------------------------------------------------------------
CALIB = torch.randint(3, 128, (8, 16), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method,kwargs", [("gisp", {"steps": 2, "attention_weight": 0.2}),
                                           ("gisp", {"steps": 1, "attention_weight": 0.05, "min_heads": 2}),
                                           ("llm-pruner", {})])
def test_uniform_heads_keeps_one_query_head_count(method, kwargs, tmp_path):
    model = tiny_qwen2(seed=11, intermediate_size=96)
    result = hf_prune.prune(model, None, CALIB, [0.3, 0.5], method=method, uniform_heads=True, compensation=None,
                            show_progress=False, **kwargs)
    removed_heads = False
    for level, plan in result.plans.items():
        assert abs(result.sparsity[level] - level) <= 0.005
        heads = {len(layer.query_heads) for layer in plan.layers if layer.query_heads}
        assert len(heads) <= 1, (level, [len(layer.query_heads) for layer in plan.layers])
        for layer in plan.layers:  # GQA groups stay whole: every kept KV head keeps the same query heads
            assert not layer.query_heads or len(layer.query_heads) % len(layer.kv_heads) == 0
        removed_heads |= heads not in ({8}, set())
    assert removed_heads  # the option constrained head removal, it did not just switch it off
    hf_prune.export(apply_plan(model, result.plans[0.5]), "deci", tmp_path / "deci")


def test_without_uniform_heads_the_same_run_is_not_deci_exportable(tmp_path):
    # The option is what makes the difference: the same settings without it give per-layer query heads here.
    model = tiny_qwen2(seed=11, intermediate_size=96)
    plan = hf_prune.prune(model, None, CALIB, [0.5], method="gisp", steps=2, attention_weight=0.2,
                          compensation=None, show_progress=False).plans[0.5]
    assert len({len(layer.query_heads) for layer in plan.layers if layer.query_heads}) > 1
    with pytest.raises(NotUniformError):
        hf_prune.export(apply_plan(model, plan), "deci", tmp_path / "deci")


def test_uniform_heads_refuses_a_model_already_non_uniform(gguf_model):
    with pytest.raises(PruningError, match="already have .* query heads"):
        hf_prune.prune(gguf_model, None, CALIB.clamp(max=127), [0.2], method="random", uniform_heads=True,
                       show_progress=False)


# ---- command line ------------------------------------------------------------------------------------------------
def test_cli_export(deci_model, tmp_path, capsys):
    from hf_prune.cli import main

    deci_model.save_pretrained(tmp_path / "pruned")
    assert main(["export", str(tmp_path / "pruned"), "--format", "deci", "--output-dir", str(tmp_path / "out")]) == 0
    assert "vllm serve" in capsys.readouterr().out
    torch.testing.assert_close(decilm_reference(tmp_path / "out", IDS), logits_of(deci_model), atol=2e-5, rtol=1e-4)
    assert main(["export", str(tmp_path / "pruned"), "--format", "qwen3", "--output-dir", str(tmp_path / "q3")]) == 1
    assert "error: format 'qwen3' does not apply" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(tmp_path / "pruned"), "--format", "onnx", "--output-dir", str(tmp_path / "x")])
    assert exit_info.value.code == 2


def test_cli_export_argument_errors_do_not_import_torch(tmp_path):
    import subprocess

    code = ("import sys; from hf_prune.cli import main; rc = main(['export', sys.argv[1], '--format', 'deci', "
            "'--output-dir', sys.argv[2]]); assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "missing"), str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "hf-prune: error: no such model folder" in proc.stderr
