"""The pruned-model format, installed as ``hf_prune.modeling``: the configuration and modeling classes.

The sibling files are also copied, unchanged, into every saved checkpoint (remote code), so they import
only torch, transformers and each other (the qwen3 files build on the qwen2 ones). This ``__init__`` is not copied;
its names are imported on first use.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_EXPORTS = {
    "PrunedQwen2Config": ".configuration_pruned_qwen2",
    "PrunedQwen2Model": ".modeling_pruned_qwen2", "PrunedQwen2ForCausalLM": ".modeling_pruned_qwen2",
    "PrunedQwen3Config": ".configuration_pruned_qwen3",
    "PrunedQwen3Model": ".modeling_pruned_qwen3", "PrunedQwen3ForCausalLM": ".modeling_pruned_qwen3",
}
__all__ = [*_EXPORTS, "MODEL_TYPES", "shipped_files", "pruned_model_type"]
__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS)

#: The model types of pruned checkpoints, each defined by ``configuration_<type>.py`` and ``modeling_<type>.py``.
MODEL_TYPES = ("pruned_qwen2", "pruned_qwen3")

_SIBLING_IMPORT = re.compile(r"^from \.(\w+) import", re.MULTILINE)


def shipped_files(model_type: str) -> dict[str, str]:
    """The files a checkpoint of ``model_type`` carries as remote code, as this version writes them (name -> text).

    Its configuration and modeling files and every sibling they import (a Qwen3 checkpoint also carries the Qwen2
    files), read without importing torch or transformers.
    """
    if model_type not in MODEL_TYPES:
        raise ValueError(f"{model_type!r} is not a pruned model type; expected one of {list(MODEL_TYPES)}.")
    here = Path(__file__).parent
    files: dict[str, str] = {}
    todo = [f"configuration_{model_type}", f"modeling_{model_type}"]
    while todo:
        name = todo.pop() + ".py"
        if name not in files:
            files[name] = (here / name).read_text(encoding="utf-8")
            todo.extend(_SIBLING_IMPORT.findall(files[name]))
    return dict(sorted(files.items()))

if TYPE_CHECKING:
    from .configuration_pruned_qwen2 import PrunedQwen2Config
    from .configuration_pruned_qwen3 import PrunedQwen3Config
    from .modeling_pruned_qwen2 import PrunedQwen2ForCausalLM, PrunedQwen2Model
    from .modeling_pruned_qwen3 import PrunedQwen3ForCausalLM, PrunedQwen3Model


def pruned_model_type(config: dict, where: str) -> str:
    """The ``model_type`` of a pruned checkpoint's ``config.json`` contents (``where`` names the checkpoint in errors).

    Raises:
        ModelLoadError: not a pruned checkpoint, or a format newer than this version writes (replacing its files with
            this version's would downgrade them).
    """
    from ..errors import ModelLoadError
    from .configuration_pruned_qwen2 import PRUNED_QWEN2_FORMAT_VERSION

    model_type = config.get("model_type")
    if model_type not in MODEL_TYPES:
        raise ModelLoadError(f"{where} is not a pruned checkpoint (model_type {model_type!r}; expected one of "
                             f"{list(MODEL_TYPES)}).")
    version = config.get("pruned_format_version", 1)
    if not isinstance(version, int) or version > PRUNED_QWEN2_FORMAT_VERSION:
        raise ModelLoadError(f"{where} uses {model_type} format version {version!r}, newer than this hf-prune "
                             f"writes ({PRUNED_QWEN2_FORMAT_VERSION}): upgrade hf-prune instead.")
    return model_type
