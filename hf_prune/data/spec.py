"""Data specs as users write them, and the one check that evaluation text is not calibration text.

A spec is a :class:`~hf_prune.CalibrationMix`, its command-line form (``"web=0.3,code=data/code.jsonl@0.7"``), a
YAML/JSON mix file, a mapping, or ``{domain: [documents]}`` for evaluation. :func:`as_mix` turns any of them
into a mix and checks local files exist; :func:`check_overlap` refuses an evaluation source that is also a
calibration source and warns about shared documents. Neither imports torch.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import CalibrationError, DataOverlapWarning
from .mix import CalibrationMix, _domain_from_spec
from .sources import DomainSource, document_hashes, load_documents

__all__ = ["as_mix", "domains_of", "check_overlap"]

Domains = dict[str, "DomainSource | list[str]"]


def _is_documents(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(t, str) for t in value)


def as_mix(spec: Any) -> Any:
    """A :class:`CalibrationMix` from a spec string / file path / mapping (local files checked to exist);
    ``{domain: [documents]}`` and other objects (windows, batches, a mix) pass through."""
    if spec is None:
        return None
    if isinstance(spec, CalibrationMix):
        mix = spec
    elif isinstance(spec, (str, os.PathLike)):
        mix = CalibrationMix.parse(os.fspath(spec))
    elif isinstance(spec, Mapping):
        if spec and all(_is_documents(v) for v in spec.values()):
            return dict(spec)
        mix = CalibrationMix(spec)
    else:
        return spec
    for src in mix.sources:
        if src.is_local:
            src.files()  # a missing file or unsupported type fails now, naming the domain
    return mix


def _describes_text(spec: Any) -> bool:
    return isinstance(getattr(spec, "spec", None) or spec, (CalibrationMix, Mapping))


def domains_of(spec: Any) -> Domains:
    """``{domain: DomainSource | documents}`` of a spec (a mix, a mapping, or windows drawn from a mix)."""
    spec = getattr(spec, "spec", None) or spec  # CalibrationWindows carry the spec of the mix they came from
    if isinstance(spec, CalibrationMix):
        return {s.name: s for s in spec.sources}
    if not isinstance(spec, Mapping):
        raise CalibrationError(
            f"evaluation texts must be a CalibrationMix or a mapping domain -> source/texts, got {type(spec).__name__}"
        )
    if set(spec) == {"domains"} and isinstance(spec["domains"], Mapping):
        spec = spec["domains"]
    out: Domains = {}
    for name, value in spec.items():
        if _is_documents(value):
            docs = [v for v in value if v.strip()]
            if not docs:
                raise CalibrationError(f"domain {name!r}: no non-empty evaluation texts")
            out[name] = docs
        else:
            out[name] = _domain_from_spec(name, value)
    if not out:
        raise CalibrationError("no evaluation domains given")
    return out


def _origin(src: DomainSource) -> set[Any]:
    """What a source reads: its resolved files, or its Hub dataset split."""
    if src.is_local:
        return {p.resolve() for p in src.files()}
    return {(src.source, src.config, src.split)}


def check_overlap(calibration: Any, evaluation: Any, *, tokenizer: Any = None, documents: bool = True) -> None:
    """Refuse evaluation sources that are calibration sources; warn about documents found in both.

    Args:
        calibration, evaluation: specs in any form :func:`domains_of` reads; anything else (pre-tokenised
            calibration) is not checked.
        tokenizer: renders chat sources when documents are compared.
        documents: also compare documents (reads every non-streamed source once); ``False`` compares only
            where the text comes from (instant).

    Raises:
        CalibrationError: an evaluation domain reads the same file or Hub split as a calibration domain.
    """
    if not (_describes_text(calibration) and _describes_text(evaluation)):
        return  # no evaluation, or pre-tokenised calibration: nothing to compare
    calib, evals = domains_of(calibration), domains_of(evaluation)
    sources = {cname: _origin(c) for cname, c in calib.items() if isinstance(c, DomainSource)}
    for ename, esrc in evals.items():
        if not isinstance(esrc, DomainSource):
            continue
        for cname, origin in sources.items():
            shared = _origin(esrc) & origin
            if shared:
                what = ", ".join(sorted(str(p) for p in shared if isinstance(p, Path))) or f"{esrc.source} split {esrc.split}"
                raise CalibrationError(
                    f"domain {ename!r}: evaluation source is the same as calibration domain {cname!r} ({what}); "
                    f"evaluate on held-out text (e.g. a dev split)"
                )
    if documents:
        _warn_shared_documents(calib, evals, tokenizer)


def _hashes(src: DomainSource | list[str], tokenizer: Any) -> set[str] | None:
    if isinstance(src, DomainSource) and src.is_streaming:
        return None  # reading a streamed Hub source twice is costly
    return document_hashes(src if isinstance(src, list) else load_documents(src, tokenizer))


def _warn_shared_documents(calib: Domains, evals: Domains, tokenizer: Any) -> None:
    calib_hashes = {name: h for name, src in calib.items() if (h := _hashes(src, tokenizer)) is not None}
    for ename, esrc in evals.items():
        ehash = _hashes(esrc, tokenizer)
        for cname, chash in calib_hashes.items():
            n = len(ehash & chash) if ehash is not None else 0
            if n:
                warnings.warn(
                    f"domain {ename!r}: {n} of {len(ehash)} evaluation documents also appear in calibration "
                    f"domain {cname!r}; perplexity on them is optimistic",
                    DataOverlapWarning,
                    stacklevel=4,
                )
