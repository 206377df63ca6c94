"""The ``deci`` export: a DeciLM / nemotron-nas checkpoint that vLLM and SGLang serve natively.

What the servers read (vLLM ``model_executor/models/nemotron_nas.py``, SGLang ``srt/models/nemotron_nas.py``):
``block_configs[i].attention`` (``no_op``, ``n_heads_in_group`` = query heads / KV heads of that layer, query heads
being the global ``num_attention_heads``) and ``block_configs[i].ffn`` (``no_op``; ``ffn_mult`` if present, else
``intermediate_size`` -- SGLang reads ``ffn_mult`` only); ``qkv_bias`` puts biases on q/k/v alone, as Qwen2 has
them; weights keep the Llama names the loaders map (``q_proj`` ... ``down_proj``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from ..errors import NotUniformError
from .common import check_servable, head_dim_of, rope_theta

__all__ = ["check", "write", "deci_config", "ffn_mult_for", "CONFIG_CODE"]

#: The config class shipped with every export (the servers load it with ``--trust-remote-code``).
CONFIG_CODE = Path(__file__).with_name("configuration_decilm.py")
_SGLANG_WIDTH_MULTIPLE = 256  # DeciLM's ffn_mult -> width rule rounds up to a multiple of 256


def _width_from_mult(ffn_mult: float, hidden_size: int) -> int:
    # DeciLM's rule as both servers implement it: int(2 * mult * hidden / 3) rounded up to a multiple of 256.
    width = int(2 * ffn_mult * hidden_size / 3)
    return -(-width // _SGLANG_WIDTH_MULTIPLE) * _SGLANG_WIDTH_MULTIPLE


def ffn_mult_for(width: int, hidden_size: int) -> float | None:
    """The ``ffn_mult`` DeciLM maps back to exactly ``width``, or ``None`` if no multiplier gives it."""
    if width % _SGLANG_WIDTH_MULTIPLE:
        return None
    mult = round(1.5 * width / hidden_size, 6)  # real DeciLM configs store it rounded to 6 digits
    return mult if _width_from_mult(mult, hidden_size) == width else None


def check(config: Any) -> None:
    """Refuse per-layer query heads (global in DeciLM) and what :func:`check_servable` refuses."""
    shapes = check_servable(config, "deci")
    heads = sorted({s.num_attention_heads for s in shapes if s.num_attention_heads})
    if len(heads) > 1:
        raise NotUniformError(
            f"DeciLM (vLLM / SGLang) has one query-head count for all layers, but this model's layers keep {heads} "
            "query heads: prune with uniform_heads=True (--uniform-heads), or export gguf for llama.cpp."
        )


def _block(shape: Any, hidden_size: int) -> dict[str, Any]:
    if shape.num_attention_heads:
        attention = {"no_op": False, "n_heads_in_group": shape.num_attention_heads // shape.num_key_value_heads}
    else:
        attention = {"no_op": True}
    if shape.intermediate_size:
        ffn: dict[str, Any] = {"no_op": False, "intermediate_size": shape.intermediate_size}
        mult = ffn_mult_for(shape.intermediate_size, hidden_size)
        if mult is not None:  # SGLang computes the width from ffn_mult alone
            ffn["ffn_mult"] = mult
    else:
        ffn = {"no_op": True}
    return {"attention": attention, "ffn": ffn}


def deci_config(config: Any, has_qkv_bias: bool, dtype: str) -> dict[str, Any]:
    """The ``config.json`` of the export, from a (pruned) Qwen2 config."""
    shapes = check_servable(config, "deci")
    first = next(s for s in shapes if s.num_attention_heads)
    theta = rope_theta(config)
    return {
        "architectures": ["DeciLMForCausalLM"],
        "model_type": "nemotron-nas",
        "auto_map": {"AutoConfig": f"{CONFIG_CODE.stem}.DeciLMConfig"},
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": first.num_attention_heads,
        # Per layer in block_configs; the global values only satisfy readers that expect one (the widest).
        "num_key_value_heads": max(s.num_key_value_heads for s in shapes),
        "intermediate_size": max([s.intermediate_size for s in shapes] + [1]),
        "head_dim": head_dim_of(config),
        "hidden_act": config.hidden_act,
        "rms_norm_eps": config.rms_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "rope_theta": theta,  # transformers < 5 and SGLang read rope_theta; transformers 5 rope_parameters
        "rope_parameters": {"rope_type": "default", "rope_theta": theta},
        "attention_bias": False,  # vLLM: o_proj bias off ...
        "qkv_bias": has_qkv_bias,  # ... q/k/v bias as Qwen2 has it
        "mlp_bias": False,
        "tie_word_embeddings": bool(config.tie_word_embeddings),
        "bos_token_id": config.bos_token_id,
        "eos_token_id": config.eos_token_id,
        "pad_token_id": config.pad_token_id,
        "torch_dtype": dtype,
        "block_configs": [_block(s, config.hidden_size) for s in shapes],
    }


def _weights(model: Any) -> dict[str, Any]:
    """The state dict under the names the DeciLM loaders map (Qwen2's, which are Llama's)."""
    import torch

    sd = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        sd.pop("lm_head.weight", None)  # both loaders tie lm_head to the embeddings and skip it
    for name in [n for n in sd if n.endswith("self_attn.o_proj.weight")]:
        # A zero o_proj bias: vLLM skips it (no such parameter); a loader that builds o_proj with the q/k/v bias
        # setting gets zeros instead of uninitialised memory.
        weight = sd[name]
        sd[name.replace(".weight", ".bias")] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return sd


def _save_safetensors(sd: dict[str, Any], folder: Path, max_shard_size: str = "5GB") -> None:
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    split = split_torch_state_dict_into_shards(sd, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        save_file({n: sd[n] for n in names}, str(folder / filename), metadata={"format": "pt"})
    if split.is_sharded:
        index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in sd.values())},
                 "weight_map": split.tensor_to_filename}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


def write(model: Any, tokenizer: Any, folder: Path, *, dtype: str | None = None) -> None:
    """Write the DeciLM checkpoint of ``model`` (config, config code, safetensors, tokenizer) into ``folder``."""
    check(model.config)
    sd = _weights(model)
    has_bias = any(name.endswith("self_attn.q_proj.bias") for name in sd)
    torch_dtype = str(next(iter(sd.values())).dtype).replace("torch.", "")
    config = deci_config(model.config, has_bias, torch_dtype)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    shutil.copyfile(CONFIG_CODE, folder / CONFIG_CODE.name)
    _save_safetensors(sd, folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
