"""Dependency-free PNG bar charts for model cards (zlib + struct; matplotlib is not a dependency).

The charts carry no text: the model card prints the numbers in a table next to the image.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

__all__ = ["encode_png", "bar_chart_png", "write_bar_chart"]

RGB = tuple[int, int, int]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Series colours (colour-blind friendly: blue, orange, green, purple).
DEFAULT_COLORS: tuple[RGB, ...] = ((0, 114, 178), (230, 159, 0), (0, 158, 115), (204, 121, 167))
_BACKGROUND: RGB = (255, 255, 255)
_AXIS: RGB = (90, 90, 90)
_SKIPPED: RGB = (200, 200, 200)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(width: int, height: int, rows: Sequence[bytes | bytearray]) -> bytes:
    """Encode an 8-bit RGB image given as ``height`` rows of ``3 * width`` bytes."""
    if width <= 0 or height <= 0:
        raise ValueError(f"PNG size must be positive, got {width}x{height}")
    if len(rows) != height or any(len(row) != 3 * width for row in rows):
        raise ValueError("rows must be `height` rows of 3 * width bytes (RGB)")
    # Filter type 0 (None) on every scanline: simple, and zlib compresses flat bar charts well anyway.
    raw = b"".join(b"\x00" + bytes(row) for row in rows)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit depth, colour type 2 = RGB
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")


def bar_chart_png(
    series: Sequence[Sequence[float | None]],
    *,
    colors: Sequence[RGB] = DEFAULT_COLORS,
    bar_width: int = 6,
    gap: int = 4,
    height: int = 160,
    margin: int = 8,
) -> bytes:
    """Grouped vertical bar chart: one group per index, one bar per series, values scaled to ``[0, 1]``.

    Each series is normalised by its own maximum (heads and intermediate sizes have different units),
    so a bar shows "fraction of the largest layer". ``None`` marks a skipped block: drawn as a short
    grey stub so it stays visible.
    """
    if not series or not series[0]:
        raise ValueError("bar_chart_png needs at least one non-empty series")
    n = len(series[0])
    if any(len(s) != n for s in series):
        raise ValueError("all series must have the same length")
    maxima = [max((v for v in s if v is not None), default=0.0) or 1.0 for s in series]
    group_w = len(series) * bar_width
    width = 2 * margin + n * group_w + (n - 1) * gap
    plot_h = height - 2 * margin
    pixels = [bytearray(bytes(_BACKGROUND) * width) for _ in range(height)]

    def fill(x0: int, x1: int, y0: int, y1: int, color: RGB) -> None:
        for y in range(max(y0, 0), min(y1, height)):
            pixels[y][3 * x0: 3 * x1] = bytes(color) * (x1 - x0)

    for i in range(n):
        for k, values in enumerate(series):
            x0 = margin + i * (group_w + gap) + k * bar_width
            value = values[i]
            if value is None:
                bar_h, color = 2, _SKIPPED
            else:
                bar_h = round(plot_h * max(0.0, float(value)) / maxima[k])
                color = colors[k % len(colors)]
            fill(x0, x0 + bar_width - 1, height - margin - bar_h, height - margin, color)
    fill(margin, width - margin, height - margin, height - margin + 1, _AXIS)  # baseline
    return encode_png(width, height, pixels)


def write_bar_chart(path: str | Path, series: Sequence[Sequence[float | None]], **kwargs: int) -> Path:
    """Write :func:`bar_chart_png` to ``path`` and return it."""
    path = Path(path)
    path.write_bytes(bar_chart_png(series, **kwargs))  # type: ignore[arg-type]
    return path
