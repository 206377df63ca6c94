"""The model families hf-prune slices: stock Qwen2 / Qwen3 and their pruned counterparts.

A :class:`Family` names the four classes of one architecture, so that slicing, export and the checks pick the
right pruned / stock class for a model instead of assuming Qwen2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

from ..errors import UnsupportedModelError
from ..modeling.configuration_pruned_qwen2 import PrunedQwen2Config
from ..modeling.configuration_pruned_qwen3 import PrunedQwen3Config
from ..modeling.modeling_pruned_qwen2 import PrunedQwen2ForCausalLM
from ..modeling.modeling_pruned_qwen3 import PrunedQwen3ForCausalLM

__all__ = ["Family", "FAMILIES", "QWEN2", "QWEN3", "family_of"]


@dataclass(frozen=True)
class Family:
    """One architecture: its stock config / causal LM and the pruned (per-layer) ones.

    Attributes:
        name: the stock ``model_type`` (``"qwen2"``); the pruned one is ``"pruned_" + name``.
    """

    name: str
    stock_config: type
    stock_model: type
    pruned_config: type
    pruned_model: type

    @property
    def pruned_name(self) -> str:
        return self.pruned_config.model_type

    def holds(self, model: Any) -> bool:
        """Whether ``model`` is this family's stock or pruned causal LM."""
        return isinstance(model, (self.stock_model, self.pruned_model))


QWEN2 = Family("qwen2", Qwen2Config, Qwen2ForCausalLM, PrunedQwen2Config, PrunedQwen2ForCausalLM)
QWEN3 = Family("qwen3", Qwen3Config, Qwen3ForCausalLM, PrunedQwen3Config, PrunedQwen3ForCausalLM)
FAMILIES = (QWEN2, QWEN3)


def family_of(model: Any) -> Family:
    """The :class:`Family` of ``model``.

    Raises:
        UnsupportedModelError: ``model`` is none of the families (a Llama model is named with its conversion).
    """
    for family in FAMILIES:
        if family.holds(model):
            return family
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    hint = " Convert it first with hf_prune.format.llama_to_qwen2(model)." if model_type == "llama" else ""
    names = " / ".join(f"{f.stock_model.__name__} / {f.pruned_model.__name__}" for f in FAMILIES)
    raise UnsupportedModelError(
        f"hf_prune prunes {names} models; got {type(model).__name__} (model_type={model_type!r}).{hint}"
    )
