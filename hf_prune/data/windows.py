"""Tokenise, pack and sample fixed-length calibration windows, with an on-disk token cache.

Packing: every document is tokenised without special tokens and followed by the tokenizer's EOS token;
the documents of a domain form one token stream that is cut into consecutive ``seq_len`` windows. The
trailing tokens that do not fill a window are dropped, so a window never holds padding and no attention
mask is needed.

Caching: the token stream of each domain (not the windows) is cached under
``hf_prune.fileio.cache_dir() / "windows"``, keyed by the source identity (files' resolved path, size and
mtime, or Hub id/config/split/revision), the tokenizer identity (class, name_or_path, vocabulary hash, EOS
id, chat template hash) and the packing settings (text fields, chat rendering, token budget). Windows of
any ``seq_len`` are cut from the cached stream in microseconds, so changing ``seq_len`` or the seed never
re-tokenises.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import weakref
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CalibrationError
from ..fileio import atomic_file, cache_dir
from .sources import DomainSource, iter_documents, stable_json

__all__ = [
    "CalibrationWindows",
    "allocate_counts",
    "tokenizer_identity",
    "tokenize_documents",
    "domain_token_stream",
    "pack_windows",
    "sample_windows",
    "draw_windows",
    "derived_seed",
    "windows_cache_dir",
]

_PACKING_VERSION = "eos-after-doc-v1"  # bump when the packing rule changes, to invalidate caches
_TOKENIZE_CHUNK = 128  # documents per tokenizer call: batched for speed, bounded for memory


def windows_cache_dir() -> Path:
    """Default cache folder for tokenised domains: ``hf_prune.fileio.cache_dir() / "windows"``."""
    return cache_dir() / "windows"


# ---- counts ------------------------------------------------------------------------------------------
def allocate_counts(weights: Mapping[str, float], total: int) -> dict[str, int]:
    """Split ``total`` windows among domains in proportion to ``weights``, summing exactly to ``total``.

    Largest-remainder (Hamilton) rounding: each domain gets ``floor(total * share)``, and the windows left
    over go to the largest fractional parts; ties go to the domain listed first, so the result is
    deterministic.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    wsum = math.fsum(weights.values())
    if not wsum > 0:
        raise CalibrationError(f"weights of domains {list(weights)} sum to {wsum:g}; at least one must be > 0")
    names = list(weights)
    exact = [total * weights[k] / wsum for k in names]
    floors = [int(math.floor(v)) for v in exact]
    left = total - sum(floors)
    # Largest fractional part first; the stable sort keeps the listed order among ties.
    order = sorted(range(len(names)), key=lambda i: -(exact[i] - floors[i]))
    for i in order[:left]:
        floors[i] += 1
    return dict(zip(names, floors))


# ---- tokenizer identity ------------------------------------------------------------------------------
_IDENTITY_MEMO: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


def tokenizer_identity(tokenizer: Any) -> dict[str, Any]:
    """What tokenisation depends on: class, name_or_path, vocabulary hash, EOS id, chat template hash.

    The vocabulary hash catches two tokenizers saved under the same path (a local folder re-used for
    another model), which name_or_path alone would not.
    """
    try:
        return _IDENTITY_MEMO[tokenizer]
    except (KeyError, TypeError):
        pass
    vocab = tokenizer.get_vocab()
    vh = hashlib.sha256(stable_json(sorted(vocab.items(), key=lambda kv: kv[1])).encode()).hexdigest()
    template = getattr(tokenizer, "chat_template", None)
    ident = {
        "class": type(tokenizer).__name__,
        "name_or_path": str(getattr(tokenizer, "name_or_path", "")),
        "vocab_sha256": vh,
        "eos_token_id": _eos_id(tokenizer),
        "chat_template_sha256": hashlib.sha256(str(template).encode()).hexdigest()[:16] if template else None,
    }
    try:
        _IDENTITY_MEMO[tokenizer] = ident
    except TypeError:  # not weak-referenceable: just recompute next time
        pass
    return ident


def _eos_id(tokenizer: Any) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise CalibrationError("the tokenizer has no EOS token, which packing needs to separate documents")
    return int(eos)


