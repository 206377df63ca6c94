"""Registers the pruned model classes with transformers' Auto classes (done on ``import hf_prune``)."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .modeling.configuration_pruned_qwen2 import PrunedQwen2Config
from .modeling.modeling_pruned_qwen2 import PrunedQwen2ForCausalLM, PrunedQwen2Model


def register() -> None:
    """Make ``AutoConfig`` / ``AutoModel`` / ``AutoModelForCausalLM`` resolve ``model_type="pruned_qwen2"``.

    Idempotent. Registering against the stock ``Qwen2Config`` would be silently ignored, hence the own config
    class and model type.
    """
    AutoConfig.register(PrunedQwen2Config.model_type, PrunedQwen2Config, exist_ok=True)
    AutoModel.register(PrunedQwen2Config, PrunedQwen2Model, exist_ok=True)
    AutoModelForCausalLM.register(PrunedQwen2Config, PrunedQwen2ForCausalLM, exist_ok=True)
