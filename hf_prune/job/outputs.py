"""The output folder of a job: what may be in it, what ``overwrite`` removes, and resuming after a kill.

An output folder holds level folders (``sparsity-XX/``, each with its ``pruning_plan.json``) and, after an
interruption, hf-prune's own leftovers (``.sparsity-XX.partial-*`` / ``.old-*`` folders of an atomic write).

- Without ``overwrite`` a non-empty folder is refused, unless it is the output of an interrupted run being resumed:
  the same ``state_dir``, options and output folder, whose ledger (``state_dir/levels.json``) records the levels
  saved so far with the checksum of every file. Those levels are kept (after their checksums and plan are verified);
  the others are built again.
- With ``overwrite`` the folder afterwards holds exactly this run's levels: other level folders and leftovers are
  removed at the end, once every level is saved. Anything else there (a user's file) makes the run refuse before
  any work, naming it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import LEVEL_NAME, PruneConfig
from ..errors import OutputExistsError
from ..fileio import check_output_dir, check_writable, write_text_atomic
from ..format.checkpoint import PLAN_FILE

__all__ = ["check_output", "remove_stale", "LevelLedger", "LEDGER_FILE"]

logger = logging.getLogger(__name__)

#: The record of the levels an interrupted run saved, in its ``state_dir``.
LEDGER_FILE = "levels.json"
_LEVEL = LEVEL_NAME
_LEFTOVER = re.compile(rf"\.(({LEVEL_NAME.pattern})\.(partial|old)|hf-prune-probe)-.+")
# Written into a level folder after it is saved (and its checksums recorded): not part of what is verified.
_CARD_FILES = frozenset({"README.md", "layer_sizes.png"})


def _entries(out: Path) -> tuple[list[Path], list[Path], list[str]]:
    """(level folders, leftovers of hf-prune's atomic writes, names of everything else) inside ``out``."""
    levels, leftovers, foreign = [], [], []
    for entry in sorted(out.iterdir()):
        if entry.is_dir() and _LEVEL.fullmatch(entry.name) and (entry / PLAN_FILE).is_file():
            levels.append(entry)
        elif entry.is_dir() and _LEFTOVER.fullmatch(entry.name):
            leftovers.append(entry)
        else:
            foreign.append(entry.name)
    return levels, leftovers, foreign


def check_output(output_dir: Any, *, overwrite: bool, state_dir: Any, config: PruneConfig | None) -> Path:
    """The output folder, checked before any work: writable, and empty unless overwritten or resumed.

    Raises:
        OutputExistsError: a non-empty folder without ``overwrite`` (and not a resumable run's), or with
            ``overwrite`` a folder that holds anything but hf-prune's level folders and leftovers.
        OutputNotWritableError: the folder cannot be created or written.
    """
    out = Path(output_dir)
    if state_dir is not None:
        check_writable(state_dir, folder=True)
    if not (out.is_dir() and any(out.iterdir())):
        return check_output_dir(out)
    levels, _, foreign = _entries(out)
    if overwrite or (state_dir is not None and LevelLedger(state_dir, out, config).resumes(levels)):
        if foreign:
            raise OutputExistsError(
                f"{out} holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which hf-prune did not "
                "write; --overwrite replaces level folders only: move them or choose another output folder.")
        return check_output_dir(out, overwrite=True)
    hint = (" (an interrupted run resumes with the same options and --state-dir)" if levels else "")
    raise OutputExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it{hint}.")


def remove_stale(out: Path, keep: set[str]) -> list[str]:
    """Remove the level folders not in ``keep`` and every leftover from ``out`` (only those); their names."""
    levels, leftovers, _ = _entries(out)
    stale = [p for p in levels if p.name not in keep] + leftovers
    for path in stale:
        shutil.rmtree(path)
        logger.info("removed %s (not written by this run)", path)
    return [p.name for p in stale]


def _digests(folder: Path) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in _CARD_FILES:
            continue
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        out[rel] = digest.hexdigest()
    return out


@dataclass
class LevelLedger:
    """The levels a run with a ``state_dir`` saved into ``out``, each with its files' checksums and its record."""

    state_dir: Any
    out: Path
    config: PruneConfig | None

    @property
    def path(self) -> Path:
        return Path(self.state_dir) / LEDGER_FILE

    def _load(self) -> dict[str, Any]:
        """This run's ledger: empty unless it was written for the same output folder and options."""
        if self.state_dir is None or not self.path.is_file():
            return {}
        data = json.loads(self.path.read_text(encoding="utf-8"))
        same = (data.get("output_dir") == str(self.out.resolve())
                and data.get("config") == (self.config.to_dict() if self.config is not None else None))
        return data.get("levels", {}) if same else {}

    def resumes(self, levels: list[Path]) -> bool:
        """Whether every level folder in ``out`` is one this run recorded (so the folder is its own output)."""
        recorded = self._load()
        return bool(recorded) and all(level.name in recorded for level in levels)

    def knows(self, name: str) -> bool:
        """Whether the interrupted run recorded level ``name`` (its folder is this run's to replace)."""
        return name in self._load()

    def saved(self, name: str, plan: dict[str, Any]) -> dict[str, Any] | None:
        """The record of level ``name`` if its folder is as it was saved (same files, same plan); else ``None``."""
        entry = self._load().get(name)
        folder = self.out / name
        if entry is None or not folder.is_dir():
            return None
        if entry["plan"] != plan["layers"] or _digests(folder) != entry["files"]:
            logger.warning("%s differs from what the interrupted run saved: it is built again", folder)
            return None
        logger.info("%s was saved by the interrupted run: kept (checksums verified)", folder)
        return entry["record"]

    def record(self, name: str, plan: dict[str, Any], record: dict[str, Any]) -> None:
        """Note level ``name`` as saved, with the checksums of its folder's files."""
        if self.state_dir is None:
            return
        levels = self._load()
        levels[name] = {"plan": plan["layers"], "files": _digests(self.out / name), "record": record}
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        write_text_atomic(self.path, json.dumps({
            "output_dir": str(self.out.resolve()),
            "config": self.config.to_dict() if self.config is not None else None, "levels": levels}) + "\n")