# ---- tokenise + pack ---------------------------------------------------------------------------------
def tokenize_documents(docs: Sequence[str] | Iterator[str], tokenizer: Any, max_tokens: int | None = None) -> torch.Tensor:
    """One int32 token stream: each document's tokens (no special tokens added) followed by EOS.

    Stops (and truncates) at ``max_tokens`` when given.
    """
    eos = _eos_id(tokenizer)
    pieces: list[torch.Tensor] = []
    n = 0
    batch: list[str] = []

    def flush() -> None:
        nonlocal n
        if not batch:
            return
        ids = tokenizer(batch, add_special_tokens=False)["input_ids"]
        for seq in ids:
            pieces.append(torch.tensor(list(seq) + [eos], dtype=torch.int32))
            n += len(seq) + 1
        batch.clear()

    for doc in docs:
        batch.append(doc)
        if len(batch) >= _TOKENIZE_CHUNK:
            flush()
            if max_tokens is not None and n >= max_tokens:
                break
    else:
        flush()
    if not pieces:
        return torch.zeros(0, dtype=torch.int32)
    stream = torch.cat(pieces)
    return stream[:max_tokens] if max_tokens is not None else stream


def pack_windows(stream: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Cut a token stream into ``[n, seq_len]`` int64 windows, dropping the incomplete tail."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    n = stream.numel() // seq_len
    return stream[: n * seq_len].view(n, seq_len).long()


def _cache_path(root: Path, src: DomainSource, key: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", src.name)[:40] or "domain"
    return root / f"{safe}-{key[:24]}.safetensors"


def domain_token_stream(src: DomainSource, tokenizer: Any, *, cache: bool | str | os.PathLike[str] = True) -> torch.Tensor:
    """The packed token stream of one domain, from the cache when possible.

    Args:
        cache: ``True`` for :func:`windows_cache_dir`, a folder to use another, ``False`` to disable.

    Raises:
        CalibrationError: anything wrong with the source (see :func:`~hf_prune.data.sources.iter_documents`).
    """
    from safetensors.torch import load_file, save_file

    root: Path | None
    if cache is True:
        root = windows_cache_dir()
    elif cache is False or cache is None:
        root = None
    else:
        root = Path(cache)
    key_obj = {"source": src.identity(), "tokenizer": tokenizer_identity(tokenizer), "packing": _PACKING_VERSION}
    key = hashlib.sha256(stable_json(key_obj).encode()).hexdigest()
    path = _cache_path(root, src, key) if root is not None else None
    if path is not None and path.is_file():
        try:
            return load_file(str(path))["tokens"]
        except Exception:  # a corrupt cache entry is rebuilt, never trusted
            path.unlink(missing_ok=True)

    docs = iter_documents(src, tokenizer)
    stream = tokenize_documents(docs, tokenizer, max_tokens=src.token_budget)
    if stream.numel() == 0:
        raise CalibrationError(f"domain {src.name!r}: source {src.source!r} holds no non-empty documents")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Atomic: concurrent runs never read half a file.
        atomic_file(path, lambda tmp: save_file({"tokens": stream.contiguous()}, str(tmp),
                                                metadata={"key": stable_json(key_obj)}))
    return stream


# ---- sampled windows ---------------------------------------------------------------------------------
@dataclass
class CalibrationWindows:
    """Fixed-length calibration windows with the domain each came from.

    Attributes:
        input_ids: ``[N, seq_len]`` int64; every position is a real token (no padding).
        domains: domain name of each row (length N).
        seed: the seed they were drawn with.
        spec: the mix they were drawn from (``CalibrationMix.to_dict()``), for model cards.
    """

    input_ids: torch.Tensor
    domains: list[str]
    seed: int | None = None
    spec: dict[str, Any] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.input_ids.dim() != 2 or self.input_ids.shape[0] != len(self.domains):
            raise ValueError(
                f"input_ids {tuple(self.input_ids.shape)} does not match {len(self.domains)} domain labels"
            )

    def __len__(self) -> int:
        return len(self.domains)

    @property
    def seq_len(self) -> int:
        return int(self.input_ids.shape[1])

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def domain_counts(self) -> dict[str, int]:
        """Windows per domain, in first-seen order."""
        return dict(Counter(self.domains))

    def attention_mask(self) -> torch.Tensor:
        """All ones: windows hold no padding."""
        return torch.ones_like(self.input_ids)

    def iter_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, list[str]]]:
        """Yield ``(input_ids [B, seq_len], domains)`` in order; the last batch may be smaller."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        for i in range(0, len(self), batch_size):
            yield self.input_ids[i : i + batch_size], self.domains[i : i + batch_size]

    def by_domain(self) -> dict[str, torch.Tensor]:
        """The windows of each domain, ``{domain: [n_domain, seq_len]}``."""
        out: dict[str, list[int]] = {}
        for i, d in enumerate(self.domains):
            out.setdefault(d, []).append(i)
        return {d: self.input_ids[idx] for d, idx in out.items()}

    def to_dict(self) -> dict[str, Any]:
        """Summary for logs and model cards (no tensors)."""
        return {
            "num_samples": len(self),
            "seq_len": self.seq_len,
            "num_tokens": self.num_tokens,
            "seed": self.seed,
            "domain_counts": self.domain_counts,
            "mix": self.spec,
        }


def derived_seed(seed: int, label: str) -> int:
    """A stable 63-bit seed for one stream of a draw (a domain, a pass, the final order), from the draw's seed.

    Independent, stable streams per domain: adding a domain to the mix does not change another's draw.
    """
    return int.from_bytes(hashlib.sha256(f"{seed}:{label}".encode()).digest()[:8], "little") & ((1 << 63) - 1)


def _rows(available: int, count: int, seed: int, name: str, passes: bool) -> torch.Tensor:
    """Which ``count`` of ``available`` rows a domain gives: a seeded random order, cut at ``count``."""
    if not passes:
        return torch.randperm(available, generator=torch.Generator().manual_seed(derived_seed(seed, name)))[:count]
    # Each pass over the domain in another order (seeded from the pass), so repeats come only after every row.
    orders = [torch.randperm(available, generator=torch.Generator().manual_seed(derived_seed(seed, f"{name}:{p}")))
              for p in range(-(-count // available))]
    return torch.cat(orders)[:count]


def draw_windows(pools: Mapping[str, torch.Tensor], counts: Mapping[str, int], seed: int, *, passes: bool = False,
                 spec: dict[str, Any] | None = None) -> CalibrationWindows:
    """``counts[d]`` rows of every ``pools[d]`` (``[n, seq_len]`` windows), interleaved in a seeded order so that
    every batch sees the mix: the one draw behind calibration and recovery windows.

    Args:
        passes: ``False`` (calibration): each domain's rows in one order seeded from ``(seed, domain)``, without
            repeats (the caller checks every domain holds its count). ``True`` (recovery training windows): a
            domain asked for more rows than it holds goes through them again, each pass in another order seeded
            from ``(seed, "domain:pass")``.
    """
    rows: list[torch.Tensor] = []
    labels: list[str] = []
    for name, pool in pools.items():
        if counts[name]:
            rows.append(pool[_rows(pool.shape[0], counts[name], seed, name, passes)])
            labels.extend([name] * counts[name])
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(derived_seed(seed, "\0order")))
    return CalibrationWindows(input_ids=torch.cat(rows)[order].contiguous(), domains=[labels[i] for i in order.tolist()],
                              seed=seed, spec=spec)


def sample_windows(
    sources: Sequence[DomainSource],
    tokenizer: Any,
    num_samples: int,
    seq_len: int,
    *,
    seed: int = 0,
    cache: bool | str | os.PathLike[str] = True,
    spec: dict[str, Any] | None = None,
) -> CalibrationWindows:
    """Draw ``num_samples`` windows of ``seq_len`` tokens, split among ``sources`` by weight.

    Every domain's windows are drawn without replacement from its packed stream with a generator seeded
    from ``(seed, domain)``; the rows are then shuffled (also from the seed) so batches mix domains
    (:func:`draw_windows`). All sources are loaded and checked before any window is drawn.

    Raises:
        CalibrationError: a source is unusable, or a domain holds fewer windows than it is asked for.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    counts = allocate_counts({s.name: s.weight for s in sources}, num_samples)

    pools: dict[str, torch.Tensor] = {}
    for src in sources:
        if counts[src.name] == 0:
            continue
        pool = pack_windows(domain_token_stream(src, tokenizer, cache=cache), seq_len)
        if pool.shape[0] < counts[src.name]:
            raise CalibrationError(
                f"domain {src.name!r} is too small: {src.source!r} gives {pool.shape[0]} windows of {seq_len} "
                f"tokens but the mix asks for {counts[src.name]} of {num_samples}; add text to it, lower its "
                f"weight, or ask for fewer/shorter windows"
            )
        pools[src.name] = pool
    return draw_windows(pools, counts, seed, spec=spec)
