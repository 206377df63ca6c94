"""Per-structure scores of a Qwen2 / Qwen3 model, and counts read from its weights.

What each structure costs in parameters is :class:`~hf_prune.format.geometry.ModelGeometry`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LayerScores", "decoder_params", "kv_cache_per_token"]


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
