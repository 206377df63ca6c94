"""The ``qwen2`` export: a stock Qwen2 checkpoint, for a model whose layers all have one shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import NotUniformError
from .common import shapes_of

__all__ = ["check", "write"]


def check(config: Any) -> None:
    """Refuse a config whose layers differ in shape (or lost a sublayer): stock Qwen2 has one global shape."""
    distinct = sorted({(s.num_attention_heads, s.num_key_value_heads, s.intermediate_size) for s in shapes_of(config)})
    if len(distinct) != 1 or 0 in distinct[0]:
        raise NotUniformError(
            f"Only a model whose layers share one shape exports as stock qwen2; this one has layer shapes "
            f"(heads, kv heads, mlp width) {distinct[:4]}{' ...' if len(distinct) > 4 else ''}; export deci "
            "(vLLM / SGLang) or gguf (llama.cpp) instead."
        )


def write(model: Any, tokenizer: Any, folder: Path, *, dtype: str | None = None) -> None:
    """Save ``model`` (converted by :func:`hf_prune.to_qwen2` if pruned) and its tokenizer into ``folder``."""
    from ..format.slicing import to_qwen2

    if getattr(model.config, "model_type", None) != "qwen2":
        model = to_qwen2(model)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
