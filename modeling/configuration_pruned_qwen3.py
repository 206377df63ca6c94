# Copyright 2026 The hf-prune developers. Licensed under the Apache License, Version 2.0.
#
# This file ships inside every pruned Qwen3 checkpoint (remote code), next to configuration_pruned_qwen2.py which it
# imports: it may import only the standard library, torch, transformers and its sibling files.
"""Configuration of a structurally pruned Qwen3 model: every decoder layer has its own sizes."""

from huggingface_hub.dataclasses import strict
from transformers import Qwen3Config

from .configuration_pruned_qwen2 import PRUNED_QWEN2_FORMAT_VERSION, PerLayerSizesMixin

# One format for both families: the per-layer machinery (and its version) is shared with pruned_qwen2.
PRUNED_QWEN3_FORMAT_VERSION = PRUNED_QWEN2_FORMAT_VERSION


@strict
class PrunedQwen3Config(PerLayerSizesMixin, Qwen3Config):
    r"""
    A [`~transformers.Qwen3Config`] whose decoder layers may differ in size, stored as for
    [`PrunedQwen2Config`]: transformers' `per_layer_config` with per-layer `intermediate_size`,
    `num_attention_heads`, `num_key_value_heads` and `skip` (`["attention"]` / `["mlp"]`).

    Qwen3's per-head `q_norm` / `k_norm` act on one head (`head_dim` wide) and are shared by all heads of a layer,
    so removing heads leaves them as they are; they go only with the whole attention sublayer. `head_dim` is
    Qwen3's own explicit field (it need not equal `hidden_size // num_attention_heads`).

    Args:
        pruned_format_version (`int`, *optional*, defaults to 1):
            Version of this checkpoint format; a checkpoint newer than the installed code is refused.
        per_layer_config (`dict[int, dict]`, *optional*):
            Per-layer overrides, see [`PrunedQwen2Config`].

    Example:

    ```python
    >>> config = PrunedQwen3Config(
    ...     hidden_size=64, head_dim=32, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=2,
    ...     intermediate_size=128, per_layer_config={0: {"skip": ["attention"]}, 1: {"num_attention_heads": 2,
    ...     "num_key_value_heads": 1}},
    ... )
    >>> config.per_layer_config[1].num_attention_heads
    2
    ```
    """

    model_type = "pruned_qwen3"

    pruned_format_version: int = PRUNED_QWEN3_FORMAT_VERSION


__all__ = ["PrunedQwen3Config", "PRUNED_QWEN3_FORMAT_VERSION"]
