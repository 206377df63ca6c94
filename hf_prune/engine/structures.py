"""The prunable structures of a Qwen2 / Qwen3 model, their parameter costs, and per-structure scores.

Units: a *query head* (its q rows and bias, its o_proj columns), a *KV head* (k and v rows and biases; removed
only with all its query heads), an *MLP channel* (gate row, up row, down column). A removed sublayer also
removes its pre-norm (and, in Qwen3, the attention's ``q_norm`` / ``k_norm``, shared by all heads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..format.plan import LayerShape
from ..format.geometry import head_dim_of, layer_shapes

__all__ = ["ModelGeometry", "LayerScores", "decoder_params", "kv_cache_per_token"]


@dataclass(frozen=True)
class ModelGeometry:
    """Sizes that price the structures: what removing one of each saves, in parameters."""

    hidden_size: int
    head_dim: int
    attn_bias: bool
    shapes: tuple[LayerShape, ...]
    qk_norm: bool = False

    @classmethod
    def of(cls, model) -> ModelGeometry:
        shapes = tuple(layer_shapes(model))
        first = next((l.self_attn for l in model.model.layers if l.self_attn is not None), None)
        return cls(
            hidden_size=model.config.hidden_size,
            head_dim=head_dim_of(model.config),
            attn_bias=first is not None and first.q_proj.bias is not None,
            shapes=shapes,
            qk_norm=first is not None and getattr(first, "q_norm", None) is not None,
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

    def layer_params(self, heads: int, kv_heads: int, channels: int) -> int:
        attn = heads * self.query_head_params + kv_heads * self.kv_head_params + (self.attn_norm_params if heads else 0)
        mlp = channels * self.channel_params + (self.norm_params if channels else 0)
        return attn + mlp

    def total_params(self, shapes=None) -> int:
        shapes = self.shapes if shapes is None else shapes
        return sum(self.layer_params(s.num_attention_heads, s.num_key_value_heads, s.intermediate_size) for s in shapes)


def decoder_params(model) -> int:
    """Parameters in the decoder layers (embeddings, final norm and lm_head excluded), counted from the weights."""
    return sum(p.numel() for layer in model.model.layers for p in layer.parameters())


def kv_cache_per_token(shapes) -> int:
    """KV-cache entries per token (sum over layers of 2 x KV heads; multiply by head_dim x bytes for memory)."""
    return sum(2 * s.num_key_value_heads for s in shapes)


@dataclass
class LayerScores:
    """Importance of every structure of one layer (higher = more important); ``None`` for a removed sublayer."""

    query_heads: torch.Tensor | None
    kv_heads: torch.Tensor | None
    mlp_channels: torch.Tensor | None

    def map(self, fn, *others: LayerScores) -> LayerScores:
        """``fn`` applied field by field (to this and the same field of ``others``); ``None`` fields stay ``None``."""
        fields = ("query_heads", "kv_heads", "mlp_channels")
        return LayerScores(*(None if getattr(self, f) is None else fn(getattr(self, f), *(getattr(o, f) for o in others))
                             for f in fields))

    def to(self, dtype: torch.dtype | None = None) -> LayerScores:
        return self.map(lambda t: t.detach().to(device="cpu", dtype=dtype))
