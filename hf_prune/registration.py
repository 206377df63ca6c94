"""Registers the ``pruned_qwen2`` / ``pruned_qwen3`` model types with transformers' Auto classes on ``import hf_prune``.

Importing transformers' Auto classes imports torch (seconds), and ``import hf_prune`` must stay instant (the
command line imports it to print ``--help``). So :func:`register_on_import` registers at once when transformers
is already imported, and otherwise right after it has been imported: either way ``AutoModelForCausalLM`` knows
both by the time a program can call it.

Registering imports hf-prune's own modeling files, which import transformers themselves; when it is one of them
that first imports transformers, registration waits until they have finished (an import hook watches the three
modules and registers after the last one to finish).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["register", "register_on_import"]

_MODELING = ("hf_prune.modeling.configuration_pruned_qwen2", "hf_prune.modeling.modeling_pruned_qwen2",
             "hf_prune.modeling.configuration_pruned_qwen3", "hf_prune.modeling.modeling_pruned_qwen3")


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` resolve ``pruned_qwen2`` and ``pruned_qwen3``.

    Idempotent. Registering against the stock ``Qwen2Config`` / ``Qwen3Config`` would be silently ignored, hence the
    own config classes and model types.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    from .modeling.configuration_pruned_qwen2 import PrunedQwen2Config
    from .modeling.configuration_pruned_qwen3 import PrunedQwen3Config
    from .modeling.modeling_pruned_qwen2 import PrunedQwen2ForCausalLM, PrunedQwen2Model
    from .modeling.modeling_pruned_qwen3 import PrunedQwen3ForCausalLM, PrunedQwen3Model

    for config, model, causal_lm in ((PrunedQwen2Config, PrunedQwen2Model, PrunedQwen2ForCausalLM),
                                     (PrunedQwen3Config, PrunedQwen3Model, PrunedQwen3ForCausalLM)):
        AutoConfig.register(config.model_type, config, exist_ok=True)
        AutoModel.register(config, model, exist_ok=True)
        AutoModelForCausalLM.register(config, causal_lm, exist_ok=True)


class _ImportWatch(importlib.abc.MetaPathFinder):
    """Runs :func:`register` once transformers and hf-prune's modeling files, whichever import first, are loaded."""

    def __init__(self) -> None:
        self.pending = {"transformers", *_MODELING} - set(sys.modules)
        self.executing: set[str] = set()
        self.registering = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)  # the regular finders (this one skips what it has seen)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        execute = spec.loader.exec_module

        def exec_module(module) -> None:
            self.executing.add(fullname)
            try:
                execute(module)
            finally:
                self.executing.discard(fullname)
            self.loaded()

        spec.loader.exec_module = exec_module
        return spec

    def loaded(self) -> None:
        # A modeling file still executing (it is what imported transformers) cannot be imported yet: the hook of
        # the last one to finish registers.
        if self.registering or "transformers" not in sys.modules or self.executing:
            return
        self.registering = True
        try:
            register()
        except Exception as err:  # noqa: BLE001 - runs inside the user's import: never make that import fail
            warnings.warn(f"hf_prune could not register the pruned_qwen2/pruned_qwen3 model types: {err}", RuntimeWarning,
                          stacklevel=2)
        finally:
            self.registering = False


def register_on_import() -> None:
    """:func:`register` now if transformers is imported, else as soon as it is (see the module docstring)."""
    if any(isinstance(finder, _ImportWatch) for finder in sys.meta_path):
        return
    watch = _ImportWatch()
    if "transformers" in sys.modules:
        watch.loaded()
    else:
        sys.meta_path.insert(0, watch)
