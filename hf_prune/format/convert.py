"""Convert Llama-architecture checkpoints to Qwen2 so they can be pruned and served as Qwen2.

A Llama model without attention/MLP biases and with ``head_dim == hidden_size / num_heads`` is a Qwen2
model whose q/k/v biases are zero; the conversion is exact (logits identical).
"""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from ..errors import UnsupportedModelError

__all__ = ["llama_to_qwen2"]


def llama_to_qwen2(model: LlamaForCausalLM) -> Qwen2ForCausalLM:
    """Return a :class:`~transformers.Qwen2ForCausalLM` computing exactly what ``model`` computes.

    Raises:
        UnsupportedModelError: ``model`` is not a Llama causal LM, or uses biases / a head size that Qwen2
            cannot express.
    """
    cfg = getattr(model, "config", None)
    if getattr(cfg, "model_type", None) != "llama":
        raise UnsupportedModelError(f"llama_to_qwen2 expects a Llama model, got model_type={getattr(cfg, 'model_type', None)!r}.")
    if cfg.attention_bias or cfg.mlp_bias:
        raise UnsupportedModelError("llama_to_qwen2: Llama attention/MLP biases have no Qwen2 equivalent.")
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    if head_dim * cfg.num_attention_heads != cfg.hidden_size:
        raise UnsupportedModelError(
            f"llama_to_qwen2: head_dim {head_dim} x {cfg.num_attention_heads} heads != hidden_size {cfg.hidden_size}."
        )
    qcfg = Qwen2Config(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        hidden_act=cfg.hidden_act,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        rope_parameters=dict(cfg.rope_parameters),
        tie_word_embeddings=cfg.tie_word_embeddings,
        use_sliding_window=False,
        bos_token_id=cfg.bos_token_id,
        eos_token_id=cfg.eos_token_id,
        pad_token_id=cfg.pad_token_id,
    )
    dtype = next(model.parameters()).dtype
    qwen = Qwen2ForCausalLM(qcfg).to(dtype)
    missing, unexpected = qwen.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not k.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")) for k in missing):
        raise UnsupportedModelError(f"llama_to_qwen2: unexpected weights {unexpected[:3]} / missing {missing[:3]}.")
    with torch.no_grad():
        for layer in qwen.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.zero_()
    if qcfg.tie_word_embeddings:
        qwen.tie_weights()
    if model.generation_config is not None:
        qwen.generation_config = model.generation_config
    return qwen.eval()
