"""What a model's decoder layers hold: the one place that reads per-layer sizes (config and weights).

A layer's sizes come from its config (``PrunedQwen2Config.layer_size`` / ``PrunedQwen3Config.layer_size``, which
interprets ``skip``) and are checked against its weights; the result is a :class:`~hf_prune.format.plan.LayerShape`
per layer, 0 heads / 0 channels meaning "sublayer removed".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedModel

from ..errors import ConfigMismatchError, NotUniformError
from ..modeling.configuration_pruned_qwen2 import PerLayerSizesMixin
from .family import family_of
from .plan import LayerShape

__all__ = ["check_supported", "head_dim_of", "config_shapes", "layer_shapes"]


def check_supported(model: Any) -> None:
    """Raise :class:`UnsupportedModelError` unless ``model`` is a (pruned) Qwen2 or Qwen3 causal LM."""
    family_of(model)


def head_dim_of(config) -> int:
    """Size of one attention head: explicit ``head_dim``, else hidden size / heads (read without the
    heterogeneous-config guard: only uniform configs lack ``head_dim``)."""
    head_dim = config._getattr_without_heterogeneous_validation("head_dim", None)
    return head_dim or config.hidden_size // config.num_attention_heads


def config_shapes(config) -> list[LayerShape]:
    """Each layer's sizes as its config states them (a stock config: the global sizes in every layer)."""
    if isinstance(config, PerLayerSizesMixin):
        return [LayerShape(s["num_attention_heads"] or 0, s["num_key_value_heads"] or 0, s["intermediate_size"] or 0)
                for s in config.layer_sizes()]
    shape = LayerShape(config.num_attention_heads, config.num_key_value_heads, config.intermediate_size)
    return [shape] * config.num_hidden_layers


def layer_shapes(model: PreTrainedModel) -> list[LayerShape]:
    """Sizes of every decoder layer, read from the weights and checked against the config.

    Raises:
        UnsupportedModelError: not a Qwen2 / Qwen3 causal LM.
        ConfigMismatchError: the config's per-layer sizes disagree with the weight shapes (names the layer).
    """
    check_supported(model)
    head_dim = head_dim_of(model.config)
    shapes = []
    for idx, (layer, expected) in enumerate(zip(model.model.layers, config_shapes(model.config))):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        found = LayerShape(
            attn.q_proj.out_features // head_dim if attn is not None else 0,
            attn.k_proj.out_features // head_dim if attn is not None else 0,
            mlp.gate_proj.out_features if mlp is not None else 0,
        )
        if found != expected or (attn is not None and attn.q_proj.out_features != found.num_attention_heads * head_dim):
            raise ConfigMismatchError(
                f"Layer {idx}: the config says {expected.num_attention_heads} heads / {expected.num_key_value_heads} KV "
                f"heads / MLP width {expected.intermediate_size}, but the weights hold {found.num_attention_heads} / "
                f"{found.num_key_value_heads} / {found.intermediate_size} (head_dim {head_dim})."
            )
        shapes.append(found)
    return shapes


def uniform_shape(shapes: Sequence[LayerShape], stock: str, advice: str) -> tuple[int, int, int]:
    """The one (heads, KV heads, MLP width) every layer has, for a stock ``stock`` checkpoint.

    Raises:
        NotUniformError: the layers differ, or one lost a sublayer (``advice`` says what to do instead).
    """
    distinct = sorted({(s.num_attention_heads, s.num_key_value_heads, s.intermediate_size) for s in shapes})
    if len(distinct) != 1 or 0 in distinct[0]:
        raise NotUniformError(
            f"Only a model whose layers share one shape exports as stock {stock}; this one has layer shapes "
            f"(heads, kv heads, mlp width) {distinct[:4]}{' ...' if len(distinct) > 4 else ''}: {advice}."
        )
    return distinct[0]
