# Copyright 2026 The hf-prune developers. Licensed under the Apache License, Version 2.0.
#
# This file ships inside every pruned checkpoint (remote code): it may import only the standard library, torch,
# transformers (and huggingface_hub / safetensors, which transformers installs) and its sibling files. Every
# transformers name it uses is listed in docs/compatibility.md (a test keeps the list complete).
"""Qwen2 with per-layer sizes: each decoder layer is built from its own resolved config.

Attention, MLP, norms and RoPE are transformers' Qwen2 modules, and the causal-LM head and generation are inherited,
so a pruned model behaves like the model it was cut from. The decoder stack's forward is this file's own short loop
(as transformers' own modeling files are self-contained): it depends only on the documented `Cache` API and masking
utilities, not on how the installed version's `Qwen2Model.forward` handles a layer without attention.

Layers without attention hold no KV cache: the cache holds the layers that have attention, in order (a layer
writes to the slot of its rank among them), so whatever reads the cache's layer 0 (its length, mask sizes,
generation's bookkeeping) reads a layer that has attention. Each attention module keeps `layer_idx` = its layer's
position in the stack, which serving stacks (vLLM's and SGLang's Transformers backends) use to find its KV cache.
"""

import torch
from torch import nn
from transformers import Cache, DynamicCache, GradientCheckpointingLayer, PreTrainedModel
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
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


