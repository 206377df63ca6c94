"""Writing pruned checkpoints: all-or-nothing folders with the plan next to the weights."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..fileio import atomic_dir
from .plan import PruningPlan

__all__ = ["save_pruned_model", "check_checkpoint", "PLAN_FILE"]

PLAN_FILE = "pruning_plan.json"


def save_pruned_model(
    model: Any,
    path: str | os.PathLike,
    *,
    tokenizer: Any = None,
    plan: PruningPlan | None = None,
    overwrite: bool = False,
    max_shard_size: str | int = "2GB",
    extra: Callable[[Path], None] | None = None,
) -> Path:
    """Save a pruned model (safetensors, config with ``auto_map``, modeling files), its tokenizer and plan.

    The folder appears complete or not at all. ``extra(folder)`` may add files (model card, evaluation...)
    before it is moved into place.
    """
    with atomic_dir(path, overwrite) as tmp:
        model.save_pretrained(tmp, max_shard_size=max_shard_size)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if plan is not None:
            plan.save(tmp / PLAN_FILE)
        if extra is not None:
            extra(tmp)
    return Path(path)


def check_checkpoint(folder: str | os.PathLike) -> PruningPlan:
    """Check that a saved level folder is a pruned checkpoint whose plan, config and weights agree; its plan.

    Reads ``config.json``, ``pruning_plan.json`` and the safetensors headers (no weights): the config must be a
    pruned model type, every layer's heads / KV heads / MLP width must be what the plan keeps, and the weights must
    hold every tensor the config needs, at its shape.

    Raises:
        ModelLoadError: naming the first disagreement.
    """
    import json

    from ..errors import InvalidPlanError, ModelLoadError
    from ..modeling import pruned_model_type

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{folder} has no config.json: not a saved checkpoint.")
    try:
        pruned_model_type(json.loads((folder / "config.json").read_text(encoding="utf-8")), str(folder))
        if not (folder / PLAN_FILE).is_file():
            raise ModelLoadError(f"{folder} has no {PLAN_FILE}: not a level folder written by hf-prune.")
        plan = PruningPlan.load(folder / PLAN_FILE)
    except ModelLoadError:
        raise
    except (ValueError, InvalidPlanError) as err:
        raise ModelLoadError(f"{folder} is not a level folder written by hf-prune: {err}") from None
    config, model = _pruned_model(folder)
    sizes = config.layer_sizes()
    if len(sizes) != len(plan.layers):
        raise ModelLoadError(f"{folder}: config.json has {len(sizes)} layers, {PLAN_FILE} {len(plan.layers)}.")
    for idx, (layer, size) in enumerate(zip(plan.layers, sizes)):
        kept = {"num_attention_heads": layer.query_heads, "num_key_value_heads": layer.kv_heads,
                "intermediate_size": layer.mlp_channels}
        for key, keep in kept.items():
            if keep is not None and (len(keep) or None) != size[key]:
                raise ModelLoadError(f"{folder}: layer {idx} keeps {len(keep)} by {PLAN_FILE} but config.json has "
                                     f"{key} {size[key]}; the folder mixes files of different runs.")
    _check_weights(folder, config, model)
    return plan


def _pruned_model(folder: Path) -> tuple[Any, Any]:
    """(the folder's config, its causal LM built on the meta device: shapes only), from this package's classes."""
    import json

    import torch

    from ..modeling.modeling_pruned_qwen2 import PrunedQwen2ForCausalLM
    from ..modeling.modeling_pruned_qwen3 import PrunedQwen3ForCausalLM

    model_type = json.loads((folder / "config.json").read_text(encoding="utf-8"))["model_type"]
    cls = {"pruned_qwen2": PrunedQwen2ForCausalLM, "pruned_qwen3": PrunedQwen3ForCausalLM}[model_type]
    config = cls.config_class.from_pretrained(folder)
    with torch.device("meta"):
        return config, cls(config)


def _check_weights(folder: Path, config: Any, model: Any) -> None:
    """Every tensor the config needs is in the safetensors files, at its shape (no weights read)."""
    import json

    from safetensors import safe_open

    from ..errors import ModelLoadError

    index = folder / "model.safetensors.index.json"
    files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()}) if index.is_file() \
        else [folder / "model.safetensors"]
    stored = {}
    for file in files:
        if not file.is_file():
            raise ModelLoadError(f"{folder}: the weights file {file.name} is missing.")
        with safe_open(file, framework="pt") as f:
            stored.update({key: list(f.get_slice(key).get_shape()) for key in f.keys()})
    expected = {k: list(v.shape) for k, v in model.state_dict().items()}
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)  # saved once, as the embedding
    for key, shape in expected.items():
        if stored.get(key) != shape:
            found = "missing" if key not in stored else f"{stored[key]}"
            raise ModelLoadError(f"{folder}: weight {key} is {found} but config.json needs {shape}.")
