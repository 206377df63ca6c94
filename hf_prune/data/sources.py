"""Domain sources: where the text of one calibration or evaluation domain comes from.

A :class:`DomainSource` names either a Hugging Face dataset (id, config, split, text field; streamed when
large) or local files (``.txt``, ``.jsonl``/``.json``, ``.parquet``, ``.csv``, or a folder of them).
Both are read through :func:`datasets.load_dataset`, so local and Hub data follow one code path.

Every problem is raised as :class:`~hf_prune.errors.CalibrationError` naming the domain, before any
model work, so a typo in a mix fails in a second rather than after a model has been loaded.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import CalibrationError

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "DEFAULT_STREAMING_MAX_TOKENS",
    "DomainSource",
    "iter_documents",
    "load_documents",
    "document_hashes",
    "hub_offline",
]

#: File suffix -> ``datasets`` packaged builder that reads it.
SUPPORTED_EXTENSIONS: dict[str, str] = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}

#: Token budget read from a streamed (large Hub) source when the spec gives none: about 1,000 windows of
#: 2,048 tokens, several times a usual calibration draw (so fresh seeds still find fresh windows), and it
#: keeps a C4-sized dataset from being read to the end.
DEFAULT_STREAMING_MAX_TOKENS = 2_000_000

# Characters per token is ~3-4 for English BPE; reading this many characters per budgeted token
# leaves headroom for code/Chinese, where the ratio is lower, without tokenising the whole stream.
_CHARS_PER_TOKEN_BUDGET = 8


@dataclass(frozen=True)
class DomainSource:
    """One domain of a calibration or evaluation mix.

    Attributes:
        name: domain name (``"code"``, ``"math"``...); every error message names it.
        source: a local file or folder, or a Hugging Face dataset id.
        weight: relative share of the calibration windows (normalised by the mix).
        text_field: column holding the text; ``None`` means ``"messages"`` for chat sources, else ``"text"``.
            A list of columns is joined with newlines (e.g. ``["question", "answer"]``).
        config: dataset configuration (Hub datasets only).
        split: split to read.
        chat: the field is a list of ``{"role", "content"}`` messages, rendered with the tokenizer's chat
            template.
        streaming: stream the Hub dataset instead of downloading it whole; ``None`` = stream Hub sources
            only when ``max_tokens`` is set.
        max_tokens: stop reading once about this many tokens' worth of documents were read (streamed sources
            default to :data:`DEFAULT_STREAMING_MAX_TOKENS`).
        revision: Hub dataset revision (a commit pins the cache key).
    """

    name: str
    source: str
    weight: float = 1.0
    text_field: str | tuple[str, ...] | None = None
    config: str | None = None
    split: str = "train"
    chat: bool = False
    streaming: bool | None = None
    max_tokens: int | None = None
    revision: str | None = None

    # ---- derived properties ------------------------------------------------------------------------
    @property
    def fields(self) -> tuple[str, ...]:
        """The column(s) read as text."""
        if self.text_field is None:
            return ("messages",) if self.chat else ("text",)
        if isinstance(self.text_field, str):
            return (self.text_field,)
        return tuple(self.text_field)

    @property
    def is_local(self) -> bool:
        """Whether ``source`` is a local path (an existing one, or one that looks like a path)."""
        return _looks_local(self.source)

    @property
    def is_streaming(self) -> bool:
        """Whether a Hub source is streamed (local files are always read whole)."""
        if self.is_local:
            return False
        return bool(self.streaming) if self.streaming is not None else self.max_tokens is not None

    @property
    def token_budget(self) -> int | None:
        """How many tokens of this source are read at most (``None``: all of it)."""
        if self.max_tokens is not None:
            return self.max_tokens
        return DEFAULT_STREAMING_MAX_TOKENS if self.is_streaming else None

    def files(self) -> list[Path]:
        """The local files this source reads (sorted); raises if missing or unsupported."""
        path = Path(self.source).expanduser()
        if not path.exists():
            raise CalibrationError(f"domain {self.name!r}: source {self.source!r} does not exist")
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in SUPPORTED_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                raise CalibrationError(
                    f"domain {self.name!r}: folder {self.source!r} holds no supported files "
                    f"({', '.join(sorted(SUPPORTED_EXTENSIONS))})"
                )
            return found
        if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
            raise CalibrationError(
                f"domain {self.name!r}: unsupported file type {path.suffix!r} for {self.source!r}; "
                f"use one of {', '.join(sorted(SUPPORTED_EXTENSIONS))}"
            )
        return [path]

    def check(self) -> None:
        """Fail now, naming the domain, on a source that could not give text: a missing, empty, binary or
        unreadable local file, text fields it lacks, or a name that is neither a local path nor a Hub dataset id.

        Local files are read only as far as needed (the first record of a JSON-lines file, a parquet schema, a CSV
        header); a Hub dataset is not contacted.
        """
        if not self.is_local:
            from huggingface_hub.utils import HFValidationError, validate_repo_id

            try:
                validate_repo_id(self.source)
            except HFValidationError:
                raise CalibrationError(f"domain {self.name!r}: {self.source!r} is neither a local file nor a Hugging "
                                       "Face dataset id (namespace/name)") from None
            return
        for path in self.files():
            _check_file(self, path)

    def identity(self) -> dict[str, Any]:
        """What the text of this source depends on, for cache keys and overlap checks.

        Local files are identified by resolved path, size and modification time, so editing a file
        invalidates its cached tokens; Hub datasets by id, config, split and revision.
        """
        base: dict[str, Any] = {
            "fields": list(self.fields),
            "chat": self.chat,
            "budget": self.token_budget,
        }
        if self.is_local:
            stats = []
            for p in self.files():
                st = p.stat()
                stats.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
            base["files"] = stats
        else:
            base["hub"] = [self.source, self.config, self.split, self.revision, self.is_streaming]
        return base

    def to_dict(self) -> dict[str, Any]:
        """JSON-able spec (what :class:`~hf_prune.data.CalibrationMix` accepts back, and model cards print)."""
        out: dict[str, Any] = {"source": self.source, "weight": self.weight}
        tf = self.text_field
        out["text_field"] = list(tf) if isinstance(tf, tuple) else tf
        for f in ("config", "split", "chat", "streaming", "max_tokens", "revision"):
            out[f] = getattr(self, f)
        return out

    def to_public_dict(self) -> dict[str, Any]:
        """:meth:`to_dict` as published (plans, cards): a local source by its file or folder name and the sha256 of
        its content, never its path on this machine."""
        out = self.to_dict()
        if self.is_local:
            digest = hashlib.sha256()
            for path in self.files():
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        digest.update(chunk)
            out["source"] = Path(self.source).expanduser().name
            out["sha256"] = digest.hexdigest()
        return out

    def with_weight(self, weight: float) -> DomainSource:
        return replace(self, weight=weight)


def _looks_local(source: str) -> bool:
    if Path(source).expanduser().exists():
        return True
    # A path that does not exist yet must still be treated as local so the user hears "missing file",
    # not "cannot reach the Hub": absolute/relative/home paths, or a known file suffix.
    if source.startswith(("/", "./", "../", "~", "\\")) or (len(source) > 1 and source[1] == ":"):
        return True
    return Path(source).suffix.lower() in SUPPORTED_EXTENSIONS


# How much of a local file is read to know it holds usable text.
_PEEK_BYTES = 1 << 16


def _check_file(src: DomainSource, path: Path) -> None:
    """One local file of ``src`` holds text in the fields ``src`` reads (see :meth:`DomainSource.check`)."""
    with open(path, "rb") as f:
        head = f.read(_PEEK_BYTES)
    if not head.strip():
        raise CalibrationError(f"domain {src.name!r}: file {str(path)!r} is empty")
    builder = SUPPORTED_EXTENSIONS[path.suffix.lower()]
    if builder == "parquet":
        import pyarrow.parquet as pq  # installed with datasets

        try:
            _check_columns(src, pq.read_schema(path).names)
        except CalibrationError:
            raise
        except Exception as exc:
            raise CalibrationError(f"domain {src.name!r}: {str(path)!r} is not a readable parquet file "
                                   f"({type(exc).__name__})") from None
        return
    try:
        # A multi-byte character cut at the end of the peek is not an error.
        text = head.decode("utf-8") if len(head) < _PEEK_BYTES else head.decode("utf-8", errors="ignore")[:-1]
        if "\x00" in text or len(head) == _PEEK_BYTES and len(text.encode()) < len(head) - 4:
            raise UnicodeDecodeError("utf-8", head, 0, 1, "binary data")
    except UnicodeDecodeError:
        raise CalibrationError(f"domain {src.name!r}: file {str(path)!r} is not UTF-8 text (binary data?)") from None
    if builder == "json" and path.suffix.lower() == ".jsonl":
        first = next((line for line in text.splitlines() if line.strip()), "")
        try:
            record = json.loads(first)
        except ValueError:
            raise CalibrationError(f"domain {src.name!r}: the first line of {str(path)!r} is not a JSON record: "
                                   f"{first[:80]!r}") from None
        _check_columns(src, list(record) if isinstance(record, dict) else [])
    elif builder == "csv":
        import csv

        _check_columns(src, next(csv.reader([text.splitlines()[0]])))


def hub_offline() -> bool:
    """Whether Hugging Face Hub access is switched off (``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE``)."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return True
    try:  # the libraries read the variables at import time; honour that too
        import huggingface_hub.constants as hc

        if getattr(hc, "HF_HUB_OFFLINE", False):
            return True
    except Exception:  # pragma: no cover - very old hub
        pass
    return False