class CacheSlot:
    """The KV cache as one attention layer sees it: ``update`` writes to slot ``index`` of the cache.

    The stock attention module calls ``cache.update(keys, values, self.layer_idx, ...)`` with its position in the
    stack; the pruned model's cache holds only the layers that have attention, so the write goes to the layer's rank
    among them. Everything else is the cache's own.
    """

    def __init__(self, cache: Cache, index: int):
        self.cache, self.index = cache, index

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        return self.cache.update(key_states, value_states, self.index, *args, **kwargs)

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "cache":  # not delegated: copying, pickling, a half-built slot
            raise AttributeError(name)
        return getattr(self.cache, name)


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
        self.cache_index: int | None = None  # rank among the layers with attention: set by the model

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
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(hidden_states, attention weights)``; the weights are ``None`` without attention or from fused kernels."""
        weights = None
        if self.self_attn is not None:
            slot = None if cache is None else CacheSlot(cache, self.cache_index)
            # Positional: the cache parameter is named `past_key_values` before transformers 5.24 and `cache` after.
            attn_out, weights = self.self_attn(
                self.input_layernorm(hidden_states), position_embeddings, attention_mask, slot, **kwargs
            )
            hidden_states = hidden_states + attn_out
        if self.mlp is not None:
            hidden_states = hidden_states + self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states, weights


class PrunedPreTrainedMixin:
    """``from_pretrained`` that refuses weights which disagree with config.json (shared by Qwen2 and Qwen3).

    A tensor of the wrong shape, or one the per-layer sizes need but the checkpoint lacks (transformers would initialise
    it at random and only log it), is named in a ``ValueError``.
    """

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, output_loading_info: bool = False, **kwargs):
        try:
            model, info = super().from_pretrained(pretrained_model_name_or_path, *args, output_loading_info=True,
                                                  **kwargs)
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
        missing = sorted(info.get("missing_keys") or ())
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise ValueError(
                f"This checkpoint lacks {len(missing)} weight tensor(s) that the per-layer sizes in its config.json "
                f"need: {shown}. The checkpoint is incomplete (a missing shard, or an edited index): download or "
                "re-export it."
            )
        return (model, info) if output_loading_info else model


class PrunedQwen2PreTrainedModel(PrunedPreTrainedMixin, Qwen2PreTrainedModel):
    config: PrunedQwen2Config
    config_class = PrunedQwen2Config
    _no_split_modules = ["PrunedQwen2DecoderLayer"]
    # Hidden states and attention weights are collected by the model's own forward loop, not by output hooks.
    _can_record_outputs = None


def _checkpoint_file(path, name: str, kwargs) -> str | None:
    """``name`` in a local checkpoint folder or, for a Hub id, in the local Hub cache (no download); else ``None``."""
    import os

    from huggingface_hub import try_to_load_from_cache

    subfolder = kwargs.get("subfolder") or ""
    if os.path.isdir(path):
        found = os.path.join(path, subfolder, name)
        return found if os.path.isfile(found) else None
    found = try_to_load_from_cache(str(path), os.path.join(subfolder, name) if subfolder else name,
                                   cache_dir=kwargs.get("cache_dir"), revision=kwargs.get("revision"))
    return found if isinstance(found, str) else None


def _checkpoint_shapes(path, kwargs) -> dict[str, list[int]]:
    """Tensor shapes from the safetensors headers of a checkpoint (local folder or Hub cache); no weights read."""
    import json
    import os

    from safetensors import safe_open  # a dependency of transformers itself

    files = []
    index = _checkpoint_file(path, "model.safetensors.index.json", kwargs)
    if index is not None:
        with open(index, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        files = [os.path.join(os.path.dirname(index), shard) for shard in shards]
    elif (single := _checkpoint_file(path, "model.safetensors", kwargs)) is not None:
        files = [single]
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

    Mixed in before the stock model class (``Qwen2Model`` / ``Qwen3Model``); its constructor and forward pass replace
    the stock ones. A subclass names the stock modules it is built from.
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
        self.has_sliding_layers = "sliding_attention" in config.layer_types
        self._number_cache_layers(config)

        self.post_init()

    def _number_cache_layers(self, config: PrunedQwen2Config) -> None:
        # The cache holds the layers that have attention, in order (see the module docstring).
        with_attention = [i for i, layer in enumerate(self.layers) if layer.self_attn is not None]
        for rank, idx in enumerate(with_attention):
            self.layers[idx].cache_index = rank
        # A cache built from the config (as `generate()` builds one) gives cache layer `rank` the type of model layer
        # `rank`; that is only right if removing attention sublayers leaves the sliding/full pattern in place.
        types = list(config.layer_types)
        if [types[i] for i in with_attention] != types[: len(with_attention)]:
            raise ValueError(
                "This pruned model removes whole attention sublayers from a model that mixes sliding-window and full "
                "attention layers, which shifts the cache's layer types; such checkpoints are not supported."
            )

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | dict | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        past_key_values: Cache | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPast | tuple:
        # Both names of the cache are accepted: callers written for any supported transformers version pass one.
        cache = cache if cache is not None else past_key_values
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        use_cache = self._option("use_cache", use_cache)
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # The backward pass replays each layer, which would append to the cache a second time.
            use_cache, cache = False, None
        if inputs_embeds is None:
            inputs_embeds = self.embed_tokens(input_ids)
        if use_cache and cache is None:
            cache = DynamicCache()  # one layer per attention layer, created as they are written
        if position_ids is None:
            past = cache.get_seq_length() if cache is not None else 0
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0) + past
        masks = attention_mask  # `generate()` may pass them ready, one per layer type
        if not isinstance(masks, dict):
            masks = self._causal_masks(inputs_embeds, attention_mask, cache, position_ids)

        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids)
        all_hidden = [] if self._option("output_hidden_states", output_hidden_states) else None
        all_attentions = [] if self._option("output_attentions", output_attentions) else None
        for layer, layer_type in zip(self.layers, self.config.layer_types):
            if all_hidden is not None:
                all_hidden.append(hidden_states)
            hidden_states, weights = layer(
                hidden_states, position_embeddings=position_embeddings, attention_mask=masks[layer_type],
                cache=cache, position_ids=position_ids, **kwargs,
            )
            if all_attentions is not None and layer.self_attn is not None:
                all_attentions.append(weights)
        hidden_states = self.norm(hidden_states)
        if all_hidden is not None:
            all_hidden.append(hidden_states)  # as in transformers: the last entry is after the final norm

        # Positional: the cache field is named `past_key_values` before transformers 5.24 and `cache` after.
        out = BaseModelOutputWithPast(
            hidden_states,
            cache if use_cache else None,
            tuple(all_hidden) if all_hidden is not None else None,
            tuple(all_attentions) if all_attentions is not None else None,
        )
        return out if self._option("return_dict", return_dict) else out.to_tuple()

    def _option(self, name: str, value: bool | None) -> bool:
        """``value``, or the config's default for it (``return_dict`` defaults to true)."""
        return bool(getattr(self.config, name, name == "return_dict")) if value is None else value

    def _causal_masks(self, inputs_embeds, attention_mask, cache, position_ids) -> dict:
        """The attention mask of each layer type, from transformers' masking utilities."""
        # Positional: the cache parameter is named `past_key_values` before transformers 5.24 and `cache` after.
        args = (self.config, inputs_embeds, attention_mask, cache, position_ids)
        masks = {"full_attention": create_causal_mask(*args)}
        if self.has_sliding_layers:
            masks["sliding_attention"] = create_sliding_window_causal_mask(*args)
        return masks


class PrunedQwen2Model(PrunedQwen2PreTrainedModel, PerLayerModelMixin, Qwen2Model):
    """[`~transformers.Qwen2Model`] whose layers each have their own sizes (see [`PrunedQwen2Config`])."""

    decoder_layer_class = PrunedQwen2DecoderLayer
    norm_class = Qwen2RMSNorm
    rotary_class = Qwen2RotaryEmbedding


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

__all__ = ["PerLayerModelMixin", "PerLayerCausalLMMixin", "PrunedPreTrainedMixin",
           "PrunedQwen2PreTrainedModel", "PrunedQwen2Model", "PrunedQwen2ForCausalLM", "PrunedQwen2DecoderLayer"]
