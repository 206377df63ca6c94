"""Pruning plans shaped like the plans ``gisp`` makes, for any Qwen2 shape, without calibration.

Speed depends only on the sizes a plan keeps, so the GPU benchmark does not prune: it builds plans whose per-layer
MLP widths follow the depth profile of the real ``gisp`` plans of Qwen2.5-Coder-0.5B (``quality_qwen.json``: all
heads kept, widths falling with depth), scaled to remove exactly the requested fraction of decoder-layer parameters
of the model at hand. The ``kv`` variant also removes half the KV groups (with their query heads) of every other
layer, as plans with KV groups removed do. Which channels survive is irrelevant to speed: the first ones are kept.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench_format import round_width

from hf_prune import PruningPlan
from hf_prune.format.geometry import ModelGeometry
from hf_prune.format.plan import LayerPlan

QUALITY = Path(__file__).resolve().parents[1] / "results" / "quality_qwen.json"
QUALITY_INTERMEDIATE = 4864  # Qwen2.5-Coder-0.5B's MLP width: the widths in QUALITY are of it
#: Used when the quality results are missing: gisp's kept MLP fractions on Qwen2.5-Coder-0.5B at 30% (24 layers).
FALLBACK_PROFILE = (0.87, 0.73, 0.77, 0.8, 0.75, 0.69, 0.75, 0.74, 0.69, 0.68, 0.62, 0.66, 0.63, 0.62, 0.57, 0.58,
                    0.59, 0.57, 0.57, 0.58, 0.56, 0.57, 0.55, 0.61)


def gisp_profile(level: float) -> list[float]:
    """Kept MLP fraction per layer of gisp's Qwen2.5-Coder-0.5B plan at the nearest measured level."""
    try:
        data = json.loads(QUALITY.read_text())
        levels = data["methods"]["gisp"]["levels"]
        nearest = min(levels, key=lambda s: abs(float(s) - level))
        return [w / QUALITY_INTERMEDIATE for w in levels[nearest]["kept"]["mlp_widths"]]
    except (OSError, KeyError, ValueError):
        return list(FALLBACK_PROFILE)


def resample(profile: list[float], n: int) -> list[float]:
    """``profile`` linearly interpolated onto ``n`` evenly spaced layers."""
    if n == 1:
        return [sum(profile) / len(profile)]
    out = []
    for i in range(n):
        x = i * (len(profile) - 1) / (n - 1)
        lo = int(x)
        hi = min(lo + 1, len(profile) - 1)
        out.append(profile[lo] + (x - lo) * (profile[hi] - profile[lo]))
    return out


def _heads(shape, layer: int, drop_kv: bool) -> list[int]:
    """Every query head, or (``drop_kv``, odd layers) those of the first half of the KV groups."""
    if not drop_kv or layer % 2 == 0 or shape.num_key_value_heads < 2:
        return list(range(shape.num_attention_heads))
    return list(range(shape.group_size * (shape.num_key_value_heads // 2)))


def plan_like_gisp(model, level: float, multiple: int = 1, drop_kv: bool = False) -> PruningPlan:
    """A plan removing ``level`` of ``model``'s decoder-layer parameters, MLP widths rounded to ``multiple``."""
    geo = ModelGeometry.of(model)
    heads = [_heads(s, i, drop_kv) for i, s in enumerate(geo.shapes)]
    kv = [len(h) // s.group_size for h, s in zip(heads, geo.shapes)]
    profile = resample(gisp_profile(level), len(geo.shapes))
    target = (1.0 - level) * geo.total_params()

    def widths(scale: float) -> list[int]:
        return [round_width(p * scale * s.intermediate_size, multiple, s.intermediate_size)
                for p, s in zip(profile, geo.shapes)]

    def kept(scale: float) -> int:
        return sum(geo.layer_params(len(h), k, w) for h, k, w in zip(heads, kv, widths(scale)))

    lo, hi = 0.0, 1.0 / min(profile)
    for _ in range(60):  # kept() grows with the scale: bisect to the target
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if kept(mid) < target else (lo, mid)
    scale = min((lo, hi), key=lambda s: abs(kept(s) - target))
    layers = [LayerPlan(query_heads=h, mlp_channels=list(range(w))) for h, w in zip(heads, widths(scale))]
    return PruningPlan(layers=layers, metadata={"name": f"gisp-shaped {level:.0%}", "multiple": multiple,
                                                "kv_groups_removed": drop_kv})


def removed_fraction(dense, pruned) -> float:
    """Fraction of decoder-layer parameters ``pruned`` lacks, counted from the two models' weights."""
    def count(model):
        return sum(p.numel() for p in model.model.layers.parameters())

    return 1.0 - count(pruned) / count(dense)
