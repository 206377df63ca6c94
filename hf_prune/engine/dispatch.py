"""Models spread over several devices by accelerate (``device_map``): a sliced copy goes where its original was.

A model loaded with ``device_map`` (or passed through ``accelerate.dispatch_model``) carries hooks that move
activations between its layers' devices. :func:`~hf_prune.apply_plan` builds a new model whose tensors stay on
the devices of the tensors they were sliced from, but without hooks: :func:`redispatch` attaches them again,
with the original's map (entries of removed sublayers dropped), so later rounds, compensation and evaluation
run on the copy as they did on the original.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["redispatch", "is_dispatched"]


def is_dispatched(model: Any) -> bool:
    """Whether accelerate placed ``model`` with a device map (and hooks)."""
    return bool(getattr(model, "hf_device_map", None)) and any(hasattr(m, "_hf_hook") for m in model.modules())


def redispatch(copy: Any, original: Any) -> Any:
    """``copy`` dispatched like ``original`` when ``original`` was dispatched; otherwise ``copy`` unchanged."""
    if not is_dispatched(original):
        return copy
    from accelerate import dispatch_model

    device_map = {}
    for name, device in original.hf_device_map.items():
        try:
            copy.get_submodule(name) if name else None
        except AttributeError:  # a removed sublayer
            continue
        device_map[name] = device
    # force_hooks: keep the hooks even when every entry names one device (as in the CPU tests). accelerate warns
    # about "cpu" entries on every dispatch; the original's dispatch warned once already.
    quiet = logging.getLogger("accelerate.big_modeling")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        return dispatch_model(copy, device_map=device_map, force_hooks=True)
    finally:
        quiet.setLevel(level)
