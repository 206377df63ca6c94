# Copyright 2026 The hf-prune developers. Licensed under the Apache License, Version 2.0.
#
# This file ships inside every pruned Qwen3 checkpoint (remote code), with modeling_pruned_qwen2.py and the two
# configuration files it imports: it may import only the standard library, torch, transformers and its siblings.
"""Qwen3 with per-layer sizes: the machinery of ``modeling_pruned_qwen2`` built from Qwen3's modules.

Qwen3's decoder layer and model compute what Qwen2's do; what differs lives inside the stock modules reused here
(attention with per-head ``q_norm`` / ``k_norm`` of one head's width, shared by all heads, no q/k/v biases, an
explicit ``head_dim``). Attention, MLP, norms, RoPE, masks, the forward passes and generation are transformers' Qwen3.
"""

from transformers.models.qwen3.modeling_qwen3 import (
    Qwen3Attention,
    Qwen3ForCausalLM,
    Qwen3MLP,
    Qwen3Model,
    Qwen3PreTrainedModel,
    Qwen3RMSNorm,
    Qwen3RotaryEmbedding,
)

from .configuration_pruned_qwen3 import PrunedQwen3Config
from .modeling_pruned_qwen2 import (
    PerLayerCausalLMMixin,
    PerLayerModelMixin,
    PrunedPreTrainedMixin,
    PrunedQwen2DecoderLayer,
)


class PrunedQwen3DecoderLayer(PrunedQwen2DecoderLayer):
    """A Qwen3 decoder layer at its own size; a removed sublayer (``skip``) has no module and no pre-norm.

    Head pruning leaves ``q_norm`` / ``k_norm`` untouched (they normalise within one head); a layer without attention
    has none.
    """

    attention_class = Qwen3Attention
    mlp_class = Qwen3MLP
    norm_class = Qwen3RMSNorm


class PrunedQwen3PreTrainedModel(PrunedPreTrainedMixin, Qwen3PreTrainedModel):
    config: PrunedQwen3Config
    config_class = PrunedQwen3Config
    _no_split_modules = ["PrunedQwen3DecoderLayer"]
    _can_record_outputs = {
        "hidden_states": PrunedQwen3DecoderLayer,
        "attentions": Qwen3Attention,
    }


class PrunedQwen3Model(PrunedQwen3PreTrainedModel, PerLayerModelMixin, Qwen3Model):
    """[`~transformers.Qwen3Model`] whose layers each have their own sizes (see [`PrunedQwen3Config`])."""

    decoder_layer_class = PrunedQwen3DecoderLayer
    norm_class = Qwen3RMSNorm
    rotary_class = Qwen3RotaryEmbedding


class PrunedQwen3ForCausalLM(PrunedQwen3PreTrainedModel, PerLayerCausalLMMixin, Qwen3ForCausalLM):
    """[`~transformers.Qwen3ForCausalLM`] on top of [`PrunedQwen3Model`]."""

    base_model_class = PrunedQwen3Model


# Saved checkpoints carry this file and its siblings, with an `auto_map`, so they load with
# `trust_remote_code=True` where hf-prune is not installed.
PrunedQwen3Config.register_for_auto_class()
PrunedQwen3Model.register_for_auto_class("AutoModel")
PrunedQwen3ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["PrunedQwen3PreTrainedModel", "PrunedQwen3Model", "PrunedQwen3ForCausalLM", "PrunedQwen3DecoderLayer"]
