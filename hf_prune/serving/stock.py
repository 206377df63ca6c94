"""The ``qwen2`` / ``qwen3`` exports: a stock checkpoint of the model's family, for a model whose layers all have
one shape (plain transformers, no hf-prune, no remote code)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..format.geometry import config_shapes, uniform_shape

__all__ = ["check", "write"]


def check(config: Any) -> None:
    """Refuse a config whose layers differ in shape (or lost a sublayer): a stock model has one global shape."""
    stock = "qwen3" if "qwen3" in config.model_type else "qwen2"
    uniform_shape(config_shapes(config), stock, "export deci (vLLM / SGLang) or gguf (llama.cpp) instead"
                  if stock == "qwen2" else "serve the pruned_qwen3 checkpoint with transformers")


def write(model: Any, tokenizer: Any, folder: Path, *, dtype: str | None = None) -> None:
    """Save ``model`` (converted by :func:`hf_prune.format.to_stock` if pruned) and its tokenizer into ``folder``."""
    from ..format.slicing import to_stock

    if not getattr(model.config, "model_type", "").startswith("pruned_"):
        stock = model
    else:
        stock = to_stock(model)
    stock.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
