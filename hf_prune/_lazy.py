"""Lazy package attributes (PEP 562): ``hf_prune.prune`` imports the engine (and torch) on first use only.

``hf-prune --help``, argument parsing and data-spec checks then run without importing torch or transformers.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any


def lazy_attributes(namespace: dict[str, Any], exports: Mapping[str, str],
                    moved: Mapping[str, str] | None = None) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for the package whose ``globals()`` is ``namespace``: ``name`` is looked up in
    the submodule ``exports[name]`` (relative to the package) on first access.

    ``moved``: names the package no longer offers, each with the module that does (absolute); they still resolve,
    with a :class:`DeprecationWarning` naming that module, for one release. They are not listed by ``dir()``.
    """
    package = namespace["__name__"]
    moved = dict(moved or {})

    def __getattr__(name: str) -> Any:
        # `from package import name` looks the name up twice (importlib's hasattr, then the import itself): the
        # warning is given once, at the import, which is the line to change.
        if name in moved and "importlib._bootstrap" not in sys._getframe(1).f_code.co_filename:
            warnings.warn(f"{package}.{name} is deprecated and will be removed in the next release; import it from "
                          f"{moved[name]} instead.", DeprecationWarning, stacklevel=2)
        if name in moved:
            return getattr(importlib.import_module(moved[name]), name)
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], package), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
