"""The offline demo and its fixtures: real small weights and real multi-domain text from the package registries.

Used by ``hf-prune demo``, the tests and the benchmarks; the library itself never imports it.

May import: ``job`` (the demo is one run of the main job), ``data``, ``format``, ``errors``, ``fileio``.
"""

from __future__ import annotations

from .run import DEMO_LEVELS, PROMPT, run_demo

__all__ = ["run_demo", "DEMO_LEVELS", "PROMPT"]
