"""Physically slice a Qwen2 / Qwen3 model by a :class:`~hf_prune.PruningPlan`; export uniform ones as stock models."""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel, Qwen2ForCausalLM, Qwen3ForCausalLM

from ..errors import UnsupportedModelError
from ..modeling.configuration_pruned_qwen2 import PrunedQwen2Config
from ..modeling.configuration_pruned_qwen3 import PrunedQwen3Config
from ..modeling.modeling_pruned_qwen2 import PrunedQwen2ForCausalLM
from ..modeling.modeling_pruned_qwen3 import PrunedQwen3ForCausalLM
from .family import QWEN2, QWEN3, Family, family_of
from .geometry import head_dim_of, layer_shapes, uniform_shape
from .plan import PruningPlan, ResolvedLayer

__all__ = ["apply_plan", "to_stock", "to_qwen2", "to_qwen3"]

_GLOBAL_SIZE_KEYS = ("intermediate_size", "num_attention_heads", "num_key_value_heads")
# Qwen3's per-head norms act within one head and are shared by all heads: they are kept whole with the attention.
_SHARED_HEAD_NORMS = ("q_norm", "k_norm")


def _rows(weight: torch.Tensor, heads: list[int], head_dim: int) -> torch.Tensor:
    index = torch.tensor([h * head_dim + i for h in heads for i in range(head_dim)], dtype=torch.long)
    return weight.index_select(0, index.to(weight.device))


