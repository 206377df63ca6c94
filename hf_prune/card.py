"""Model cards (README.md) for pruned checkpoints.

The card is rendered from ``model_cards/pruned_model.md`` with :class:`string.Template` (Jinja2 is not a
dependency). Its YAML metadata is built with ``huggingface_hub.ModelCardData`` and checked offline
(``yaml.safe_load`` plus a ``ModelCard`` round trip) because ``ModelCard.validate`` needs the network.

A pruned model is *derived* from its base model but is none of the Hub's ``base_model_relation``
values (adapter / merge / quantized / finetune), so the card sets ``base_model`` plus the tags
``pruned`` and ``structured-pruning`` and deliberately no ``base_model_relation``.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelCardError
from .plotting import bar_chart_png

__all__ = ["CardInfo", "render_model_card", "write_model_card", "check_card_metadata", "CHART_FILENAME", "CARD_TAGS"]

#: File name of the per-layer bar chart written next to README.md.
CHART_FILENAME = "layer_sizes.png"
#: Tags every pruned model card carries.
CARD_TAGS: tuple[str, ...] = ("pruned", "structured-pruning", "hf-prune")
#: ``base_model_relation`` values the Hub accepts (a pruned model uses none of them).
HUB_BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")

_TEMPLATE_NAME = "pruned_model.md"
_LICENSE_ID_RE = re.compile(r"[a-z0-9][a-z0-9.\-]*")
_FRONT_MATTER_RE = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.S)


@dataclass(kw_only=True)
class CardInfo:
    """Everything the model card of one pruned checkpoint says.

    Attributes:
        base_model: Hub id of the dense model that was pruned (e.g. ``"Qwen/Qwen2.5-0.5B"``).
        base_model_revision: commit of the base model that was pruned (``None`` if unknown).
        license: the base model's licence id as on the Hub (``"apache-2.0"``); any other text becomes
            ``license: other`` with ``license_name``.
        repo_id: Hub repo the card is published in (used in the loading snippets), ``None`` if not known yet.
        method: short description of the pruning method (criterion, what is removed, any recovery step).
        calibration: description of the calibration mix, e.g. ``{"domains": {"code": 64, "web": 64},
            "seq_len": 512, "datasets": ["org/dataset"]}``; scalars, lists and one level of dicts render.
        target_sparsity: requested fraction of parameters removed, in ``[0, 1)``.
        achieved_sparsity: fraction actually removed, in ``[0, 1)``.
        params_before: parameter count of the base model.
        params_after: parameter count of the pruned model.
        kv_cache_reduction: fraction of KV-cache memory saved (fewer KV heads), in ``[0, 1]``.
        layers: one dict per decoder layer: ``num_attention_heads``, ``num_key_value_heads``,
            ``intermediate_size``; a block is skipped when its size is 0/None or ``skip_attention`` /
            ``skip_mlp`` is true.
        eval_before: perplexity of the base model per evaluation domain.
        eval_after: perplexity of the pruned model per evaluation domain.
        eval_seq_len: sequence length of the evaluation.
        speed: optional measurement vs the dense model, e.g. ``{"device": "cpu", "dense_tokens_per_s": 10.0,
            "pruned_tokens_per_s": 14.2, "batch_size": 1}``.
        other_levels: ``(sparsity, branch)`` of every level of the same run (this one included or not).
        branch: the branch this card is published on (e.g. ``"sparsity-30"``).
    """

    base_model: str
    base_model_revision: str | None
    license: str
    repo_id: str | None = None
    method: str
    calibration: Mapping[str, Any]
    target_sparsity: float
    achieved_sparsity: float
    params_before: int
    params_after: int
    kv_cache_reduction: float
    layers: Sequence[Mapping[str, Any]]
    eval_before: Mapping[str, float]
    eval_after: Mapping[str, float]
    eval_seq_len: int
    speed: Mapping[str, Any] | None = None
    other_levels: Sequence[tuple[float, str]] = field(default_factory=list)
    branch: str

    def validate(self) -> None:
        """Raise :class:`ModelCardError` naming the first inconsistent field."""
        if not isinstance(self.base_model, str) or not re.fullmatch(r"[\w.-]+(/[\w.-]+)?", self.base_model):
            raise ModelCardError(f"base_model must be a Hub model id like 'Qwen/Qwen2.5-0.5B', got {self.base_model!r}")
        if not isinstance(self.license, str) or not self.license.strip():
            raise ModelCardError("license must be the base model's licence id, e.g. 'apache-2.0'")
        for name in ("target_sparsity", "achieved_sparsity"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise ModelCardError(f"{name} must be a fraction in [0, 1), got {value!r}")
        if not isinstance(self.kv_cache_reduction, (int, float)) or not 0 <= self.kv_cache_reduction <= 1:
            raise ModelCardError(f"kv_cache_reduction must be a fraction in [0, 1], got {self.kv_cache_reduction!r}")
        if not (isinstance(self.params_before, int) and isinstance(self.params_after, int)
                and 0 < self.params_after <= self.params_before):
            raise ModelCardError(
                f"params_after ({self.params_after!r}) must be a positive int <= params_before ({self.params_before!r})"
            )
        if not self.layers:
            raise ModelCardError("layers must list at least one decoder layer")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Mapping):
                raise ModelCardError(f"layers[{i}] must be a dict, got {type(layer).__name__}")
        for name in ("eval_before", "eval_after"):
            for domain, ppl in getattr(self, name).items():
                if not isinstance(ppl, (int, float)) or (isinstance(ppl, float) and math.isnan(ppl)) or ppl <= 0:
                    raise ModelCardError(f"{name}[{domain!r}] must be a positive perplexity, got {ppl!r}")
        if not isinstance(self.eval_seq_len, int) or self.eval_seq_len <= 0:
            raise ModelCardError(f"eval_seq_len must be a positive int, got {self.eval_seq_len!r}")
        if not isinstance(self.branch, str) or not self.branch:
            raise ModelCardError("branch must name the branch the card is published on")
        for level in self.other_levels:
            if not (isinstance(level, (tuple, list)) and len(level) == 2 and isinstance(level[1], str)):
                raise ModelCardError(f"other_levels items must be (sparsity, branch) pairs, got {level!r}")


# ---------------------------------------------------------------------------------------------- metadata
def _card_data(info: CardInfo):
    from huggingface_hub import ModelCardData

    extra: dict[str, Any] = {}
    license_id = info.license.strip()
    if not _LICENSE_ID_RE.fullmatch(license_id):
        # Not a Hub licence id: the Hub wants "other" plus a name (and a link to the terms).
        extra["license_name"] = re.sub(r"[^a-z0-9.\-]+", "-", license_id.lower()).strip("-") or "custom"
        extra["license_link"] = f"https://huggingface.co/{info.base_model}/blob/main/LICENSE"
        license_id = "other"
    datasets = info.calibration.get("datasets")
    if isinstance(datasets, str):
        datasets = [datasets]
    if not (isinstance(datasets, list) and all(isinstance(d, str) and "/" in d for d in datasets)):
        datasets = None  # only Hub dataset ids belong in metadata
    return ModelCardData(
        base_model=info.base_model,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=license_id,
        tags=list(CARD_TAGS),
        datasets=datasets,
        **extra,
    )


def check_card_metadata(card_text: str) -> dict[str, Any]:
    """Check a card's YAML front matter offline, as far as the Hub's rules can be checked without network.

    Returns the parsed metadata. Raises :class:`ModelCardError` if the YAML does not parse, is not a
    mapping, does not round-trip through ``huggingface_hub.ModelCard``, or breaks a Hub rule this
    module knows (invalid ``base_model_relation``, non-string tags, malformed licence).
    """
    import yaml
    from huggingface_hub import ModelCard

    match = _FRONT_MATTER_RE.match(card_text)
    if match is None:
        raise ModelCardError("The card has no YAML front matter (--- ... ---) at its top.")
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        raise ModelCardError(f"The card's YAML metadata does not parse: {err}") from err
    if not isinstance(data, dict):
        raise ModelCardError("The card's YAML metadata must be a mapping.")
    relation = data.get("base_model_relation")
    if relation is not None and relation not in HUB_BASE_MODEL_RELATIONS:
        raise ModelCardError(f"base_model_relation must be one of {HUB_BASE_MODEL_RELATIONS}, got {relation!r}")
    tags = data.get("tags", [])
    if not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
        raise ModelCardError("tags must be a list of strings")
    lic = data.get("license")
    if lic is not None and not (isinstance(lic, str) and _LICENSE_ID_RE.fullmatch(lic)):
        raise ModelCardError(f"license must be a Hub licence id, got {lic!r}")
    if lic == "other" and not data.get("license_name"):
        raise ModelCardError("license: other needs license_name")
    try:
        parsed = ModelCard(card_text).data.to_dict()
    except Exception as err:  # huggingface_hub raises ValueError on invalid card data
        raise ModelCardError(f"huggingface_hub.ModelCard rejects the metadata: {err}") from err
    if parsed != {k: v for k, v in data.items() if v is not None}:
        raise ModelCardError("The card's metadata does not round-trip through huggingface_hub.ModelCardData.")
    return data


# ---------------------------------------------------------------------------------------------- sections
def _pct(fraction: float, digits: int = 1) -> str:
    return f"{100 * fraction:.{digits}f}%"


def _count(n: int, exact: bool = True) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}" + (f" ({n:,})" if exact else "")
    return f"{n:,}"


def _cell(value: Any) -> str:
    """Markdown table cell: no pipes or newlines that would break the row."""
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(v) for v in value)
    else:
        text = str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _calibration_section(calibration: Mapping[str, Any]) -> str:
    if not calibration:
        return "Not recorded."
    bullets, tables = [], []
    for key, value in calibration.items():
        label = str(key).replace("_", " ")
        if isinstance(value, Mapping):
            tables.append(f"**{label}**\n\n" + _table(["name", "value"], [(k, v) for k, v in value.items()]))
        else:
            bullets.append(f"- {label}: {_cell(value)}")
    return "\n\n".join(part for part in ("\n".join(bullets), *tables) if part)


def _attention(layer: Mapping[str, Any]) -> tuple[int, int] | None:
    heads = layer.get("num_attention_heads")
    if layer.get("skip_attention") or not heads:
        return None
    return int(heads), int(layer.get("num_key_value_heads") or heads)


def _mlp(layer: Mapping[str, Any]) -> int | None:
    size = layer.get("intermediate_size")
    if layer.get("skip_mlp") or not size:
        return None
    return int(size)


def _layers_section(layers: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for i, layer in enumerate(layers):
        attn, mlp = _attention(layer), _mlp(layer)
        rows.append((i, attn[0] if attn else "skipped", attn[1] if attn else "skipped", mlp if mlp else "skipped"))
    return _table(["layer", "attention heads", "KV heads", "MLP intermediate size"], rows)


def _chart(layers: Sequence[Mapping[str, Any]]) -> bytes:
    heads = [(_attention(layer) or (None,))[0] for layer in layers]
    mlp = [_mlp(layer) for layer in layers]
    return bar_chart_png([heads, mlp])


def _size_section(info: CardInfo) -> str:
    removed = info.params_before - info.params_after
    rows = [
        ("target sparsity", _pct(info.target_sparsity)),
        ("achieved sparsity", _pct(info.achieved_sparsity)),
        ("parameters before", _count(info.params_before)),
        ("parameters after", _count(info.params_after)),
        ("parameters removed", f"{_count(removed)}, {_pct(removed / info.params_before)} of all parameters"),
        ("KV-cache reduction", _pct(info.kv_cache_reduction)),
    ]
    return _table(["", "value"], rows)


def _eval_section(info: CardInfo) -> str:
    domains = list(dict.fromkeys([*info.eval_before, *info.eval_after]))
    if not domains:
        return "Not evaluated."
    rows = []
    for domain in domains:
        before, after = info.eval_before.get(domain), info.eval_after.get(domain)
        change = _pct(after / before - 1) if before and after else "—"
        if change[0].isdigit():
            change = "+" + change
        rows.append((domain, f"{before:.2f}" if before else "—", f"{after:.2f}" if after else "—", change))
    return (
        f"Perplexity (lower is better) per domain, sequence length {info.eval_seq_len}, same held-out samples for "
        "both models.\n\n" + _table(["domain", "dense (before)", "pruned (after)", "change"], rows)
    )


def _speed_section(speed: Mapping[str, Any] | None) -> str:
    if not speed:
        return "Not measured for this checkpoint."
    dense, pruned = speed.get("dense_tokens_per_s"), speed.get("pruned_tokens_per_s")
    lines = []
    if isinstance(dense, (int, float)) and isinstance(pruned, (int, float)) and dense > 0:
        lines.append(
            _table(["model", "tokens / s"], [("dense", f"{dense:.1f}"), ("pruned", f"{pruned:.1f}")])
            + f"\n\nSpeed-up: **{pruned / dense:.2f}x** vs the dense model."
        )
    settings = [(k, v) for k, v in speed.items() if k not in ("dense_tokens_per_s", "pruned_tokens_per_s")]
    if settings:
        lines.append("Measured with: " + ", ".join(f"{str(k).replace('_', ' ')} {_cell(v)}" for k, v in settings) + ".")
    return "\n\n".join(lines)


def _levels_section(info: CardInfo, repo: str) -> str:
    levels = {branch: float(sparsity) for sparsity, branch in info.other_levels}
    levels.setdefault(info.branch, float(info.target_sparsity))
    rows = [
        (_pct(sparsity, 0), f"`{branch}`" + (" (this card)" if branch == info.branch else ""), f'`revision="{branch}"`')
        for branch, sparsity in sorted(levels.items(), key=lambda item: (item[1], item[0]))
    ]
    return (
        f"Every sparsity level of this run lives on its own branch of `{repo}`; `main` holds the recommended one.\n\n"
        + _table(["sparsity", "branch", "load with"], rows)
    )


def _method_section(info: CardInfo) -> str:
    revision = f" at revision `{info.base_model_revision}`" if info.base_model_revision else ""
    return (
        f"Pruned from [{info.base_model}](https://huggingface.co/{info.base_model}){revision} with "
        f"hf-prune. {info.method.strip()}\n\n"
        "The result is a dense, smaller model: removed heads and channels are gone from the weights, no masks."
    )


# ---------------------------------------------------------------------------------------------- rendering
def _default_template() -> Path:
    here = Path(__file__).resolve().parent
    # Source checkout: <repo>/model_cards/; an installed package may ship it under hf_prune/model_cards/.
    for candidate in (here / "model_cards" / _TEMPLATE_NAME, here.parent / "model_cards" / _TEMPLATE_NAME):
        if candidate.is_file():
            return candidate
    raise ModelCardError(
        f"Model card template {_TEMPLATE_NAME!r} not found next to hf_prune (looked in hf_prune/model_cards/ and "
        "model_cards/). Pass template=... explicitly."
    )


def render_model_card(info: CardInfo, *, template: str | Path | None = None) -> str:
    """Render the README.md of a pruned checkpoint (YAML metadata + markdown sections).

    Args:
        info: what the card says; validated first.
        template: path of a template using ``$name`` / ``${name}`` placeholders; defaults to
            ``model_cards/pruned_model.md``.

    Raises:
        ModelCardError: invalid ``info``, missing template or placeholder, or metadata the Hub would reject.
    """
    info.validate()
    template_path = Path(template) if template is not None else _default_template()
    repo = info.repo_id or "<namespace>/<repo-name>"
    short = info.base_model.rsplit("/", 1)[-1]
    values = {
        "metadata": _card_data(info).to_yaml().strip(),
        "title": f"{info.repo_id.rsplit('/', 1)[-1] if info.repo_id else short + '-pruned'}",
        "summary": (
            f"A structurally pruned version of [{info.base_model}](https://huggingface.co/{info.base_model}): "
            f"{_pct(info.achieved_sparsity)} sparsity ({_count(info.params_before, False)} → "
            f"{_count(info.params_after, False)} parameters), KV cache {_pct(info.kv_cache_reduction)} smaller. "
            f"This card describes branch `{info.branch}`."
        ),
        "repo_id": repo,
        "branch": info.branch,
        "base_model": info.base_model,
        "method_section": _method_section(info),
        "calibration_section": _calibration_section(info.calibration),
        "size_section": _size_section(info),
        "chart_file": CHART_FILENAME,
        "layers_section": _layers_section(info.layers),
        "eval_section": _eval_section(info),
        "eval_seq_len": str(info.eval_seq_len),
        "speed_section": _speed_section(info.speed),
        "levels_section": _levels_section(info, repo),
    }
    try:
        text = string.Template(template_path.read_text(encoding="utf-8")).substitute(values)
    except KeyError as err:
        raise ModelCardError(f"Template {template_path} uses an unknown placeholder: {err}") from None
    except ValueError as err:
        raise ModelCardError(f"Template {template_path} has an invalid placeholder: {err}") from None
    check_card_metadata(text)
    return text


def write_model_card(folder: str | Path, info: CardInfo, *, template: str | Path | None = None) -> Path:
    """Write ``README.md`` and the per-layer chart (``layer_sizes.png``) into ``folder``; returns the README path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelCardError(f"Folder does not exist: {folder}")
    text = render_model_card(info, template=template)
    (folder / CHART_FILENAME).write_bytes(_chart(info.layers))
    readme = folder / "README.md"
    readme.write_text(text, encoding="utf-8")
    return readme
