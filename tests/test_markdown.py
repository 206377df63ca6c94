"""The one markdown-table renderer (hf_prune.markdown.table)."""

from __future__ import annotations

import pytest

from hf_prune.markdown import table


def _parse(text: str) -> tuple[list[str], list[str], list[list[str]]]:
    """An independent reading of a pipe table: (head, alignment rule cells, rows)."""
    lines = text.split("\n")
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return cells[0], cells[1], cells[2:]


def test_round_trip_with_alignment_and_empty_cells():
    text = table(["task", "n", "acc"], [["a", 3, "0.5"], ["**mean**", 0, ""]], "lr")
    head, rule, rows = _parse(text)
    assert head == ["task", "n", "acc"]
    assert rule == ["---", "---:", "---"]  # missing letters mean left
    assert rows == [["a", "3", "0.5"], ["**mean**", "0", ""]]  # 0 is a value, "" an empty cell
    assert text.split("\n")[-1] == "| **mean** | 0 | |"


def test_refuses_ragged_rows_and_unknown_alignment():
    with pytest.raises(ValueError, match="2 cells in a table of 3 columns"):
        table(["a", "b", "c"], [["x", "y"]])
    with pytest.raises(ValueError, match="letters l / r"):
        table(["a", "b"], [], "lc")
    with pytest.raises(ValueError, match="letters l / r"):
        table(["a"], [], "lr")
