"""The import rules of docs/architecture.md, read from the source: layers, what each part may import, no cycle.

Every module's imports are parsed (``ast``: top-level, inside functions and under ``TYPE_CHECKING`` alike: an arrow
is an arrow) and mapped to the part of the package they belong to (a sub-package, or a top-level module).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

ROOT = REPO_ROOT

#: The layers, lowest first: a part may import parts of its own layer or below, never above.
LAYERS = [
    ("foundation", {"errors", "options", "_lazy", "compat", "fileio", "markdown"}),
    ("modeling", {"modeling"}),
    ("format", {"format", "registration", "loading"}),
    ("data", {"data"}),
    ("evaluation, hub, serving, recovery", {"evaluation", "accuracy", "harness", "hub", "serving", "recovery"}),
    ("recipe", {"presets", "config"}),
    ("engine", {"engine"}),
    ("job", {"job", "pipeline"}),
    ("entry points", {"demo", "cli", "__main__", "hf_prune"}),
]
LAYER = {part: i for i, (_, parts) in enumerate(LAYERS) for part in parts}

#: What each part may import (``_lazy``, the lazy-attribute plumbing of every package, is left out).
RULES: dict[str, set[str]] = {
    "errors": set(), "options": set(), "_lazy": set(), "compat": set(), "markdown": set(), "fileio": {"errors"},
    "modeling": {"errors"},
    "registration": {"modeling"},
    "format": {"modeling", "errors", "fileio", "options"},
    "loading": {"format", "registration", "errors"},
    "data": {"errors", "fileio", "options"},
    "evaluation": {"data", "errors", "markdown", "options"},
    "harness": set(),
    "accuracy": {"harness", "data", "errors", "fileio", "markdown", "options"},
    "hub": {"modeling", "errors", "options"},
    "serving": {"format", "loading", "registration", "errors", "fileio"},
    "recovery": {"data", "compat", "errors", "fileio", "markdown", "options"},
    "presets": set(),
    "config": {"presets", "recovery", "errors", "fileio", "markdown", "options"},
    "engine": {"config", "presets", "data", "format", "compat", "errors", "fileio", "markdown", "options"},
    "job": {"config", "presets", "data", "format", "engine", "evaluation", "accuracy", "hub", "recovery", "serving",
            "loading", "registration", "errors", "fileio", "markdown", "options"},
    "pipeline": {"job", "config"},
    "demo": {"job", "data", "format", "errors", "fileio"},
    "cli": {"job", "config", "recovery", "engine", "serving", "demo", "errors", "fileio", "markdown"},
    "__main__": {"cli"},
    "hf_prune": set(LAYER) - {"hf_prune"},
}
#: Packages whose ``__init__`` does not state its rules (the shipped model format's own, kept apart).
UNSTATED = {"modeling"}


def _modules() -> dict[str, Path]:
    """Dotted name -> file, for ``hf_prune`` and the ``modeling/`` folder installed as ``hf_prune.modeling``."""
    out = {}
    for path in (ROOT / "hf_prune").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in (ROOT / "modeling").glob("*.py"):
        out["hf_prune.modeling" + ("" if path.stem == "__init__" else f".{path.stem}")] = path
    return out


MODULES = _modules()


def _imports(name: str, source: str, package: bool = False) -> set[str]:
    """The hf_prune modules (or packages) that module ``name`` imports, anywhere in its body (``package``: it is
    a package's ``__init__``, which relative imports start from)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "hf_prune"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if package else name.split(".")[:-1]
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "hf_prune":
                found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names}
    return found


GRAPH = {name: _imports(name, path.read_text(encoding="utf-8"), path.name == "__init__.py")
         for name, path in MODULES.items()}


def part(module: str) -> str:
    """The part of the package a module belongs to: its sub-package, its own name at the top, ``hf_prune``."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "hf_prune"


def _violations(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Arrows of ``graph`` (module -> module) to a part the importing part's rule does not allow."""
    return sorted((m, t) for m, targets in graph.items() for t in targets
                  if part(t) not in (part(m), "_lazy") and part(t) not in RULES[part(m)])


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_part_has_a_layer_and_a_rule():
    parts = {part(m) for m in MODULES}
    assert parts == set(LAYER) == set(RULES), (parts ^ set(LAYER), parts ^ set(RULES))


@pytest.mark.parametrize("name", sorted(RULES))
def test_a_rule_points_only_down(name):
    up = sorted(p for p in RULES[name] if LAYER[p] > LAYER[name])
    assert not up, f"{name} (layer {LAYERS[LAYER[name]][0]!r}) may not import the higher {up}"


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_part_imports_only_what_its_rule_allows(name):
    bad = _violations({m: targets for m, targets in GRAPH.items() if part(m) == name})
    assert not bad, f"{name} may import {sorted(RULES[name])}; found " + ", ".join(f"{m} -> {t}" for m, t in bad)


def test_the_shipped_model_files_import_only_each_other():
    """They are copied into every checkpoint and run where hf-prune is not installed (its ``__init__`` is not)."""
    shipped = {m: targets for m, targets in GRAPH.items() if m.startswith("hf_prune.modeling.")}
    assert shipped and all(t.startswith("hf_prune.modeling.") for targets in shipped.values() for t in targets)


def test_no_cycle_between_parts_or_modules():
    parts: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        parts.setdefault(part(module), set()).update(part(t) for t in targets if part(t) != part(module))
    assert _cycle(parts) is None, " -> ".join(_cycle(parts))
    assert _cycle(GRAPH) is None, " -> ".join(_cycle(GRAPH))


def _stated(docstring: str) -> set[str]:
    """The parts named (``name`` or ``hf_prune.name``) in a docstring's ``May import:`` paragraph."""
    paragraph = docstring.split("May import:", 1)[1].split("\n\n", 1)[0]
    names = {n.removeprefix("hf_prune.") for n in re.findall(r"``([\w.]+)``", paragraph)}
    return names & set(RULES)


@pytest.mark.parametrize("package", sorted({part(m) for m, p in MODULES.items() if p.name == "__init__.py"}
                                           - {"hf_prune"} - UNSTATED))
def test_each_package_states_its_rule(package):
    docstring = ast.get_docstring(ast.parse(MODULES[f"hf_prune.{package}"].read_text(encoding="utf-8"))) or ""
    assert "May import:" in docstring, f"hf_prune/{package}/__init__.py does not say what it may import"
    assert _stated(docstring) - {"_lazy"} == RULES[package]


def test_the_checks_find_a_cycle_and_an_arrow_up():
    """The checks are not vacuous: a loop, and a lower part importing a higher one (even inside a function), fail."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    source = "def f():\n    from ..job.run import prune_and_push\n    from .pruner import prune\n"
    graph = {"hf_prune.engine.memory": _imports("hf_prune.engine.memory", source)}
    assert graph["hf_prune.engine.memory"] == {"hf_prune.job.run", "hf_prune.engine.pruner"}
    assert _violations(graph) == [("hf_prune.engine.memory", "hf_prune.job.run")]
