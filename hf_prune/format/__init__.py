"""The pruned model format: plans (what each layer keeps), per-layer geometry, slicing, conversion, checkpoints.

May import: ``hf_prune.modeling`` (the shipped config/modeling files), ``errors``, ``fileio``, ``options``;
torch and transformers. Knows nothing of scores, data or the Hub.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_EXPORTS = {
    "LayerPlan": ".plan", "LayerShape": ".plan", "PruningPlan": ".plan",
    "check_supported": ".geometry", "head_dim_of": ".geometry", "layer_shapes": ".geometry",
    "apply_plan": ".slicing", "to_stock": ".slicing", "to_qwen2": ".slicing", "to_qwen3": ".slicing",
    "Family": ".family", "family_of": ".family",
    "llama_to_qwen2": ".convert",
    "save_pruned_model": ".checkpoint", "check_checkpoint": ".checkpoint", "PLAN_FILE": ".checkpoint",
    "refresh_code_files": ".refresh", "stale_code_files": ".refresh",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS)

if TYPE_CHECKING:
    from .checkpoint import PLAN_FILE, check_checkpoint, save_pruned_model
    from .refresh import refresh_code_files, stale_code_files
    from .convert import llama_to_qwen2
    from .geometry import check_supported, head_dim_of, layer_shapes
    from .plan import LayerPlan, LayerShape, PruningPlan
    from .family import Family, family_of
    from .slicing import apply_plan, to_qwen2, to_qwen3, to_stock
