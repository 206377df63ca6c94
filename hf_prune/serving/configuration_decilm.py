# Copyright 2026 The hf-prune developers. Licensed under the Apache License, Version 2.0.
#
# This file ships inside every DeciLM ("nemotron-nas") export of hf-prune: it may import only the standard library
# and transformers. vLLM and SGLang load it with --trust-remote-code (neither carries a config class for
# nemotron-nas: they read NVIDIA's remote-code config, which this file stands in for).
"""Configuration of a DeciLM / nemotron-nas checkpoint: a Llama config with one ``block_configs`` entry per layer."""

from typing import Any

from transformers import LlamaConfig


class BlockSection(dict):
    """One sublayer's settings (``attention`` or ``ffn``) of a ``block_configs`` entry.

    A plain dict, so the config serialises to JSON as is, whose keys also read as attributes, as the servers read
    them (``block.attention.n_heads_in_group``). A key that is not stored is not an attribute either: vLLM takes
    ``ffn.ffn_mult`` when ``hasattr`` finds it and ``ffn.intermediate_size`` otherwise.
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _block(entry: dict) -> BlockSection:
    return BlockSection({key: BlockSection(value) if isinstance(value, dict) else value for key, value in entry.items()})


class DeciLMConfig(LlamaConfig):
    """A :class:`~transformers.LlamaConfig` whose layers each have a ``block_configs`` entry:
    ``{"attention": {"no_op": bool, "n_heads_in_group": int}, "ffn": {"no_op": bool, "intermediate_size": int}}``.
    """

    model_type = "nemotron-nas"

    def __init__(self, block_configs: list | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.block_configs = [_block(dict(entry)) for entry in (block_configs or [])]


__all__ = ["DeciLMConfig", "BlockSection"]
