"""Calibration and evaluation data: multi-domain mixes, packed windows, multiple-choice batches, specs.

The central object is :class:`CalibrationMix`, a weighted set of text domains (Hub datasets or local
files); :meth:`CalibrationMix.sample` turns it into :class:`CalibrationWindows` for importance estimation.
:func:`as_calibration` is the one entry point for data in any accepted form: everything that draws windows
(scoring, compensation, held-back windows, recovery) asks the :class:`Calibration` it returns.
May import: ``errors``, ``fileio``, ``options``; ``datasets`` to read sources, torch only where tokens are held
(windows, multiple-choice batches). Specs parse and check without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_EXPORTS = {
    "PRESETS": ".mix", "CalibrationMix": ".mix",
    "SUPPORTED_EXTENSIONS": ".sources", "DomainSource": ".sources", "load_documents": ".sources",
    "CalibrationWindows": ".windows", "allocate_counts": ".windows", "windows_cache_dir": ".windows",
    "MultipleChoiceBatch": ".multiple_choice", "MultipleChoiceRecord": ".multiple_choice",
    "build_multiple_choice_batch": ".multiple_choice", "load_multiple_choice": ".multiple_choice",
    "score_choices": ".multiple_choice",
    "as_calibration": ".calibration", "Calibration": ".calibration", "check_overlap": ".spec",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS)

if TYPE_CHECKING:
    from .mix import PRESETS, CalibrationMix
    from .multiple_choice import (MultipleChoiceBatch, MultipleChoiceRecord, build_multiple_choice_batch,
                                  load_multiple_choice, score_choices)
    from .sources import SUPPORTED_EXTENSIONS, DomainSource, load_documents
    from .calibration import Calibration, as_calibration
    from .spec import check_overlap
    from .windows import CalibrationWindows, allocate_counts, windows_cache_dir
