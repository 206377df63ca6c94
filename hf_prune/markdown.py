"""Markdown tables: the one renderer behind every table the library prints or writes (reports, plans, the
configuration reference)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["table"]

_ALIGN = {"l": "---", "r": "---:"}


def _row(cells: Sequence[Any]) -> str:
    return "|" + "".join(f" {cell} |" if cell != "" else " |" for cell in cells)


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], align: str = "") -> str:
    """A markdown table.

    Args:
        head: the column names.
        rows: the rows, one cell per column (any value; ``str()`` of it, ``""`` for an empty cell).
        align: one letter per column, ``l`` (left) or ``r`` (right); missing letters mean left.

    Raises:
        ValueError: a row whose length differs from the head's, or an alignment letter other than ``l`` / ``r``.
    """
    if set(align) - set(_ALIGN) or len(align) > len(head):
        raise ValueError(f"align must be up to {len(head)} letters l / r, got {align!r}")
    rows = [list(r) for r in rows]
    for r in rows:
        if len(r) != len(head):
            raise ValueError(f"a row of {len(r)} cells in a table of {len(head)} columns: {r!r}")
    rule = "|" + "|".join(_ALIGN[a] for a in align.ljust(len(head), "l")) + "|"
    return "\n".join([_row(head), rule, *map(_row, rows)])
