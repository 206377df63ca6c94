# Copyright 2026 The hf-prune developers. Licensed under the Apache License, Version 2.0.
#
# This file ships inside every pruned checkpoint (remote code): it may import only the standard library,
# torch, transformers and its sibling files.
"""Qwen2 with per-layer sizes: each decoder layer is built from its own resolved config.

Everything but the layer construction is transformers' Qwen2: attention, MLP, norms, RoPE, masks, the
forward passes and generation are inherited, so a pruned model behaves like the model it was cut from.
"""

import inspect

import torch
from torch import nn
from transformers.cache_utils import Cache, DummyLayer, DynamicCache
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import PreTrainedModel
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

# transformers 5.24 renamed the cache argument of the Qwen2 forward passes from `past_key_values` to `cache` (the old
# name warns until it is removed in 5.40). The cache is passed on under the name the installed version takes.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(Qwen2Model.forward).parameters else "past_key_values"
_CACHE_NAMES = ("cache", "past_key_values")


class PrunedQwen2DecoderLayer(GradientCheckpointingLayer):
    """A Qwen2 decoder layer at its own size; a removed sublayer (``skip``) has no module and no pre-norm.

    The stock modules it is built from are class attributes: the Qwen3 layer is this one with Qwen3's modules (its
    decoder layer computes what Qwen2's does, the difference is inside the attention).
    """

    attention_class: type[nn.Module] = Qwen2Attention
    mlp_class: type[nn.Module] = Qwen2MLP
    norm_class: type[nn.Module] = Qwen2RMSNorm

    def __init__(self, config: PrunedQwen2Config, layer_idx: int):
        super().__init__()
        layer_config = config.per_layer_config[layer_idx]
        sizes = config.layer_size(layer_idx)
        self.hidden_size = config.hidden_size
        self.layer_idx = layer_idx

        self.self_attn = self.input_layernorm = None
        if sizes["num_attention_heads"] is not None:
            self.input_layernorm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)
            self.self_attn = self.attention_class(config=layer_config, layer_idx=layer_idx)
            # The layer config is a copy: point the attention at the global config so that
            # `model.set_attn_implementation(...)` (which updates the global config) reaches it.
            self.self_attn.config = config

        self.mlp = self.post_attention_layernorm = None
        if sizes["intermediate_size"] is not None:
            self.post_attention_layernorm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)
            self.mlp = self.mlp_class(layer_config)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        use_cache: bool | None = False,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        **kwargs,
    ) -> torch.Tensor:
        # The cache is in `kwargs` under the installed transformers' name and reaches the attention unchanged.
        if self.self_attn is not None:
            residual = hidden_states
            hidden_states, _ = self.self_attn(
                hidden_states=self.input_layernorm(hidden_states),
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            hidden_states = residual + hidden_states
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states


class PrunedPreTrainedMixin:
    """``from_pretrained`` that names the layers whose weights disagree with config.json (shared by Qwen2 and Qwen3)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        try:
            return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        except (RuntimeError, ValueError) as err:
            # transformers reports tensors whose shape disagrees with the config in a log table and a generic error;
            # for a pruned checkpoint that means config.json's per-layer sizes and the weights disagree: name them.
            mismatches = _shape_mismatches(cls, pretrained_model_name_or_path, kwargs)
            if not mismatches:
                raise
            raise ValueError(
                "This checkpoint's weights disagree with the per-layer sizes in its config.json (per_layer_config): "
                + "; ".join(mismatches)
                + ". Re-export the checkpoint with hf-prune instead of editing config.json by hand."
            ) from err


class PrunedQwen2PreTrainedModel(PrunedPreTrainedMixin, Qwen2PreTrainedModel):
    config: PrunedQwen2Config
    config_class = PrunedQwen2Config
    _no_split_modules = ["PrunedQwen2DecoderLayer"]
    _can_record_outputs = {
        "hidden_states": PrunedQwen2DecoderLayer,
        "attentions": Qwen2Attention,
    }


def _checkpoint_shapes(path, kwargs) -> dict[str, list[int]]:
    """Tensor shapes from the safetensors headers of a checkpoint (local folder or Hub cache); no weights read."""
    import os

    from safetensors import safe_open  # a dependency of transformers itself
    from transformers.utils import cached_file

    hub = {k: kwargs[k] for k in ("revision", "token", "cache_dir", "subfolder") if kwargs.get(k) is not None}
    files = []
    for name in ("model.safetensors.index.json", "model.safetensors"):
        found = cached_file(path, name, _raise_exceptions_for_missing_entries=False,
                            _raise_exceptions_for_connection_errors=False, **hub)
        if found is None:
            continue
        if name.endswith(".json"):
            import json

            with open(found, encoding="utf-8") as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            files = [os.path.join(os.path.dirname(found), shard) for shard in shards]
        else:
            files = [found]
        break
    shapes = {}
    for file in files:
        if os.path.isfile(file):
            with safe_open(file, framework="pt") as f:
                shapes.update({key: list(f.get_slice(key).get_shape()) for key in f.keys()})
    return shapes


def _shape_mismatches(cls, path, kwargs) -> list[str]:
    """``"layer i: <tensor> is [..] in the weights but [..] by config.json"`` for every disagreeing tensor."""
    try:
        config = kwargs.get("config")
        if not isinstance(config, cls.config_class):
            config = cls.config_class.from_pretrained(path, **{k: kwargs[k] for k in ("revision", "token", "cache_dir")
                                                                if kwargs.get(k) is not None})
        stored = _checkpoint_shapes(path, kwargs)
        with torch.device("meta"):
            expected = {k: list(v.shape) for k, v in cls(config).state_dict().items()}
    except Exception:  # the load failed for another reason (no files, not a pruned checkpoint...): report that one
        return []
    out = []
    for key, shape in stored.items():
        want = expected.get(key)
        if want is not None and want != shape:
            layer = key.split(".")[2] if key.startswith("model.layers.") else "-"
            out.append(f"layer {layer}: {key} is {shape} in the weights but {want} by config.json")
    return out


def _complete_auto_map(config: PrunedQwen2Config) -> None:
    # `save_pretrained` writes only the saved class into `auto_map`; vLLM's Transformers backend and
    # `AutoModel.from_pretrained(..., trust_remote_code=True)` also need the base model's entry. Names follow the
    # files: model type `pruned_qwenN` is defined by `configuration_/modeling_pruned_qwenN.py` as `PrunedQwenN*`.
    prefix = type(config).__name__.removesuffix("Config")
    auto_map = dict(getattr(config, "auto_map", None) or {})
    auto_map.setdefault("AutoConfig", f"configuration_{config.model_type}.{prefix}Config")
    auto_map.setdefault("AutoModel", f"modeling_{config.model_type}.{prefix}Model")
    auto_map.setdefault("AutoModelForCausalLM", f"modeling_{config.model_type}.{prefix}ForCausalLM")
    config.auto_map = auto_map


class PerLayerModelMixin:
    """The decoder stack built layer by layer from each layer's own sizes (shared by Qwen2 and Qwen3).

    Mixed in before the stock model class (``Qwen2Model`` / ``Qwen3Model``), whose forward pass it keeps; a
    subclass names the stock modules it is built from.
    """

    decoder_layer_class: type[nn.Module]
    norm_class: type[nn.Module]
    rotary_class: type[nn.Module]

    def __init__(self, config: PrunedQwen2Config):
        _complete_auto_map(config)
        # The stock model's `__init__` is not called: it builds every layer from the global sizes, which raise on a
        # per-layer config (and would allocate the dense model). This sets what it sets (a test compares the
        # attributes with the installed transformers' model), with layers built from their own sizes.
        PreTrainedModel.__init__(self, config)
        self.padding_idx = config.pad_token_id
        self.vocab_size = config.vocab_size

        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(
            [self.decoder_layer_class(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = self.norm_class(config.hidden_size, eps=config.rms_norm_eps)
        # Built from a resolved layer config: RoPE variants such as yarn/dynamic read global sizes, which are
        # ambiguous (and raise) on a heterogeneous config. RoPE itself depends only on head_dim, shared by all.
        self.rotary_emb = self.rotary_class(config=config.per_layer_config[0])
        self.gradient_checkpointing = False
        self.has_sliding_layers = "sliding_attention" in self.config.layer_types
        self.attention_free_layers = [i for i, layer in enumerate(self.layers) if layer.self_attn is None]

        self.post_init()

    def _prepare_cache(self, cache: Cache | None, use_cache: bool | None) -> Cache | None:
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        if cache is not None and self.attention_free_layers:
            mark_attention_free_layers(cache, self.attention_free_layers, self.config.num_hidden_layers)
        return cache

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, inputs_embeds=None,
                use_cache=None, **kwargs):
        # Either name is accepted (generate() and callers of any supported transformers version), one is passed on.
        legacy = kwargs.pop("past_key_values", None)
        cache = cache if cache is not None else legacy
        use_cache = self.config.use_cache if use_cache is None else use_cache
        kwargs[CACHE_ARGUMENT] = self._prepare_cache(cache, use_cache)
        return super().forward(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )


class PrunedQwen2Model(PrunedQwen2PreTrainedModel, PerLayerModelMixin, Qwen2Model):
    """[`~transformers.Qwen2Model`] whose layers each have their own sizes (see [`PrunedQwen2Config`])."""

    decoder_layer_class = PrunedQwen2DecoderLayer
    norm_class = Qwen2RMSNorm
    rotary_class = Qwen2RotaryEmbedding


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


class PerLayerCausalLMMixin:
    """The causal LM head on a per-layer decoder stack (shared by Qwen2 and Qwen3); mixed in before the stock class."""

    base_model_class: type[nn.Module]

    def __init__(self, config: PrunedQwen2Config):
        _complete_auto_map(config)
        # Not the stock `...ForCausalLM.__init__`: it would build a stock model (see `PerLayerModelMixin.__init__`).
        PreTrainedModel.__init__(self, config)
        self.model = self.base_model_class(config)
        self.vocab_size = config.vocab_size
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

        self.post_init()


class PrunedQwen2ForCausalLM(PrunedQwen2PreTrainedModel, PerLayerCausalLMMixin, Qwen2ForCausalLM):
    """[`~transformers.Qwen2ForCausalLM`] on top of [`PrunedQwen2Model`]."""

    base_model_class = PrunedQwen2Model


# Saved checkpoints carry this file and its configuration sibling, with an `auto_map`, so they load with
# `trust_remote_code=True` where hf-prune is not installed.
PrunedQwen2Config.register_for_auto_class()
PrunedQwen2Model.register_for_auto_class("AutoModel")
PrunedQwen2ForCausalLM.register_for_auto_class("AutoModelForCausalLM")

__all__ = ["CACHE_ARGUMENT", "PerLayerModelMixin", "PerLayerCausalLMMixin", "PrunedPreTrainedMixin",
           "PrunedQwen2PreTrainedModel", "PrunedQwen2Model", "PrunedQwen2ForCausalLM", "PrunedQwen2DecoderLayer"]
