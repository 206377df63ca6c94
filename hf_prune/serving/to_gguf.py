"""The ``gguf`` export: ``model.gguf`` for llama.cpp, architecture ``deci``.

llama.cpp's ``deci`` graph (``src/models/deci.cpp``) builds every layer from its own entries of the per-layer
arrays ``attention.head_count``, ``attention.head_count_kv`` and ``feed_forward_length``, and takes q/k/v biases
as optional tensors, so it runs every shape hf-prune makes (query heads too). Three things differ from Qwen2
(measured against llama.cpp, see ``shared/notes/serving.md``):

- ``deci`` rotates adjacent pairs (RoPE "normal"), Qwen2 rotates the two halves of each head (NEOX): the q and k
  rows (and biases) are reordered per head so that llama.cpp rotates the same pairs.
- An attention-free layer is written with 0 heads and 0 KV heads (heads with 0 KV heads would mean linear
  attention), a layer without MLP with a small all-zero MLP: llama.cpp drops the attention output of a layer whose
  MLP width is 0, and a zero down-projection adds exactly nothing.
- The head size is global, taken from ``attention.key_length`` (set explicitly: pruning removed heads, so hidden /
  heads no longer gives it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from .common import check_servable, head_dim_of, rope_theta

__all__ = ["check", "write", "GGUF_FILE", "ZERO_MLP_WIDTH", "interleave_rotary_rows"]

NEEDS_TOKENIZER = True
#: The file written into the output folder.
GGUF_FILE = "model.gguf"
#: Width of the all-zero MLP written for a layer without one (32: a multiple of the Q8_0 / Q4_0 block size).
ZERO_MLP_WIDTH = 32
ARCH = "deci"


def check(config: Any) -> None:
    """Refuse what llama.cpp's ``deci`` does not run (see :func:`~hf_prune.serving.common.check_servable`)."""
    check_servable(config, "gguf")


def interleave_rotary_rows(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """Reorder each head's rows from NEOX halves ``(i, i + d/2)`` to adjacent pairs ``(2i, 2i + 1)``."""
    return rows.reshape(num_heads, 2, rows.shape[0] // num_heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)


def _array(tensor: Any, matrix_type: type) -> np.ndarray:
    # Vectors (norms, biases) stay f32, as llama.cpp's own converter writes them.
    data = tensor.detach().float().cpu().numpy()
    return data.astype(matrix_type) if data.ndim > 1 else data


def _layer_tensors(sd: dict[str, Any], i: int, shape: Any, hidden: int, matrix_type: type) -> dict[str, np.ndarray]:
    src, out = f"model.layers.{i}.", {}
    if shape.num_attention_heads:
        a = src + "self_attn."
        out["attn_norm.weight"] = _array(sd[src + "input_layernorm.weight"], matrix_type)
        for ours, theirs, heads in (("q", "q_proj", shape.num_attention_heads), ("k", "k_proj", shape.num_key_value_heads),
                                    ("v", "v_proj", None)):
            for kind in ("weight", "bias"):
                if a + f"{theirs}.{kind}" in sd:
                    data = _array(sd[a + f"{theirs}.{kind}"], matrix_type)
                    out[f"attn_{ours}.{kind}"] = data if heads is None else interleave_rotary_rows(data, heads)
        out["attn_output.weight"] = _array(sd[a + "o_proj.weight"], matrix_type)
    if shape.intermediate_size:
        out["ffn_norm.weight"] = _array(sd[src + "post_attention_layernorm.weight"], matrix_type)
        for ours, theirs in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            out[f"ffn_{ours}.weight"] = _array(sd[src + f"mlp.{theirs}.weight"], matrix_type)
    else:
        out["ffn_norm.weight"] = np.ones(hidden, dtype=np.float32)
        out["ffn_gate.weight"] = np.zeros((ZERO_MLP_WIDTH, hidden), dtype=matrix_type)
        out["ffn_up.weight"] = np.zeros((ZERO_MLP_WIDTH, hidden), dtype=matrix_type)
        out["ffn_down.weight"] = np.zeros((hidden, ZERO_MLP_WIDTH), dtype=matrix_type)
    return {f"blk.{i}.{name}": data for name, data in out.items()}


def _hyperparameters(writer: Any, config: Any, shapes: list) -> None:
    head_dim = head_dim_of(config)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_vocab_size(config.vocab_size)
    writer.add_feed_forward_length([s.intermediate_size or ZERO_MLP_WIDTH for s in shapes])
    writer.add_head_count([s.num_attention_heads for s in shapes])
    writer.add_head_count_kv([s.num_key_value_heads for s in shapes])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))


