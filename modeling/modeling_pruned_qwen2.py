# Copyright 2026 The hf-prune developers. Licensed under the Apache License, Version 2.0.
#
# This file ships inside every pruned checkpoint (remote code): it may import only torch, transformers
# and its sibling files.
"""Qwen2 with per-layer sizes: each decoder layer is built from its own resolved config.

Everything but the layer construction is transformers' Qwen2: attention, MLP, norms, RoPE, masks, the
forward passes and generation are inherited, so a pruned model behaves like the model it was cut from.
"""

import logging
import re

import torch
from torch import nn
from transformers.cache_utils import Cache, DummyLayer, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.qwen2.modeling_qwen2 import (
    Qwen2Attention,
    Qwen2ForCausalLM,
    Qwen2MLP,
    Qwen2Model,
    Qwen2PreTrainedModel,
    Qwen2RMSNorm,
    Qwen2RotaryEmbedding,
)

from .configuration_pruned_qwen2 import PrunedQwen2Config


class PrunedQwen2DecoderLayer(GradientCheckpointingLayer):
    """A Qwen2 decoder layer at its own size; a removed sublayer (``skip``) has no module and no pre-norm."""

    def __init__(self, config: PrunedQwen2Config, layer_idx: int):
        super().__init__()
        layer_config = config.per_layer_config[layer_idx]
        skip = set(getattr(layer_config, "skip", None) or [])
        self.hidden_size = config.hidden_size
        self.layer_idx = layer_idx

        self.self_attn = self.input_layernorm = None
        if "attention" not in skip:
            self.input_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.self_attn = Qwen2Attention(config=layer_config, layer_idx=layer_idx)
            # The layer config is a copy: point the attention at the global config so that
            # `model.set_attn_implementation(...)` (which updates the global config) reaches it.
            self.self_attn.config = config

        self.mlp = self.post_attention_layernorm = None
        if "mlp" not in skip:
            self.post_attention_layernorm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = Qwen2MLP(layer_config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values: Cache | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.self_attn is not None:
            residual = hidden_states
            hidden_states, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            hidden_states = residual + hidden_states
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class PrunedQwen2PreTrainedModel(Qwen2PreTrainedModel):
    config: PrunedQwen2Config
    config_class = PrunedQwen2Config
    _no_split_modules = ["PrunedQwen2DecoderLayer"]
    _can_record_outputs = {
        "hidden_states": PrunedQwen2DecoderLayer,
        "attentions": Qwen2Attention,
    }

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        # transformers reports tensors whose shape disagrees with the config only in a logged table and then
        # raises a generic error; for a pruned checkpoint that means config.json's per-layer sizes and the
        # weights disagree, so say so and name the layers.
        report = _LogCapture()
        logging.getLogger("transformers").addHandler(report)
        try:
            return super().from_pretrained(*args, **kwargs)
        except RuntimeError as err:
            if "ignore_mismatched_sizes" not in str(err):
                raise
            found = re.findall(r"(model\.layers\.(\d+)\.\S+)\s*\|\s*MISMATCH.*?ckpt: torch\.Size\((\[.*?\])\) vs model: ?torch\.Size\((\[.*?\])\)", report.text)
            details = "; ".join(f"layer {layer}: {name} is {ckpt} in the weights but {model} by config.json" for name, layer, ckpt, model in found)
            raise ValueError(
                "This checkpoint's weights disagree with the per-layer sizes in its config.json (per_layer_config): "
                + (details or "see the load report above")
                + ". Re-export the checkpoint with hf-prune instead of editing config.json by hand."
            ) from err
        finally:
            logging.getLogger("transformers").removeHandler(report)


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    @property
    def text(self):
        return "\n".join(self.messages)


def _complete_auto_map(config: PrunedQwen2Config) -> None:
    # `save_pretrained` writes only the saved class into `auto_map`; vLLM's Transformers backend and
    # `AutoModel.from_pretrained(..., trust_remote_code=True)` also need the base model's entry.
    auto_map = dict(getattr(config, "auto_map", None) or {})
    auto_map.setdefault("AutoConfig", "configuration_pruned_qwen2.PrunedQwen2Config")
    auto_map.setdefault("AutoModel", "modeling_pruned_qwen2.PrunedQwen2Model")
    auto_map.setdefault("AutoModelForCausalLM", "modeling_pruned_qwen2.PrunedQwen2ForCausalLM")
    config.auto_map = auto_map


class PrunedQwen2Model(PrunedQwen2PreTrainedModel, Qwen2Model):
    """[`~transformers.Qwen2Model`] whose layers each have their own sizes (see [`PrunedQwen2Config`])."""

    def __init__(self, config: PrunedQwen2Config):
        _complete_auto_map(config)
        PrunedQwen2PreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size

        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [PrunedQwen2DecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = Qwen2RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # Built from a resolved layer config: RoPE variants such as yarn/dynamic read global sizes, which are
        # ambiguous (and raise) on a heterogeneous config. RoPE itself depends only on head_dim, shared by all.
        self.rotary_emb = Qwen2RotaryEmbedding(config=config.per_layer_config[0])
        self.gradient_checkpointing = False
        self.has_sliding_layers = "sliding_attention" in self.config.layer_types
        self.attention_free_layers = [i for i, layer in enumerate(self.layers) if layer.self_attn is None]

        self.post_init()

    def _prepare_cache(self, past_key_values: Cache | None, use_cache: bool | None) -> Cache | None:
        if use_cache and past_key_values is None:
            past_key_values = DynamicCache(config=self.config)
        if past_key_values is not None and self.attention_free_layers:
            mark_attention_free_layers(past_key_values, self.attention_free_layers, self.config.num_hidden_layers)
        return past_key_values

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                inputs_embeds=None, use_cache=None, **kwargs):
        use_cache = self.config.use_cache if use_cache is None else use_cache
        past_key_values = self._prepare_cache(past_key_values, use_cache)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


def mark_attention_free_layers(cache: Cache, layer_indices: list[int], num_layers: int) -> None:
    """Give attention-free layers a `DummyLayer` in `cache`.

    Otherwise they keep an empty cache layer: if that is layer 0, `cache.get_seq_length()` stays 0 and cached
    decoding computes wrong positions and masks (it diverges from uncached decoding on padded batches).
    """
    layers = getattr(cache, "layers", None)
    if layers is None:  # e.g. an encoder-decoder cache: not produced for this decoder-only model
        return
    # A config-less DynamicCache creates its layers lazily on update: create them now so indices line up.
    replicate = getattr(cache, "layer_class_to_replicate", None)
    if replicate is not None:
        while len(layers) < num_layers:
            layers.append(replicate())
    for idx in layer_indices:
        if idx < len(layers) and not isinstance(layers[idx], DummyLayer):
            layers[idx] = DummyLayer()


class PrunedQwen2ForCausalLM(PrunedQwen2PreTrainedModel, Qwen2ForCausalLM):
    """[`~transformers.Qwen2ForCausalLM`] on top of [`PrunedQwen2Model`]."""

    def __init__(self, config: PrunedQwen2Config):
        _complete_auto_map(config)
        PrunedQwen2PreTrainedModel.__init__(self, config)
        self.model = PrunedQwen2Model(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

        self.post_init()


# Saved checkpoints carry this file and its configuration sibling, with an `auto_map`, so they load with
# `trust_remote_code=True` where hf-prune is not installed.
PrunedQwen2Config.register_for_auto_class()
PrunedQwen2Model.register_for_auto_class("AutoModel")
PrunedQwen2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["PrunedQwen2PreTrainedModel", "PrunedQwen2Model", "PrunedQwen2ForCausalLM", "PrunedQwen2DecoderLayer"]
