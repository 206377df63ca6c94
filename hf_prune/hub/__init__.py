"""Publishing on the Hugging Face Hub: model cards (template, metadata, chart) and atomic, one-branch-per-level pushes.

May import: ``errors``, ``options``, ``modeling`` (the supported transformers range and the shipped files, for
the card and code refreshes); huggingface_hub, Jinja2,
matplotlib, tenacity. Knows nothing of pruning: it publishes folders and describes them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_attributes

_EXPORTS = {
    "PushResult": ".push", "push_pruned_folders": ".push", "refresh_code": ".refresh",
    "CardInfo": ".card", "render_model_card": ".card", "write_model_card": ".card",
    "check_card_metadata": ".card", "CHART_FILENAME": ".card", "CARD_TAGS": ".card",
}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_attributes(globals(), _EXPORTS)

if TYPE_CHECKING:
    from .card import CARD_TAGS, CHART_FILENAME, CardInfo, check_card_metadata, render_model_card, write_model_card
    from .push import PushResult, push_pruned_folders
    from .refresh import refresh_code
