"""The shipped modeling files use only the transformers names that docs/compatibility.md lists.

Those files run inside every published checkpoint on whatever transformers a user has: each name they take from
transformers is a promise that has to hold for years, so a new one must be a deliberate, documented choice.
"""

from __future__ import annotations

import ast
import json
import os
import os.path
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT
import torch

ROOT = REPO_ROOT
SHIPPED = sorted((ROOT / "modeling").glob("*_pruned_qwen*.py"))
THIRD_PARTY = ("transformers", "huggingface_hub", "safetensors")
# Objects whose members are not transformers names (the standard library and torch the files use).
KNOWN = (torch, torch.nn, torch.Tensor, torch.nn.Module(), os, os.path, re, json, dict, list, str, tuple, set, object)


def listed_names() -> set[str]:
    """Every `code` span of the doc's 'Names the shipped files use' section, split at commas."""
    text = (ROOT / "docs" / "compatibility.md").read_text(encoding="utf-8")
    section = text.split("## Names the shipped files use", 1)[1].split("\n## ", 1)[0]
    names = set()
    for span in re.findall(r"`([^`]+)`", section):
        names.update(part.strip() for part in span.split(",") if re.fullmatch(r"[A-Za-z_][\w.]*", part.strip()))
    # `transformers.Cache` lists the class; `Cache.get_seq_length` lists a member as `Owner.member`.
    return names | {name.rsplit(".", 1)[1] for name in names if "." in name and not name.startswith(THIRD_PARTY)}


def defined_names(paths: list[Path]) -> set[str]:
    """Functions and classes the shipped files define (the qwen3 files use the qwen2 files' helpers)."""
    return {node.name for path in paths for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
            if isinstance(node, (ast.FunctionDef, ast.ClassDef))}


def used_names(path: Path) -> tuple[set[str], set[str]]:
    """(third-party imports as dotted names, attribute and class-attribute names not defined in the shipped files)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports, attributes = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            imports.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            imports.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Attribute):
            attributes.add(node.attr)
        if isinstance(node, ast.ClassDef):  # class attributes override the parents' (e.g. `_no_split_modules`)
            for statement in node.body:
                targets = statement.targets if isinstance(statement, ast.Assign) else (
                    [statement.target] if isinstance(statement, ast.AnnAssign) else [])
                attributes.update(t.id for t in targets if isinstance(t, ast.Name))
    third_party = {name for name in imports if name.split(".")[0] in THIRD_PARTY}
    attributes -= defined_names(SHIPPED + [path])
    return third_party, {a for a in attributes if not any(hasattr(obj, a) for obj in KNOWN)}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_transformers_name_the_shipped_files_use_is_listed(path):
    listed = listed_names()
    imports, attributes = used_names(path)
    assert not sorted(imports - listed), f"{path.name} imports names docs/compatibility.md does not list"
    assert not sorted(attributes - listed), f"{path.name} uses attributes docs/compatibility.md does not list"


def test_the_list_is_not_padded_with_unused_imports():
    # The list must stay a true picture: an import no shipped file makes any more is removed from it.
    used = set().union(*(used_names(path)[0] for path in SHIPPED))
    listed = {name for name in listed_names() if name.startswith(THIRD_PARTY) and name.count(".") >= 1}
    assert listed <= used | {"transformers.__version__"}, sorted(listed - used)


def test_the_check_sees_a_new_name(tmp_path):
    # The checker itself: a file that starts using an internal helper is caught.
    fake = tmp_path / "modeling_pruned_fake.py"
    fake.write_text("from transformers.utils.generic import merge_with_config_defaults\n"
                    "def f(cache):\n    return cache.key_cache[0].get_seq_length()\n")
    imports, attributes = used_names(fake)
    listed = listed_names()
    assert imports - listed == {"transformers.utils.generic.merge_with_config_defaults"}
    assert attributes - listed == {"key_cache"}
