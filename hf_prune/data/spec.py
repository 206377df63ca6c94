"""The one check that evaluation text is not calibration text.

:func:`check_overlap` refuses an evaluation source that is also a calibration source and warns about shared
documents. It reads both specs through :func:`~hf_prune.data.calibration.as_calibration` and imports no torch.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from ..errors import CalibrationError, DataOverlapWarning
from .calibration import Domains, as_calibration
from .sources import DomainSource, document_hashes, load_documents

__all__ = ["check_overlap"]


def _domains(spec: Any) -> Domains | None:
    data = as_calibration(spec)
    return data.domains() if data is not None else None


def _origin(src: DomainSource) -> set[Any]:
    """What a source reads: its resolved files, or its Hub dataset split."""
    if src.is_local:
        return {p.resolve() for p in src.files()}
    return {(src.source, src.config, src.split)}


def check_overlap(calibration: Any, evaluation: Any, *, tokenizer: Any = None, documents: bool = True) -> None:
    """Refuse evaluation sources that are calibration sources; warn about documents found in both.

    Args:
        calibration, evaluation: specs in any form :func:`~hf_prune.data.calibration.as_calibration` reads; data
            given as tokens (without the mix it was drawn from) is not checked.
        tokenizer: renders chat sources when documents are compared.
        documents: also compare documents (reads every non-streamed source once); ``False`` compares only
            where the text comes from (instant).

    Raises:
        CalibrationError: an evaluation domain reads the same file or Hub split as a calibration domain.
    """
    calib, evals = _domains(calibration), _domains(evaluation)
    if calib is None or evals is None:
        return  # no evaluation, or pre-tokenised calibration: nothing to compare
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