def _tokens(tokenizer: Any, vocab_size: int) -> tuple[list[str], list[int]]:
    """Token strings and types for ids ``0..vocab_size-1``; ids the tokenizer lacks (padding rows) are unused."""
    import gguf

    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    if max(by_id, default=-1) >= vocab_size:
        raise ExportError(f"the tokenizer has ids up to {max(by_id)}, beyond the model's {vocab_size} embeddings.")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def _tokenizer_keys(writer: Any, tokenizer: Any, config: Any) -> None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ExportError(f"the gguf export needs a fast (tokenizers) BPE tokenizer, got {type(tokenizer).__name__}.")
    model = json.loads(backend.to_str())["model"]
    if model.get("type") != "BPE":
        raise ExportError(f"the gguf export writes BPE tokenizers (Qwen's); this one is {model.get('type')!r}.")
    tokens, types = _tokens(tokenizer, config.vocab_size)
    writer.add_tokenizer_model("gpt2")  # llama.cpp's name for byte-level BPE
    writer.add_tokenizer_pre("qwen2")  # the pre-tokenizer regex of Qwen2-family tokenizers
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    for name, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id), ("pad", writer.add_pad_token_id)):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        token_id = getattr(config, f"{name}_token_id", None) if token_id is None else token_id
        if isinstance(token_id, int):
            add(token_id)
    bos = tokenizer.bos_token_id
    writer.add_add_bos_token(bos is not None and tokenizer("a")["input_ids"][:1] == [bos])
    if isinstance(getattr(tokenizer, "chat_template", None), str):
        writer.add_chat_template(tokenizer.chat_template)


def write(model: Any, tokenizer: Any, folder: Path, *, dtype: str | None = None) -> None:
    """Write ``folder/model.gguf``: hyperparameters, tokenizer and every tensor of ``model``."""
    import gguf
    import torch

    shapes = check_servable(model.config, "gguf")
    if tokenizer is None:
        raise ExportError("the gguf export embeds the tokenizer: pass tokenizer=...")
    config = model.config
    sd = model.state_dict()
    if dtype is None:
        dtype = "f32" if next(iter(sd.values())).dtype == torch.float32 else "f16"
    matrix_type = np.float32 if dtype == "f32" else np.float16
    writer = gguf.GGUFWriter(folder / GGUF_FILE, ARCH)
    writer.add_name(Path(str(getattr(config, "_name_or_path", "") or "model")).name or "model")
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    _hyperparameters(writer, config, shapes)
    _tokenizer_keys(writer, tokenizer, config)
    writer.add_tensor("token_embd.weight", _array(sd["model.embed_tokens.weight"], matrix_type))
    for i, shape in enumerate(shapes):
        for name, data in _layer_tensors(sd, i, shape, config.hidden_size, matrix_type).items():
            writer.add_tensor(name, data)
    writer.add_tensor("output_norm.weight", _array(sd["model.norm.weight"], matrix_type))
    if not config.tie_word_embeddings:  # llama.cpp uses token_embd for the output when `output` is absent
        writer.add_tensor("output.weight", _array(sd["lm_head.weight"], matrix_type))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
