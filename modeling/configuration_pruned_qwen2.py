# Copyright 2026 The hf-prune developers. Licensed under the Apache License, Version 2.0.
#
# This file ships inside every pruned checkpoint (remote code): it may import only torch, transformers
# and its sibling files.
"""Configuration of a structurally pruned Qwen2 model: every decoder layer has its own sizes."""

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config

PRUNED_QWEN2_FORMAT_VERSION = 1
"""Version of the checkpoint format written by this file. Bump it when the meaning of a field changes."""

_SKIPPABLE = ("attention", "mlp")


@strict
class PrunedQwen2Config(Qwen2Config):
    r"""
    A [`~transformers.Qwen2Config`] whose decoder layers may differ in size.

    Per-layer sizes are stored with transformers' own `per_layer_config` mechanism, sparsely: only values that
    differ from the global ones are written. Each layer may override

    - `intermediate_size`: MLP width of that layer,
    - `num_attention_heads` / `num_key_value_heads`: query and key/value heads of that layer,
    - `skip`: `["attention"]` and/or `["mlp"]` for a sublayer that was removed entirely (it holds no weights,
      not even its pre-norm). A head count or width is never 0: a removed sublayer is a `skip`.

    Read a layer's sizes with `config.per_layer_config[i].intermediate_size`; reading a size that varies across
    layers from the global config raises `AmbiguousGlobalPerLayerAttributeError`.

    Args:
        head_dim (`int`, *optional*):
            Size of one attention head. Always stored explicitly, because pruning removes whole heads and
            `hidden_size // num_attention_heads` no longer gives it. Defaults to that quotient of the global sizes.
        pruned_format_version (`int`, *optional*, defaults to 1):
            Version of this checkpoint format; a checkpoint newer than the installed code is refused.
        per_layer_config (`dict[int, dict]`, *optional*):
            Per-layer overrides, see above.

    Example:

    ```python
    >>> config = PrunedQwen2Config(
    ...     hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2, intermediate_size=128,
    ...     per_layer_config={0: {"skip": ["attention"]}, 1: {"num_attention_heads": 2, "num_key_value_heads": 1}},
    ... )
    >>> config.per_layer_config[1].num_attention_heads
    2
    ```
    """

    model_type = "pruned_qwen2"

    head_dim: int | None = None
    pruned_format_version: int = PRUNED_QWEN2_FORMAT_VERSION

    def __post_init__(self, **kwargs: Any) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.pruned_format_version > PRUNED_QWEN2_FORMAT_VERSION:
            raise ValueError(
                f"This checkpoint uses pruned_qwen2 format version {self.pruned_format_version}, but the installed code "
                f"reads versions up to {PRUNED_QWEN2_FORMAT_VERSION}: upgrade hf-prune (or load with trust_remote_code=True)."
            )
        super().__post_init__(**kwargs)
        self._validate_layers()

    def _validate_layers(self) -> None:
        # Checked here, at construction, so a bad config fails before any weights are allocated or loaded.
        if not self.is_heterogeneous:
            layer_configs = [self] * self.num_hidden_layers
        else:
            layer_configs = list(self.per_layer_config)
        for idx, layer in enumerate(layer_configs):
            skip = set(getattr(layer, "skip", None) or [])
            unknown = skip.difference(_SKIPPABLE)
            if unknown:
                raise ValueError(f"Layer {idx}: unknown `skip` entries {sorted(unknown)}; allowed: {list(_SKIPPABLE)}.")
            if "attention" not in skip:
                heads, kv_heads = layer.num_attention_heads, layer.num_key_value_heads
                if heads <= 0 or kv_heads <= 0:
                    raise ValueError(
                        f"Layer {idx}: {heads} attention heads / {kv_heads} key-value heads; a removed attention "
                        "sublayer is written as skip=['attention'], never as 0 heads."
                    )
                if heads % kv_heads:
                    raise ValueError(
                        f"Layer {idx}: {heads} attention heads are not divisible by {kv_heads} key-value heads."
                    )
            if "mlp" not in skip and layer.intermediate_size <= 0:
                raise ValueError(
                    f"Layer {idx}: intermediate_size {layer.intermediate_size}; a removed MLP is written as skip=['mlp']."
                )

    def layer_sizes(self) -> list[dict[str, Any]]:
        """Resolved sizes of every layer: heads, KV heads and MLP width (`None` for a removed sublayer)."""
        sizes = []
        for layer in self.per_layer_config:
            skip = set(getattr(layer, "skip", None) or [])
            sizes.append(
                {
                    "num_attention_heads": None if "attention" in skip else layer.num_attention_heads,
                    "num_key_value_heads": None if "attention" in skip else layer.num_key_value_heads,
                    "intermediate_size": None if "mlp" in skip else layer.intermediate_size,
                }
            )
        return sizes


__all__ = ["PrunedQwen2Config", "PRUNED_QWEN2_FORMAT_VERSION"]