def _slice_layer(prefix: str, sd: dict[str, torch.Tensor], keep: ResolvedLayer, head_dim: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if not keep.attention_removed:
        a = f"{prefix}.self_attn"
        # Kept query heads are sorted, so each stays next to the other heads of its KV head: the uniform groups
        # that repeat_kv expects.
        for name, heads in (("q_proj", keep.query_heads), ("k_proj", keep.kv_heads), ("v_proj", keep.kv_heads)):
            out[f"{a}.{name}.weight"] = _rows(sd[f"{a}.{name}.weight"], heads, head_dim)
            if f"{a}.{name}.bias" in sd:
                out[f"{a}.{name}.bias"] = _rows(sd[f"{a}.{name}.bias"], heads, head_dim)
        out[f"{a}.o_proj.weight"] = _rows(sd[f"{a}.o_proj.weight"].t(), keep.query_heads, head_dim).t().contiguous()
        for name in _SHARED_HEAD_NORMS:
            if f"{a}.{name}.weight" in sd:
                out[f"{a}.{name}.weight"] = sd[f"{a}.{name}.weight"].clone()
        out[f"{prefix}.input_layernorm.weight"] = sd[f"{prefix}.input_layernorm.weight"].clone()
    if not keep.mlp_removed:
        m = f"{prefix}.mlp"
        index = torch.tensor(keep.mlp_channels, dtype=torch.long, device=sd[f"{m}.gate_proj.weight"].device)
        out[f"{m}.gate_proj.weight"] = sd[f"{m}.gate_proj.weight"].index_select(0, index)
        out[f"{m}.up_proj.weight"] = sd[f"{m}.up_proj.weight"].index_select(0, index)
        out[f"{m}.down_proj.weight"] = sd[f"{m}.down_proj.weight"].index_select(1, index)
        out[f"{prefix}.post_attention_layernorm.weight"] = sd[f"{prefix}.post_attention_layernorm.weight"].clone()
    return out


def _pruned_config(config, resolved: list[ResolvedLayer], head_dim: int,
                   family: Family) -> PrunedQwen2Config | PrunedQwen3Config:
    data = config.to_dict()
    for key in ("auto_map", "architectures", "per_layer_config", "model_type", "transformers_version", "head_dim"):
        data.pop(key, None)
    # Global sizes stay those of the base model (defaults for layers without an override).
    for key in _GLOBAL_SIZE_KEYS:
        data[key] = config._getattr_without_heterogeneous_validation(key)
    per_layer: dict[int, dict[str, Any]] = {}
    for idx, keep in enumerate(resolved):
        entry: dict[str, Any] = {}
        skip = []
        if keep.attention_removed:
            skip.append("attention")
        else:
            entry["num_attention_heads"] = len(keep.query_heads)
            entry["num_key_value_heads"] = len(keep.kv_heads)
        if keep.mlp_removed:
            skip.append("mlp")
        else:
            entry["intermediate_size"] = len(keep.mlp_channels)
        if skip:
            entry["skip"] = skip
        per_layer[idx] = entry
    return family.pruned_config(**data, head_dim=head_dim, per_layer_config=per_layer)


def apply_plan(model: PreTrainedModel, plan: PruningPlan) -> PrunedQwen2ForCausalLM | PrunedQwen3ForCausalLM:
    """Return a new pruned model holding only the weights ``plan`` keeps.

    ``model`` (a stock ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM`` or an already pruned model; indices refer to its
    current layout) is left untouched: the result owns copies of every tensor. The result is a
    :class:`~hf_prune.modeling.PrunedQwen2ForCausalLM` (model type ``pruned_qwen2``) for a Qwen2 model and a
    ``PrunedQwen3ForCausalLM`` (``pruned_qwen3``) for a Qwen3 model, whose ``q_norm`` / ``k_norm`` are kept whole.
    Query heads are regrouped under their KV head; a KV head whose query heads are all removed goes too, so the KV
    cache shrinks; a layer keeping no query heads (no MLP channels) loses its attention (MLP) sublayer and that
    sublayer's norm.

    Raises:
        UnsupportedModelError: ``model`` is not a Qwen2 / Qwen3 causal LM.
        ConfigMismatchError: ``model``'s config disagrees with its weights.
        InvalidPlanError: the plan does not fit ``model`` (the message names the layer).
    """
    family = family_of(model)
    shapes = layer_shapes(model)
    resolved = plan.resolve(shapes)  # all validation happens before any tensor is touched
    config = model.config
    head_dim = head_dim_of(config)

    sd = model.state_dict()
    new_sd: dict[str, torch.Tensor] = {}
    for name, tensor in sd.items():
        if not name.startswith("model.layers."):
            new_sd[name] = tensor.clone()
    for idx, keep in enumerate(resolved):
        new_sd.update(_slice_layer(f"model.layers.{idx}", sd, keep, head_dim))

    new_config = _pruned_config(config, resolved, head_dim, family)
    new_config._attn_implementation = config._attn_implementation
    param = next(model.parameters())
    with torch.device("meta"):
        pruned = family.pruned_model(new_config)
    pruned.load_state_dict(new_sd, strict=False, assign=True)
    if new_config.tie_word_embeddings:
        pruned.tie_weights()
    # Non-persistent buffers (RoPE frequencies) are not in the state dict: rebuild them on the real device.
    rotary = type(pruned.model.rotary_emb)(config=new_config.per_layer_config[0])
    pruned.model.rotary_emb = rotary.to(param.device)
    _check_no_meta(pruned)
    pruned.generation_config = model.generation_config
    pruned.train(model.training)
    return pruned


def _check_no_meta(model: torch.nn.Module) -> None:
    missing = [n for n, t in (*model.named_parameters(), *model.named_buffers()) if t.is_meta]
    if missing:  # a bug in slicing, not a user error
        raise RuntimeError(f"apply_plan left tensors uninitialised: {missing[:5]}")


def to_stock(model: PreTrainedModel) -> PreTrainedModel:
    """Export a pruned model whose layers all have one shape as its family's stock model.

    A ``pruned_qwen2`` model becomes a ``Qwen2ForCausalLM``, a ``pruned_qwen3`` one a ``Qwen3ForCausalLM``. The result
    loads with plain transformers (no hf-prune, no remote code); ``head_dim`` is written explicitly.

    Raises:
        UnsupportedModelError: ``model`` is not a Qwen2 / Qwen3 causal LM.
        NotUniformError: layers differ in heads, KV heads or MLP width, or a sublayer was removed.
    """
    family = family_of(model)
    heads, kv, width = uniform_shape(layer_shapes(model), family.name,
                                     f"save it as {family.pruned_name} instead (save_pretrained)")
    config = model.config
    data = config.to_dict()
    for key in ("auto_map", "architectures", "per_layer_config", "model_type", "transformers_version",
                "pruned_format_version", *_GLOBAL_SIZE_KEYS):
        data.pop(key, None)
    stock_config = family.stock_config(**data, num_attention_heads=heads, num_key_value_heads=kv,
                                       intermediate_size=width)
    stock_config._attn_implementation = config._attn_implementation
    with torch.device("meta"):
        stock = family.stock_model(stock_config)
    stock.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, strict=True, assign=True)
    if stock_config.tie_word_embeddings:
        stock.tie_weights()
    stock.model.rotary_emb = type(stock.model.rotary_emb)(config=stock_config).to(next(model.parameters()).device)
    _check_no_meta(stock)
    stock.generation_config = model.generation_config
    return stock.train(model.training)


def _to_family(model: PreTrainedModel, family: Family) -> PreTrainedModel:
    found = family_of(model)
    if found is not family:
        raise UnsupportedModelError(
            f"to_{family.name} exports {family.pruned_name} models; this is a {found.name} model: use to_{found.name}."
        )
    return to_stock(model)


def to_qwen2(model: PrunedQwen2ForCausalLM) -> Qwen2ForCausalLM:
    """Export a ``pruned_qwen2`` model whose layers all have one shape as a stock ``Qwen2ForCausalLM``.

    See :func:`to_stock`. A Qwen3 model is refused (:class:`UnsupportedModelError`): Qwen2 has no ``q_norm`` /
    ``k_norm``.
    """
    return _to_family(model, QWEN2)


def to_qwen3(model: PrunedQwen3ForCausalLM) -> Qwen3ForCausalLM:
    """Export a ``pruned_qwen3`` model whose layers all have one shape as a stock ``Qwen3ForCausalLM`` (see
    :func:`to_stock`); a Qwen2 model is refused (:class:`UnsupportedModelError`)."""
    return _to_family(model, QWEN3)