def _offline_message(src: DomainSource, reason: str) -> str:
    return (
        f"domain {src.name!r}: cannot load Hugging Face dataset {src.source!r} ({reason}). "
        f"Without Hub access give a local source instead, e.g. "
        f"{{{src.name!r}: {{'source': 'path/to/{src.name}.jsonl', 'weight': {src.weight:g}}}}} "
        f"or --calibration {src.name}=path/to/{src.name}.jsonl@{src.weight:g} "
        f"(.txt, .jsonl, .json, .parquet, .csv or a folder of them)"
    )


def _load_dataset(src: DomainSource) -> Any:
    """Open the source as a ``datasets`` Dataset (or IterableDataset when streaming)."""
    import datasets

    if src.is_local:
        src.check()
        files = src.files()
        by_builder: dict[str, list[str]] = {}
        for p in files:
            by_builder.setdefault(SUPPORTED_EXTENSIONS[p.suffix.lower()], []).append(str(p))
        parts = []
        for builder, data_files in by_builder.items():
            # One document per .txt file: line-level rows would insert an EOS after every line when packed.
            kwargs: dict[str, Any] = {"sample_by": "document"} if builder == "text" else {}
            try:
                ds = datasets.load_dataset(builder, data_files=data_files, split="train", **kwargs)
            except CalibrationError:
                raise
            except Exception as exc:
                raise CalibrationError(
                    f"domain {src.name!r}: could not read {', '.join(data_files)} as {builder}: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            if builder == "text" and len(src.fields) == 1 and src.fields[0] != "text":
                # A folder mixing .txt with e.g. .jsonl files whose text sits in "content": align the names.
                ds = ds.rename_column("text", src.fields[0])
            parts.append(ds)
        if len(parts) == 1:
            return parts[0]
        # Builders yield different columns (text vs json); keep only the text column(s) before concatenating.
        for ds in parts:
            _check_columns(src, ds.column_names)
        return datasets.concatenate_datasets([ds.select_columns(list(src.fields)) for ds in parts])

    if hub_offline():
        raise CalibrationError(_offline_message(src, "HF_HUB_OFFLINE is set"))
    try:
        return datasets.load_dataset(
            src.source, src.config, split=src.split, streaming=src.is_streaming, revision=src.revision
        )
    except (ConnectionError, OSError, TimeoutError) as exc:
        text = f"{type(exc).__name__}: {exc}"
        if "offline" in text.lower() or "reach" in text.lower() or "connect" in text.lower() or "resolve" in text.lower():
            raise CalibrationError(_offline_message(src, f"no connection: {exc}")) from exc
        raise CalibrationError(f"domain {src.name!r}: could not load {src.source!r}: {text}") from exc
    except Exception as exc:
        raise CalibrationError(
            f"domain {src.name!r}: could not load Hugging Face dataset {src.source!r} "
            f"(config={src.config!r}, split={src.split!r}): {type(exc).__name__}: {exc}"
        ) from exc


def _check_columns(src: DomainSource, columns: list[str] | None) -> None:
    if columns is None:  # some streamed datasets do not know their columns up front
        return
    missing = [f for f in src.fields if f not in columns]
    if missing:
        hint = " (set chat=True for a 'messages' list)" if "messages" in columns and not src.chat else ""
        raise CalibrationError(
            f"domain {src.name!r}: text field {missing[0]!r} not found in {src.source!r}; "
            f"columns are {columns}{hint}. Set text_field to one of them."
        )


def _render(src: DomainSource, row: Mapping[str, Any], tokenizer: Any) -> str:
    if src.chat:
        messages = row[src.fields[0]]
        if not isinstance(messages, list):
            raise CalibrationError(
                f"domain {src.name!r}: chat field {src.fields[0]!r} holds {type(messages).__name__}, "
                f"expected a list of {{'role', 'content'}} messages"
            )
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise CalibrationError(
                f"domain {src.name!r}: chat=True needs a tokenizer with a chat template to render messages"
            )
        return str(tokenizer.apply_chat_template(list(messages), tokenize=False))
    values = []
    for f in src.fields:
        v = row[f]
        if v is None:
            continue
        if not isinstance(v, str):
            raise CalibrationError(
                f"domain {src.name!r}: text field {f!r} holds {type(v).__name__}, not text"
                + (" (set chat=True for message lists)" if isinstance(v, list) else "")
            )
        values.append(v)
    return "\n".join(values)


def iter_documents(src: DomainSource, tokenizer: Any = None) -> Iterator[str]:
    """Yield the non-empty documents of ``src`` in order, stopping at its token budget (if any).

    Raises:
        CalibrationError: missing/empty/unreadable source, missing text field, Hub unreachable.
    """
    ds = _load_dataset(src)
    columns = getattr(ds, "column_names", None)
    _check_columns(src, columns)
    if columns is not None:
        ds = ds.select_columns(list(src.fields))  # rows are built as dicts: skip the columns never read
    budget = src.token_budget
    max_chars = budget * _CHARS_PER_TOKEN_BUDGET if budget is not None else math.inf
    chars = 0
    try:
        for row in ds:
            missing = [f for f in src.fields if f not in row]
            if missing:
                _check_columns(src, list(row))
            text = _render(src, row, tokenizer)
            if not text.strip():
                continue
            yield text
            chars += len(text)
            if chars >= max_chars:
                return
    except CalibrationError:
        raise
    except (ConnectionError, TimeoutError) as exc:  # a stream can fail mid-way
        raise CalibrationError(_offline_message(src, f"connection lost: {exc}")) from exc


def load_documents(src: DomainSource, tokenizer: Any = None) -> list[str]:
    """All documents of ``src`` (see :func:`iter_documents`); raises if there are none."""
    docs = list(iter_documents(src, tokenizer))
    if not docs:
        raise CalibrationError(f"domain {src.name!r}: source {src.source!r} holds no non-empty documents")
    return docs


def document_hashes(docs: list[str]) -> set[str]:
    """Hashes of whitespace-normalised documents, to detect calibration/evaluation overlap."""
    return {hashlib.sha1(" ".join(d.split()).encode("utf-8")).hexdigest() for d in docs}


def source_fields() -> tuple[str, ...]:
    """Names accepted as keys of a domain's spec mapping."""
    return tuple(f.name for f in fields(DomainSource) if f.name != "name")


def stable_json(obj: Any) -> str:
    """Deterministic JSON (for hashing cache keys)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)

