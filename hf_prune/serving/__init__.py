"""Serving exports: stock Qwen2, DeciLM (vLLM / SGLang) and GGUF (llama.cpp) from a pruned model.

May import: ``hf_prune.format``, ``loading``, ``registration``, ``errors``, ``fileio``; torch, transformers, gguf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_EXPORTS = {"export": ".api", "register_exporter": ".api", "exporter_for": ".api", "FORMATS": ".api"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS)

if TYPE_CHECKING:
    from .api import FORMATS, export, exporter_for, register_exporter
