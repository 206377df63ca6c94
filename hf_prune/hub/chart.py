"""The model card's per-layer chart: kept attention heads and MLP width of every layer (matplotlib, no display)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["layer_figure", "write_layer_chart"]

_KEPT, _KV, _DENSE, _REMOVED = "#0072B2", "#E69F00", "#555555", "#CC3311"  # colour-blind friendly


def _series(layers: Sequence[Mapping[str, Any]], key: str) -> list[int]:
    return [int(layer.get(key) or 0) for layer in layers]


def layer_figure(layers: Sequence[Mapping[str, Any]], base_layers: Sequence[Mapping[str, Any]] = (),
                 title: str | None = None):
    """A two-panel :class:`matplotlib.figure.Figure`: attention heads (query and KV) and MLP width per layer.

    ``layers`` are the pruned model's per-layer sizes (0 = sublayer removed, marked with a red x);
    ``base_layers``, when given, are drawn as the dense model's sizes for reference.
    """
    from matplotlib.figure import Figure

    index = list(range(len(layers)))
    figure = Figure(figsize=(max(6.0, 0.28 * len(layers) + 2.5), 5.0), layout="constrained")
    heads_axis, mlp_axis = figure.subplots(2, 1, sharex=True)
    for axis, key, label, unit in ((heads_axis, "num_attention_heads", "kept query heads", "attention heads"),
                                   (mlp_axis, "intermediate_size", "kept MLP channels", "MLP width")):
        values = _series(layers, key)
        axis.bar(index, values, color=_KEPT, label=label)
        if key == "num_attention_heads":
            axis.bar(index, _series(layers, "num_key_value_heads"), width=0.4, color=_KV, label="kept KV heads")
        if base_layers:
            axis.step([i - 0.5 for i in index] + [index[-1] + 0.5], [*_series(base_layers, key), _series(base_layers, key)[-1]],
                      where="post", color=_DENSE, linestyle="--", linewidth=1, label="dense model")
        removed = [i for i, v in enumerate(values) if v == 0]
        if removed:
            axis.plot(removed, [0] * len(removed), "x", color=_REMOVED, markersize=8, clip_on=False,
                      label="sublayer removed")
        axis.set_ylabel(unit)
        axis.grid(axis="y", alpha=0.3)
        axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    mlp_axis.set_xlabel("decoder layer")
    mlp_axis.set_xticks(index[:: max(1, len(index) // 16)])
    if title:
        figure.suptitle(title)
    return figure


def write_layer_chart(path: str | os.PathLike, layers: Sequence[Mapping[str, Any]],
                      base_layers: Sequence[Mapping[str, Any]] = (), *, title: str | None = None) -> Path:
    """Save :func:`layer_figure` as a PNG at ``path`` (no timestamp or version in it: same sizes, same bytes)."""
    path = Path(path)
    layer_figure(layers, base_layers, title).savefig(path, format="png", dpi=100, metadata={"Software": None})
    return path
