"""What the DeciLM and GGUF exports share: per-layer shapes read from a config, and the checks both make."""

from __future__ import annotations

from typing import Any

from ..errors import ExportError
from ..format.geometry import config_shapes, head_dim_of
from ..format.plan import LayerShape

__all__ = ["check_servable", "rope_theta", "head_dim_of"]


def rope_theta(config: Any) -> float:
    """The RoPE base; only plain RoPE is exported (both servers take scaled variants in their own terms)."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"RoPE type {rope.get('rope_type')!r} is not exported (only plain RoPE); the model's "
                          "config.json can be edited by hand after a deci export if the server supports it.")
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def check_servable(config: Any, format: str) -> list[LayerShape]:
    """Refuse what neither vLLM's DeciLM nor llama.cpp's ``deci`` runs; returns the layer shapes.

    - Sliding-window attention: neither reads Qwen2's per-layer window settings.
    - A first non-empty layer without attention: vLLM's DeciLM starts its fused residual at the first attention
      sublayer (an MLP before it fails to unpack), and llama.cpp takes the head size from layer 0.
    """
    if getattr(config, "use_sliding_window", False):
        raise ExportError(f"the {format} export does not carry sliding-window attention (use_sliding_window=True).")
    shapes = config_shapes(config)
    if not any(s.num_attention_heads for s in shapes):
        raise ExportError(f"no layer of this model keeps attention: the {format} export needs at least one.")
    # llama.cpp needs layer 0 itself; vLLM the first layer that computes anything.
    first = 0 if format == "gguf" else next(i for i, s in enumerate(shapes) if s.num_attention_heads or s.intermediate_size)
    if not shapes[first].num_attention_heads:
        raise ExportError(f"layer {first} has no attention sublayer; the {format} export needs one there "
                          f"({'llama.cpp takes the head size from layer 0' if format == 'gguf' else 'vLLM starts its residual stream at it'}; "
                          "keep_dense=[0] when pruning keeps it).")
    rope_theta(config)
    return shapes
