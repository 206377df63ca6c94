"""Replace the remote-code files of saved pruned checkpoints with the ones this version ships.

A checkpoint loaded with ``trust_remote_code=True`` (no hf-prune installed) runs the modeling files it was saved
with; an old copy may not run on a newer transformers. Refreshing rewrites only those files, nothing else.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import ModelLoadError
from ..fileio import write_text_atomic
from ..modeling import pruned_model_type, shipped_files

__all__ = ["refresh_code_files", "stale_code_files"]


def stale_code_files(folder: str | os.PathLike[str]) -> dict[str, str]:
    """The remote-code files of a saved level folder that differ from this version's, or are missing (name -> text)."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{folder} has no config.json: not a saved checkpoint.")
    model_type = pruned_model_type(json.loads(config_file.read_text(encoding="utf-8")), str(folder))
    stale = {}
    for name, text in shipped_files(model_type).items():
        current = folder / name
        if not current.is_file() or current.read_text(encoding="utf-8") != text:
            stale[name] = text
    return stale


def refresh_code_files(path: str | os.PathLike[str]) -> dict[Path, list[str]]:
    """Rewrite the remote-code files of one level folder, or of every level folder directly inside ``path``.

    Each file is replaced atomically; weights, config, tokenizer, plan and card are not touched. A folder whose files
    are current is left as it is.

    Returns:
        level folder -> names of the files rewritten (empty where nothing changed).

    Raises:
        ModelLoadError: ``path`` is neither a pruned level folder nor a folder of them (nothing is written), or a
            level uses a newer format than this version.
    """
    path = Path(path)
    if (path / "config.json").is_file():
        levels = [path]
    else:
        levels = sorted(p for p in path.iterdir() if (p / "config.json").is_file()) if path.is_dir() else []
        if not levels:
            raise ModelLoadError(f"{path} is neither a saved pruned checkpoint nor a folder of them.")
    plans = {level: stale_code_files(level) for level in levels}  # every level checked before any is written
    for level, stale in plans.items():
        for name, text in stale.items():
            write_text_atomic(level / name, text)
    return {level: sorted(stale) for level, stale in plans.items()}
