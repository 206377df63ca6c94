"""The memory step of a job: the run's plan from the model's ``config.json``, logged, and refused if it cannot fit;
with it, the levels' targets resolved on that ``config.json`` and refused if the model cannot reach them."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..config import PruneConfig
from ..engine.distributed import launched_rank, launched_world_size

__all__ = ["model_config", "check_memory", "check_levels", "dry_run"]

logger = logging.getLogger(__name__)


def model_config(source: Any, *, revision: str | None = None, token: str | None = None) -> dict[str, Any]:
    """The full ``config.json`` of a checked model source (a Hub model's is read from the Hub: one small file)."""
    needed = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size")
    config = dict(source.config)
    if source.local or all(k in config for k in needed):
        return config
    import json

    from huggingface_hub import hf_hub_download

    path = hf_hub_download(source.name, "config.json", revision=revision, token=token)
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _dtype_name(dtype: Any) -> str:
    from ..loading import parse_dtype

    name = parse_dtype(dtype)
    return name if isinstance(name, str) else str(name)


def check_levels(model: Any, config: PruneConfig, dtype: Any = "auto") -> PruneConfig:
    """``config`` with its parameter / memory targets resolved on ``model``: its ``config.json`` (a mapping, in the
    dtype it is loaded in) or the loaded model itself; a target the model cannot reach is refused
    (:class:`~hf_prune.errors.PruningError`)."""
    from ..engine.memory import ModelDims
    from ..engine.targets import check_targets as check, resolve_targets

    if isinstance(model, Mapping):
        dims = ModelDims.from_config(model, _dtype_name(dtype))
    else:
        dims = ModelDims.from_model(model)
    resolved = resolve_targets(config.resolved(), dims)
    check(resolved, dims.geometry)
    return resolved


def check_memory(config_json: Mapping[str, Any], config: PruneConfig, *, device_map: Any = None,
                 max_memory: Mapping[Any, Any] | None = None, dtype: Any = "auto"):
    """Refuse targets the model cannot reach (:func:`check_levels`), log the memory plan and refuse a run that
    cannot fit (:class:`~hf_prune.errors.InsufficientMemoryError`)."""
    from ..engine.memory import check_fits

    check_levels(config_json, config, dtype)
    plan = check_fits(config_json, config, device_map=device_map, max_memory=max_memory, dtype=_dtype_name(dtype),
                      world_size=launched_world_size())
    if launched_rank() == 0:
        for line in str(plan).splitlines():
            logger.info("%s", line)
    return plan


def dry_run(source: Any, config: PruneConfig, *, revision: str | None = None, device_map: Any = None,
            max_memory: Mapping[Any, Any] | None = None, dtype: Any = "auto") -> str:
    """What each level will reach (parameters, memory at the config's context, KV cache removed), the memory plan
    of the run, and the options that would make it fit: from the model's ``config.json`` alone."""
    from ..engine.memory import ModelDims, fit_options, format_bytes, plan_for_devices
    from ..engine.targets import forecast_table

    config_json = model_config(source, revision=revision)
    resolved = check_levels(config_json, config, dtype)
    plan, kwargs = plan_for_devices(config_json, config, device_map=device_map, max_memory=max_memory,
                                    dtype=_dtype_name(dtype), world_size=launched_world_size())
    levels = forecast_table(resolved, ModelDims.from_config(config_json, _dtype_name(dtype)))
    lines = [f"Levels (from config.json; the ranking may remove more KV heads):\n\n{levels}\n", str(plan)]
    if not plan.fits:
        lines.append("\nThe run would be refused. Options: " + "; ".join(
            fit_options(config_json, config, plan, kwargs) or ["more devices"]))
    lines.append(f"\ndry run: nothing loaded (largest per-device peak {format_bytes(plan.peak)})")
    return "\n".join(lines)
