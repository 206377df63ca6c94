"""Calibration and evaluation data: multi-domain mixes, packed windows, multiple-choice batches.

The central object is :class:`CalibrationMix`, a weighted set of text domains (Hub datasets or local
files); :meth:`CalibrationMix.sample` turns it into :class:`CalibrationWindows` for importance estimation.
"""

from __future__ import annotations

from .mix import PRESETS, CalibrationMix
from .multiple_choice import (
    MultipleChoiceBatch,
    MultipleChoiceRecord,
    build_multiple_choice_batch,
    load_multiple_choice,
    score_choices,
)
from .sources import SUPPORTED_EXTENSIONS, DomainSource, load_documents
from .windows import CalibrationWindows, allocate_counts, windows_cache_dir

__all__ = [
    "PRESETS",
    "SUPPORTED_EXTENSIONS",
    "CalibrationMix",
    "CalibrationWindows",
    "DomainSource",
    "MultipleChoiceBatch",
    "MultipleChoiceRecord",
    "allocate_counts",
    "build_multiple_choice_batch",
    "load_documents",
    "load_multiple_choice",
    "score_choices",
    "windows_cache_dir",
]
