# Copyright 2026 The hf-prune developers. Licensed under the Apache License, Version 2.0.
#
# This file ships inside every pruned checkpoint (remote code): it may import only the standard library, torch,
# transformers (and huggingface_hub, which transformers installs) and its sibling files. Every transformers name it
# uses is listed in docs/compatibility.md (a test keeps the list complete).
"""Configuration of a structurally pruned Qwen2 model: every decoder layer has its own sizes."""

import re
from typing import Any

import transformers
from huggingface_hub.dataclasses import strict
from transformers import Qwen2Config

PRUNED_QWEN2_FORMAT_VERSION = 1
"""Version of the checkpoint format written by this file. Bump it when the meaning of a field changes."""

#: transformers versions this file works with, ``[lowest, first unsupported)``. It runs against whatever the
#: user has installed, long after it was written, so it is guarded: before 5.16.1 there is no ``per_layer_config``;
#: a new major version may change the Qwen2 classes it builds on. CI tests the lowest, the newest 5.22.x, the newest
#: release and any newer pre-release.
SUPPORTED_TRANSFORMERS = ((5, 16, 1), (6, 0, 0))
SUPPORTED_TRANSFORMERS_SPEC = ">=5.16.1,<6"


def check_transformers_version(version: str = transformers.__version__) -> None:
    """Raise ``ImportError`` unless ``version`` is in :data:`SUPPORTED_TRANSFORMERS`."""
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    lowest, first_unsupported = SUPPORTED_TRANSFORMERS
    found = None if match is None else (int(match[1]), int(match[2]), int(match[3] or 0))
    if found is None or not lowest <= found < first_unsupported:
        raise ImportError(
            f"pruned_qwen2 / pruned_qwen3 checkpoints need transformers {SUPPORTED_TRANSFORMERS_SPEC}; transformers "
            f"{version} is installed. Run: pip install 'transformers{SUPPORTED_TRANSFORMERS_SPEC}'"
        )


check_transformers_version()

_SKIPPABLE = ("attention", "mlp")


class PerLayerSizesMixin:
    """Per-layer sizes for a Qwen-family config: checks and reads transformers' ``per_layer_config``.

    Shared by ``PrunedQwen2Config`` and ``PrunedQwen3Config`` (whose file imports it from here), so both model types
    read, check and version per-layer sizes in one way. A subclass declares the dataclass fields ``head_dim`` and
    ``pruned_format_version`` itself: strict dataclasses only collect fields from dataclass bases.
    """

    def __post_init__(self, **kwargs: Any) -> None:
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.pruned_format_version > PRUNED_QWEN2_FORMAT_VERSION:
            raise ValueError(
                f"This checkpoint uses {self.model_type} format version {self.pruned_format_version}, but the installed "
                f"code reads versions up to {PRUNED_QWEN2_FORMAT_VERSION}: upgrade hf-prune (or load with "
                "trust_remote_code=True)."
            )
        super().__post_init__(**kwargs)
        # Checked here, at construction, so a bad config fails before any weights are allocated or loaded, as a
        # plain ValueError (strict's `validate_*` class validators would wrap it in another exception type).
        self._check_layer_sizes()

    def _check_layer_sizes(self) -> None:
        for idx, sizes in enumerate(self.layer_sizes()):
            heads, kv_heads, width = sizes["num_attention_heads"], sizes["num_key_value_heads"], sizes["intermediate_size"]
            if heads is not None:
                if heads <= 0 or kv_heads <= 0:
                    raise ValueError(
                        f"Layer {idx}: {heads} attention heads / {kv_heads} key-value heads; a removed attention "
                        "sublayer is written as skip=['attention'], never as 0 heads."
                    )
                if heads % kv_heads:
                    raise ValueError(
                        f"Layer {idx}: {heads} attention heads are not divisible by {kv_heads} key-value heads."
                    )
            if width is not None and width <= 0:
                raise ValueError(f"Layer {idx}: intermediate_size {width}; a removed MLP is written as skip=['mlp'].")

    def layer_size(self, idx: int) -> dict[str, Any]:
        """Resolved sizes of layer ``idx``: heads, KV heads and MLP width, ``None`` for a removed sublayer.

        The one place where a layer's ``skip`` list is turned into sizes.
        """
        layer = self.per_layer_config[idx]
        skip = set(getattr(layer, "skip", None) or [])
        unknown = skip.difference(_SKIPPABLE)
        if unknown:
            raise ValueError(f"Layer {idx}: unknown `skip` entries {sorted(unknown)}; allowed: {list(_SKIPPABLE)}.")
        return {
            "num_attention_heads": None if "attention" in skip else layer.num_attention_heads,
            "num_key_value_heads": None if "attention" in skip else layer.num_key_value_heads,
            "intermediate_size": None if "mlp" in skip else layer.intermediate_size,
        }

    def layer_sizes(self) -> list[dict[str, Any]]:
        """:meth:`layer_size` of every layer."""
        return [self.layer_size(idx) for idx in range(self.num_hidden_layers)]


@strict
class PrunedQwen2Config(PerLayerSizesMixin, Qwen2Config):
    r"""
    A [`~transformers.Qwen2Config`] whose decoder layers may differ in size.

    Per-layer sizes are stored with transformers' own `per_layer_config` mechanism, sparsely: only values that
    differ from the global ones are written. Each layer may override

    - `intermediate_size`: MLP width of that layer,
    - `num_attention_heads` / `num_key_value_heads`: query and key/value heads of that layer,
    - `skip`: `["attention"]` and/or `["mlp"]` for a sublayer that was removed entirely (it holds no weights,
      not even its pre-norm). A head count or width is never 0: a removed sublayer is a `skip`.

    Read a layer's sizes with `config.per_layer_config[i].intermediate_size`, or all of them with
    [`~PrunedQwen2Config.layer_sizes`]; reading a size that varies across layers from the global config raises
    `AmbiguousGlobalPerLayerAttributeError`.

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


__all__ = ["PerLayerSizesMixin", "PrunedQwen2Config", "PRUNED_QWEN2_FORMAT_VERSION", "SUPPORTED_TRANSFORMERS",
           "SUPPORTED_TRANSFORMERS_SPEC"]
