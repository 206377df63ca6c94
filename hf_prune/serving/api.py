"""``hf_prune.export``: write a (pruned) model in a format that a server outside transformers runs.

Each (model type, format) pair has an exporter module with two functions: ``check(config)``, which refuses what
the format cannot express from the config alone (before any weights are read), and ``write(model, tokenizer,
folder, dtype)``. Another model type plugs in with :func:`register_exporter`.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from ..errors import ExportError

__all__ = ["export", "register_exporter", "exporter_for", "FORMATS"]

#: Every export format: stock ``qwen2`` / ``qwen3`` checkpoints (uniform layers), DeciLM (vLLM, SGLang), GGUF.
FORMATS = ("qwen2", "qwen3", "deci", "gguf")

# (model_type, format) -> the module implementing it. Module paths, not functions: nothing heavy is imported until
# an export runs, so the command line checks its arguments without torch.
# Qwen3's q_norm / k_norm have no place in DeciLM or llama.cpp's deci graph: Qwen3 exports only as stock qwen3.
_EXPORTERS: dict[tuple[str, str], str] = {
    **{(model_type, fmt): f"hf_prune.serving.{module}"
       for model_type in ("qwen2", "pruned_qwen2")
       for fmt, module in (("qwen2", "stock"), ("deci", "to_deci"), ("gguf", "to_gguf"))},
    **{(model_type, "qwen3"): "hf_prune.serving.stock" for model_type in ("qwen3", "pruned_qwen3")},
}


def register_exporter(model_type: str, format: str, module: str) -> None:
    """Make ``format`` available for models of ``model_type``; ``module`` defines ``check`` and ``write``."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; formats: {', '.join(FORMATS)}.")
    _EXPORTERS[(model_type, format)] = module


def exporter_for(model_type: str, format: str) -> Any:
    """The exporter module of ``format`` for ``model_type`` models.

    Raises:
        ExportError: an unknown format, or one that does not apply to this model type (names those that do).
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; formats: {', '.join(FORMATS)}.")
    module = _EXPORTERS.get((model_type, format))
    if module is None:
        usable = [f for (t, f) in _EXPORTERS if t == model_type]
        family = " (qwen3 exports Qwen3 models, qwen2 the Qwen2 family)" if format in ("qwen2", "qwen3") else ""
        raise ExportError(
            f"format {format!r} does not apply to a {model_type!r} model{family}"
            + (f"; formats for it: {', '.join(usable)}." if usable else "; no export format takes it.")
        )
    return importlib.import_module(module)


def _check_dtype(format: str, dtype: str | None) -> None:
    if dtype is not None and (format != "gguf" or dtype not in ("f32", "f16")):
        raise ExportError(f"dtype={dtype!r}: only the gguf export takes a dtype, f32 or f16 (default: f32 for a float32 "
                          "model, else f16).")


def _folder_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in a model folder, or ``None`` if the folder holds no tokenizer files."""
    if not any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from ..loading import load_tokenizer

    return load_tokenizer(folder)


def _open_folder(folder: str | os.PathLike, format: str, tokenizer: Any) -> tuple[Any, Any, Any]:
    """Check a model folder for ``format`` from its config alone, then load the model (and its tokenizer)."""
    from transformers import AutoConfig

    from ..loading import check_model_source, load_model
    from ..registration import register

    register()
    source = check_model_source(folder)
    config = AutoConfig.from_pretrained(source.name)
    model_type = "qwen2" if source.model_type == "llama" else source.model_type  # llama is converted exactly
    exporter = exporter_for(model_type, format)
    exporter.check(config)
    if tokenizer is None:
        tokenizer = _folder_tokenizer(Path(source.name).expanduser()) if source.local else None
    if getattr(exporter, "NEEDS_TOKENIZER", False) and tokenizer is None:
        raise ExportError(f"the {format} export embeds the tokenizer, and {folder} holds no tokenizer files: pass "
                          "tokenizer=... (CLI: --tokenizer ID_OR_PATH).")
    return exporter, load_model(source), tokenizer


def export(model_or_folder: Any, format: str, output_dir: str | os.PathLike, *, tokenizer: Any = None,
           overwrite: bool = False, dtype: str | None = None) -> Path:
    """Write ``model_or_folder`` (a pruned or stock Qwen2 model, or its folder) as ``format`` into ``output_dir``.

    Formats:
        - ``qwen2``: a stock Qwen2 checkpoint, when every layer has one shape (any server, plain transformers).
        - ``qwen3``: the same for Qwen3 models (``pruned_qwen3``); refused for Qwen2 models.
        - ``deci``: a DeciLM / nemotron-nas checkpoint (vLLM and SGLang, ``--trust-remote-code``): per-layer KV
          heads and MLP widths, removed sublayers; query heads must be the same in every layer that keeps
          attention (prune with ``uniform_heads=True``).
        - ``gguf``: ``OUT/model.gguf`` for llama.cpp, architecture ``deci``: per-layer heads, KV heads and widths.

    Everything the format refuses is refused before the weights are read (for a folder) and before anything is
    written; the output folder appears complete or not at all.

    Args:
        tokenizer: the tokenizer to ship, or its Hub id / folder (default: a folder's own); gguf needs one.
        overwrite: replace a non-empty ``output_dir``.
        dtype: gguf only: ``"f32"`` or ``"f16"`` for the matrices (default: f32 for a float32 model, else f16).

    Returns:
        ``output_dir``.

    Raises:
        ExportError: unknown format, a format for another model type, or shapes the format cannot express
            (:class:`NotUniformError` where the layers differ in what the format keeps global).
        OutputExistsError: ``output_dir`` is not empty and ``overwrite`` is false.
    """
    from ..fileio import atomic_dir, check_output_dir

    _check_dtype(format, dtype)
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; formats: {', '.join(FORMATS)}.")
    check_output_dir(output_dir, overwrite)
    if isinstance(tokenizer, (str, os.PathLike)):
        from ..loading import load_tokenizer

        tokenizer = load_tokenizer(tokenizer)
    if isinstance(model_or_folder, (str, os.PathLike)):
        exporter, model, tokenizer = _open_folder(model_or_folder, format, tokenizer)
    else:
        model = model_or_folder
        exporter = exporter_for(getattr(getattr(model, "config", None), "model_type", None), format)
        exporter.check(model.config)
        if getattr(exporter, "NEEDS_TOKENIZER", False) and tokenizer is None:
            raise ExportError(f"the {format} export embeds the tokenizer: pass tokenizer=... with the model.")
    with atomic_dir(output_dir, overwrite) as tmp:
        exporter.write(model, tokenizer, tmp, dtype=dtype)
    return Path(output_dir)
