"""What a model's decoder layers hold and what they cost: the one place that reads per-layer sizes (config and
weights) and counts parameters.

A layer's sizes come from its config (``PrunedQwen2Config.layer_size`` / ``PrunedQwen3Config.layer_size``, which
interprets ``skip``) and are checked against its weights; the result is a :class:`~hf_prune.format.plan.LayerShape`
per layer, 0 heads / 0 channels meaning "sublayer removed". :class:`ModelGeometry` prices the structures (the
engine's allocation, the sparsity it reports and the memory plan all count with it); built from a ``config.json``
mapping (:meth:`ModelGeometry.from_config`) it reads ``per_layer_config`` by the same rule without transformers,
so the memory plan of ``--dry-run`` needs neither torch nor the weights. This module imports transformers only
inside the functions that take a model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigMismatchError, NotUniformError
from .plan import LayerShape

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["check_supported", "head_dim_of", "config_shapes", "config_mapping", "layer_shapes", "ModelGeometry"]


def check_supported(model: Any) -> None:
    """Raise :class:`UnsupportedModelError` unless ``model`` is a (pruned) Qwen2 or Qwen3 causal LM."""
    from .family import family_of

    family_of(model)


def head_dim_of(config) -> int:
    """Size of one attention head: explicit ``head_dim``, else hidden size / heads (read without the
    heterogeneous-config guard: only uniform configs lack ``head_dim``)."""
    head_dim = config._getattr_without_heterogeneous_validation("head_dim", None)
    return head_dim or config.hidden_size // config.num_attention_heads


def config_shapes(config) -> list[LayerShape]:
    """Each layer's sizes as its config states them (a stock config: the global sizes in every layer)."""
    from ..modeling.configuration_pruned_qwen2 import PerLayerSizesMixin

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


def config_mapping(config: Any) -> Mapping[str, Any]:
    """A ``config.json`` as a mapping, from a mapping, a transformers config, or a folder / file holding it."""
    if isinstance(config, (str, os.PathLike)):
        path = Path(config)
        return json.loads((path / "config.json" if path.is_dir() else path).read_text(encoding="utf-8"))
    return config if isinstance(config, Mapping) else config.to_dict()


def _mapping_shapes(text: Mapping[str, Any]) -> tuple[LayerShape, ...]:
    """Each layer's sizes from a ``config.json`` mapping: the global sizes, then ``per_layer_config``'s sparse
    overrides, a ``skip`` entry removing its sublayer (``PerLayerSizesMixin.layer_size``'s rule, without
    transformers)."""
    heads = int(text["num_attention_heads"])
    kv = int(text.get("num_key_value_heads") or heads)
    layers = [(heads, kv, int(text["intermediate_size"]))] * int(text["num_hidden_layers"])
    for index, sizes in (text.get("per_layer_config") or {}).items():
        h, k, i = layers[int(index)]
        skip = sizes.get("skip") or ()
        h, k = (0, 0) if "attention" in skip else (sizes.get("num_attention_heads", h), sizes.get("num_key_value_heads", k))
        i = 0 if "mlp" in skip else sizes.get("intermediate_size", i)
        layers[int(index)] = (int(h), int(k), int(i))
    return tuple(LayerShape(*sizes) for sizes in layers)


@dataclass(frozen=True)
class ModelGeometry:
    """Sizes that price the structures: what removing one of each saves, in parameters.

    Units: a *query head* (its q rows and bias, its o_proj columns), a *KV head* (k and v rows and biases; removed
    only with all its query heads), an *MLP channel* (gate row, up row, down column). A removed sublayer also
    removes its pre-norm (and, in Qwen3, the attention's ``q_norm`` / ``k_norm``, shared by all heads).
    """

    hidden_size: int
    head_dim: int
    attn_bias: bool
    shapes: tuple[LayerShape, ...]
    qk_norm: bool = False
    vocab_size: int = 0
    tie_word_embeddings: bool = False

    @classmethod
    def of(cls, model: PreTrainedModel) -> ModelGeometry:
        """From a loaded model: its layers as its weights hold them (checked against its config)."""
        shapes = tuple(layer_shapes(model))
        first = next((l.self_attn for l in model.model.layers if l.self_attn is not None), None)
        return cls(
            hidden_size=model.config.hidden_size,
            head_dim=head_dim_of(model.config),
            attn_bias=first is not None and first.q_proj.bias is not None,
            shapes=shapes,
            qk_norm=first is not None and getattr(first, "q_norm", None) is not None,
            vocab_size=model.config.vocab_size,
            tie_word_embeddings=bool(getattr(model.config, "tie_word_embeddings", False)),
        )

    @classmethod
    def from_config(cls, config: Any) -> ModelGeometry:
        """From a ``config.json`` mapping, a transformers config, or a folder / file holding ``config.json``
        (no torch, no transformers for a mapping or a file)."""
        config = config_mapping(config)
        text = config.get("text_config") or config
        hidden, heads = int(text["hidden_size"]), int(text["num_attention_heads"])
        return cls(
            hidden_size=hidden,
            head_dim=int(text.get("head_dim") or hidden // heads),
            attn_bias=bool(text.get("attention_bias", text.get("model_type") in ("qwen2", "pruned_qwen2", None))),
            shapes=_mapping_shapes(text),
            qk_norm=text.get("model_type") in ("qwen3", "pruned_qwen3"),
            vocab_size=int(text["vocab_size"]),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
        )

    @property
    def query_head_params(self) -> int:
        return 2 * self.head_dim * self.hidden_size + (self.head_dim if self.attn_bias else 0)

    @property
    def kv_head_params(self) -> int:
        return 2 * (self.head_dim * self.hidden_size + (self.head_dim if self.attn_bias else 0))

    @property
    def channel_params(self) -> int:
        return 3 * self.hidden_size

    @property
    def norm_params(self) -> int:
        return self.hidden_size

    @property
    def attn_norm_params(self) -> int:
        """Norms that go with the whole attention sublayer: its pre-norm, and Qwen3's ``q_norm`` / ``k_norm``."""
        return self.norm_params + (2 * self.head_dim if self.qk_norm else 0)

    def projection_params(self, heads: int, kv_heads: int, channels: int) -> int:
        """Parameters of a layer's projections (the prunable weights), without its norms."""
        return heads * self.query_head_params + kv_heads * self.kv_head_params + channels * self.channel_params

    def layer_norm_params(self, heads: int, channels: int) -> int:
        """Parameters of the norms a layer keeps: each sublayer's goes with it."""
        return (self.attn_norm_params if heads else 0) + (self.norm_params if channels else 0)

    def layer_params(self, heads: int, kv_heads: int, channels: int) -> int:
        return self.projection_params(heads, kv_heads, channels) + self.layer_norm_params(heads, channels)

    def total_params(self, shapes=None) -> int:
        """Parameters of the decoder layers (embeddings, final norm and lm_head excluded)."""
        shapes = self.shapes if shapes is None else shapes
        return sum(self.layer_params(s.num_attention_heads, s.num_key_value_heads, s.intermediate_size) for s in shapes)

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def head_params(self) -> int:
        """Final norm and (untied) lm_head."""
        return self.hidden_size + (0 if self.tie_word_embeddings else self.vocab_size * self.hidden_size)
