"""Model cards (README.md) for pruned checkpoints.

The card is rendered by ``huggingface_hub.ModelCard.from_template`` (Jinja2) from ``model_cards/pruned_model.md``;
its YAML metadata is a ``huggingface_hub.ModelCardData`` and is checked offline (``ModelCard.validate`` needs the
network). A pruned model is *derived* from its base model but is none of the Hub's ``base_model_relation`` values
(adapter / merge / quantized / finetune), so the card sets ``base_model`` plus the tags ``pruned`` and
``structured-pruning`` and deliberately no ``base_model_relation``. A base model that is only a local folder
gets no ``base_model`` metadata and no link: the card says where it came from.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelCardError

__all__ = ["CardInfo", "render_model_card", "write_model_card", "check_card_metadata", "CHART_FILENAME", "CARD_TAGS"]

#: File name of the per-layer chart written next to README.md.
CHART_FILENAME = "layer_sizes.png"
#: Tags every pruned model card carries.
CARD_TAGS: tuple[str, ...] = ("pruned", "structured-pruning", "hf-prune")
#: ``base_model_relation`` values the Hub accepts (a pruned model uses none of them).
HUB_BASE_MODEL_RELATIONS = ("adapter", "merge", "quantized", "finetune")

_TEMPLATE_NAME = "pruned_model.md"
_LICENSE_ID_RE = re.compile(r"[a-z0-9][a-z0-9.\-]*")
_MODEL_ID_RE = re.compile(r"[\w.-]+(/[\w.-]+)?")


@dataclass(kw_only=True)
class CardInfo:
    """Everything the model card of one pruned checkpoint says.

    Attributes:
        base_model: Hub id of the dense model that was pruned (e.g. ``"Qwen/Qwen2.5-0.5B"``); ``None`` for a model
            that exists only as a local folder (then ``base_model_source`` says what it was).
        base_model_source: how to name a base model that is not on the Hub (e.g. its folder name).
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
            ``intermediate_size`` (a :class:`~hf_prune.format.plan.LayerShape` as a dict; 0 = sublayer removed).
        base_layers: the same for the dense model (drawn as the reference in the chart); empty if unknown.
        eval_before: perplexity of the base model per evaluation domain.
        eval_after: perplexity of the pruned model per evaluation domain.
        eval_recovered: perplexity of the pruned model after recovery training per domain (empty: not recovered).
        recovery: how it was recovered (method, tokens, learning rate...; rendered as a list), ``None`` if not.
        eval_seq_len: sequence length of the evaluation.
        accuracy: this checkpoint's own accuracy per task (an :meth:`~hf_prune.accuracy.AccuracyReport.to_dict`:
            ``{task: {"acc", "acc_stderr", "n", "acc_norm"?, "num_fewshot"}}``); it becomes the ``model-index``
            metadata. Empty: not evaluated.
        accuracy_columns: the accuracy table, ``(label, {task: {...}})`` per column in order (dense first, then
            the levels); the column of this checkpoint is the one labelled ``branch`` (or ``branch`` + "recovered").
        accuracy_sources: per task, where its data came from (``dataset``, ``config``, ``split``, ``local``).
        speed: optional measurement vs the dense model, e.g. ``{"device": "cpu", "dense_tokens_per_s": 10.0,
            "pruned_tokens_per_s": 14.2, "batch_size": 1}``.
        other_levels: ``(sparsity, branch)`` of every level of the same run (this one included or not).
        branch: the branch this card is published on (e.g. ``"sparsity-30"``).
        targets: what the level was asked (``asked``: ``params``, ``memory_bytes`` with ``context_length`` and
            ``batch_size``, ``sparsity``, ``kv_cache_reduction``), what it reached (``reached``: the same measured,
            and ``dtype``) and whether it met each (``met``); ``None``: not stated.
    """

    base_model: str | None
    base_model_source: str | None = None
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
    base_layers: Sequence[Mapping[str, Any]] = ()
    eval_before: Mapping[str, float]
    eval_after: Mapping[str, float]
    eval_recovered: Mapping[str, float] = field(default_factory=dict)
    recovery: Mapping[str, Any] | None = None
    eval_seq_len: int
    accuracy: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    accuracy_columns: Sequence[tuple[str, Mapping[str, Mapping[str, Any]]]] = ()
    accuracy_sources: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    speed: Mapping[str, Any] | None = None
    other_levels: Sequence[tuple[float, str]] = field(default_factory=list)
    branch: str
    targets: Mapping[str, Any] | None = None

    def validate(self) -> None:
        """Raise :class:`ModelCardError` naming the first inconsistent field."""
        if self.base_model is not None and (not isinstance(self.base_model, str)
                                            or not _MODEL_ID_RE.fullmatch(self.base_model)):
            raise ModelCardError(f"base_model must be a Hub model id like 'Qwen/Qwen2.5-0.5B' (or None for a local "
                                 f"model), got {self.base_model!r}")
        if self.base_model is None and not self.base_model_source:
            raise ModelCardError("a base model that is not on the Hub needs base_model_source (where it came from)")
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
        for name in ("layers", "base_layers"):
            for i, layer in enumerate(getattr(self, name)):
                if not isinstance(layer, Mapping):
                    raise ModelCardError(f"{name}[{i}] must be a dict, got {type(layer).__name__}")
        for name in ("eval_before", "eval_after", "eval_recovered"):
            for domain, ppl in getattr(self, name).items():
                if not isinstance(ppl, (int, float)) or (isinstance(ppl, float) and math.isnan(ppl)) or ppl <= 0:
                    raise ModelCardError(f"{name}[{domain!r}] must be a positive perplexity, got {ppl!r}")
        _check_accuracy("accuracy", self.accuracy)
        for label, column in self.accuracy_columns:
            _check_accuracy(f"accuracy_columns[{label!r}]", column)
        if not isinstance(self.eval_seq_len, int) or self.eval_seq_len <= 0:
            raise ModelCardError(f"eval_seq_len must be a positive int, got {self.eval_seq_len!r}")
        if not isinstance(self.branch, str) or not self.branch:
            raise ModelCardError("branch must name the branch the card is published on")
        for level in self.other_levels:
            if not (isinstance(level, (tuple, list)) and len(level) == 2 and isinstance(level[1], str)):
                raise ModelCardError(f"other_levels items must be (sparsity, branch) pairs, got {level!r}")

    @property
    def base_model_name(self) -> str:
        """How the card names the base model: its Hub id, or where it came from."""
        return self.base_model or str(self.base_model_source)


def _check_accuracy(name: str, results: Mapping[str, Mapping[str, Any]]) -> None:
    for task, values in results.items():
        acc = values.get("acc") if isinstance(values, Mapping) else None
        if not isinstance(acc, (int, float)) or not 0 <= acc <= 1:
            raise ModelCardError(f"{name}[{task!r}] must hold an accuracy 'acc' in [0, 1], got {acc!r}")


# ---------------------------------------------------------------------------------------------- metadata
_METRIC_NAMES = {"acc": "accuracy", "acc_norm": "accuracy (length-normalised)"}


def _eval_results(info: CardInfo) -> list[Any]:
    """The checkpoint's accuracy as huggingface_hub ``EvalResult`` entries (the card's ``model-index``).

    A task whose data is on the Hub names that dataset (``dataset_type``); a local task names itself. Values are
    fractions in [0, 1], as in ``eval_results.json``; ``dataset_args.num_few_shot`` records the shots.
    """
    from huggingface_hub import EvalResult

    out = []
    for task, values in info.accuracy.items():
        source = dict(info.accuracy_sources.get(task, {}))
        hub = not source.get("local", True) and isinstance(source.get("dataset"), str)
        for metric, name in _METRIC_NAMES.items():
            if not isinstance(values.get(metric), (int, float)):
                continue
            out.append(EvalResult(
                task_type="text-generation", task_name="Text Generation",
                dataset_type=source["dataset"] if hub else task, dataset_name=task,
                dataset_config=source.get("config") if hub else None, dataset_split=source.get("split"),
                dataset_args={"num_few_shot": int(values.get("num_fewshot", 0))},
                metric_type=metric, metric_name=name, metric_value=round(float(values[metric]), 6),
                metric_args=_metric_args(values, metric),
            ))
    return out


def _metric_args(values: Mapping[str, Any], metric: str) -> dict[str, Any] | None:
    """The metric's standard error and the number of examples, where known (``metrics[].args`` in model-index)."""
    args = {"stderr": round(float(values[f"{metric}_stderr"]), 6)} if _is_real(values.get(f"{metric}_stderr")) else {}
    if isinstance(values.get("n"), int) and values["n"] > 0:
        args["n"] = values["n"]
    return args or None


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _card_data(info: CardInfo):
    from huggingface_hub import ModelCardData

    extra: dict[str, Any] = {}
    license_id = info.license.strip()
    if not _LICENSE_ID_RE.fullmatch(license_id):
        # Not a Hub licence id: the Hub wants "other" plus a name (and, where known, a link to the terms).
        extra["license_name"] = re.sub(r"[^a-z0-9.\-]+", "-", license_id.lower()).strip("-") or "custom"
        if info.base_model:
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
        **({"model_name": _title(info), "eval_results": _eval_results(info)} if info.accuracy else {}),
    )


def _title(info: CardInfo) -> str:
    short = info.base_model_name.rsplit("/", 1)[-1]
    return info.repo_id.rsplit("/", 1)[-1] if info.repo_id else f"{short}-pruned"


def check_card_metadata(card_text: str) -> dict[str, Any]:
    """Check a card's YAML metadata offline, as far as the Hub's rules can be checked without network.

    Returns the parsed metadata. Raises :class:`ModelCardError` if there is no metadata block, it does not parse
    or is not a mapping, ``huggingface_hub.ModelCard`` rejects it, or it breaks a Hub rule this module knows
    (invalid ``base_model_relation``, non-string tags, malformed licence).
    """
    import yaml
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard import REGEX_YAML_BLOCK

    if not REGEX_YAML_BLOCK.search(card_text):
        raise ModelCardError("The card has no YAML front matter (--- ... ---) at its top.")
    try:
        data = ModelCard(card_text).data.to_dict()
    except yaml.YAMLError as err:
        raise ModelCardError(f"The card's YAML metadata does not parse: {' '.join(str(err).split())}") from None
    except Exception as err:  # huggingface_hub raises ValueError on invalid card data
        raise ModelCardError(f"huggingface_hub.ModelCard rejects the metadata: {err}") from None
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
    return data


# ---------------------------------------------------------------------------------------------- values
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


def _cells(rows: Sequence[Sequence[Any]]) -> list[list[str]]:
    return [[_cell(v) for v in row] for row in rows]


def _calibration(calibration: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, list[list[str]]]]]:
    bullets, tables = [], []
    for key, value in calibration.items():
        label = str(key).replace("_", " ")
        if isinstance(value, Mapping):
            tables.append((label, _cells(list(value.items()))))
        else:
            bullets.append((label, _cell(value)))
    return bullets, tables


def _layer_rows(layers: Sequence[Mapping[str, Any]]) -> list[list[str]]:
    rows = []
    for i, layer in enumerate(layers):
        heads, width = layer.get("num_attention_heads") or 0, layer.get("intermediate_size") or 0
        kv = layer.get("num_key_value_heads") or heads
        rows.append([i, heads or "skipped", kv if heads else "skipped", width or "skipped"])
    return _cells(rows)


def _size_rows(info: CardInfo) -> list[list[str]]:
    removed = info.params_before - info.params_after
    return _cells([
        ("target sparsity", _pct(info.target_sparsity)),
        ("achieved sparsity", _pct(info.achieved_sparsity)),
        ("parameters before", _count(info.params_before)),
        ("parameters after", _count(info.params_after)),
        ("parameters removed", f"{_count(removed)}, {_pct(removed / info.params_before)} of all parameters"),
        ("KV-cache reduction", _pct(info.kv_cache_reduction)),
    ]) + _target_rows(info.targets)


def _bytes(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _target_rows(targets: Mapping[str, Any] | None) -> list[list[str]]:
    """One row per target the level was given (asked, reached, met), and its memory at the stated context."""
    if not targets:
        return []
    asked, reached, met = targets["asked"], targets["reached"], targets.get("met", {})
    context = f"{reached['context_length']:,} tokens x {reached['batch_size']}, {reached['dtype']}"
    shown = {"params": ("target: parameters", _count),
             "memory_bytes": (f"target: memory (weights + KV cache at {context})", _bytes),
             "sparsity": ("target: sparsity of the decoder layers", _pct),
             "kv_cache_reduction": ("target: KV cache removed", _pct)}
    rows = [(shown[k][0], f"{shown[k][1](v)} asked, {shown[k][1](reached[k])} reached: "
                          f"{'met' if met.get(k) else 'NOT met'}") for k, v in asked.items() if k in shown]
    if "memory_bytes" not in asked:
        rows.append((f"memory (weights + KV cache at {context})", _bytes(reached["memory_bytes"])))
    return _cells(rows)


def _change(before: float | None, after: float | None) -> str:
    return ("+" if after >= before else "") + _pct(after / before - 1) if before and after else "—"


def _eval_table(info: CardInfo) -> dict[str, Any]:
    """``eval_header`` and ``eval_rows``: dense, pruned (and recovered) perplexity per domain, change vs dense, then
    the summary rows (``eval_summary``: whether there are any)."""
    recovered = dict(info.eval_recovered)
    header = ["domain", "dense (before)", "pruned (after)"]
    header += ["pruned + recovered", "change (recovered vs dense)"] if recovered else ["change"]
    ppl = lambda v: f"{v:.2f}" if v else "—"  # noqa: E731
    rows = []
    for domain in dict.fromkeys([*info.eval_before, *info.eval_after, *recovered]):
        before, after = info.eval_before.get(domain), info.eval_after.get(domain)
        row = [domain, ppl(before), ppl(after)]
        if recovered:
            row += [ppl(recovered.get(domain)), _change(before, recovered.get(domain))]
        else:
            row.append(_change(before, after))
        rows.append(row)
    summary = _summary_rows([info.eval_before, info.eval_after] + ([recovered] if recovered else []))
    return {"eval_header": header, "eval_rows": _cells(rows + summary), "eval_summary": bool(summary)}


def _summary_rows(columns: Sequence[Mapping[str, float]]) -> list[list[str]]:
    """The mean of the perplexities and the geometric mean of the per-domain ratios to dense (``columns[0]``), over
    the domains every column measured: the mean is dominated by the domain with the highest perplexity, the
    geometric mean weighs each domain's change alike. None for fewer than two such domains."""
    dense = columns[0]
    domains = [d for d in dense if all(col.get(d) for col in columns)]
    if len(domains) < 2:
        return []
    means = [sum(col[d] for d in domains) / len(domains) for col in columns]
    ratios = [math.exp(sum(math.log(col[d] / dense[d]) for d in domains) / len(domains)) for col in columns]
    return [["**mean**", *(f"{m:.2f}" for m in means), _change(means[0], means[-1])],
            ["**geometric mean, ratio to dense**", *(f"{r:.3f}x" for r in ratios), _change(1.0, ratios[-1])]]


def _accuracy_table(info: CardInfo) -> dict[str, Any]:
    """``acc_header`` and ``acc_rows``: accuracy ± standard error per task in each column (dense, levels), then the
    mean; ``acc_calibration``: the calibration mix the levels were pruned with."""
    columns = [(label, dict(col)) for label, col in info.accuracy_columns]
    if not columns:
        return {"acc_header": [], "acc_rows": [], "acc_shots": None, "acc_calibration": None}
    mine = {info.branch, f"{info.branch} recovered"}
    header = ["task"] + [f"**{label}** (this card)" if label in mine and label == _own_label(info) else label
                         for label, _ in columns]
    tasks = list(dict.fromkeys(t for _, col in columns for t in col))
    rows = [[t] + [_acc_cell(col[t]["acc"], col[t].get("acc_stderr")) if t in col else "—" for _, col in columns]
            for t in tasks]
    shots = sorted({v.get("num_fewshot", 0) for _, col in columns for v in col.values()})
    return {"acc_header": header, "acc_rows": _cells(rows) + [["**mean**"] + [_mean_cell(col, tasks)
                                                                           for _, col in columns]],
            "acc_shots": "/".join(map(str, shots)), "acc_calibration": _mix_text(info.calibration)}


def _acc_cell(acc: float, stderr: Any, bold: bool = False) -> str:
    value = f"**{100 * acc:.1f}**" if bold else f"{100 * acc:.1f}"
    return f"{value} ± {100 * stderr:.1f}" if _is_real(stderr) else value


def _mean_cell(column: Mapping[str, Mapping[str, Any]], tasks: list[str]) -> str:
    """The unweighted mean over the tasks; its standard error treats the tasks as independent samples:
    sqrt(sum of squared task errors) / number of tasks."""
    if not all(t in column for t in tasks):
        return "—"
    mean = sum(column[t]["acc"] for t in tasks) / len(tasks)
    errors = [column[t].get("acc_stderr") for t in tasks]
    stderr = math.sqrt(sum(e * e for e in errors)) / len(tasks) if all(map(_is_real, errors)) else None
    return _acc_cell(mean, stderr, bold=True)


def _mix_text(calibration: Mapping[str, Any]) -> str:
    """The calibration mix in words: each domain's share of the windows, the number and length of the windows."""
    domains = calibration.get("domains")
    weights = {str(d): float(w) for d, w in domains.items() if _is_real(w) and w > 0} if isinstance(
        domains, Mapping) else {}
    total = sum(weights.values())
    if len(weights) == 1:
        text = f"one domain, {next(iter(weights))}"
    elif weights:
        text = f"a mix of {len(weights)} domains (" + ", ".join(f"{d} {100 * w / total:.0f}%"
                                                               for d, w in weights.items()) + ")"
    else:
        text = str(calibration.get("data") or "data not recorded")
    if calibration.get("num_samples") and calibration.get("seq_len"):
        text += f", {calibration['num_samples']} windows of {calibration['seq_len']} tokens"
    return text


def _own_label(info: CardInfo) -> str:
    labels = [label for label, _ in info.accuracy_columns]
    recovered = f"{info.branch} recovered"
    return recovered if recovered in labels else info.branch


def _recovery_bullets(recovery: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    return [(str(k).replace("_", " "), _cell(v)) for k, v in (recovery or {}).items()]


def _speed(speed: Mapping[str, Any] | None) -> dict[str, Any]:
    speed = speed or {}
    dense, pruned = speed.get("dense_tokens_per_s"), speed.get("pruned_tokens_per_s")
    out: dict[str, Any] = {"speed_rows": [], "speedup": None}
    if isinstance(dense, (int, float)) and isinstance(pruned, (int, float)) and dense > 0:
        out["speed_rows"] = _cells([("dense", f"{dense:.1f}"), ("pruned", f"{pruned:.1f}")])
        out["speedup"] = f"{pruned / dense:.2f}"
    settings = [(k, v) for k, v in speed.items() if k not in ("dense_tokens_per_s", "pruned_tokens_per_s")]
    out["speed_settings"] = ", ".join(f"{str(k).replace('_', ' ')} {_cell(v)}" for k, v in settings)
    return out


def _level_rows(info: CardInfo) -> list[list[str]]:
    levels = {branch: float(sparsity) for sparsity, branch in info.other_levels}
    levels.setdefault(info.branch, float(info.target_sparsity))
    return _cells([
        (_pct(sparsity, 0), f"`{branch}`" + (" (this card)" if branch == info.branch else ""), f'`revision="{branch}"`')
        for branch, sparsity in sorted(levels.items(), key=lambda item: (item[1], item[0]))
    ])


def _reference(info: CardInfo) -> str:
    """The base model as markdown: a Hub link, or the name of where it came from."""
    if info.base_model:
        return f"[{info.base_model}](https://huggingface.co/{info.base_model})"
    return f"`{info.base_model_source}` (a local model, not on the Hub)"


# ---------------------------------------------------------------------------------------------- rendering
def _default_template() -> Path:
    here = Path(__file__).resolve().parent.parent
    # Installed package: hf_prune/model_cards/; a source checkout: <repo>/model_cards/.
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
        template: a Jinja2 template (see ``model_cards/pruned_model.md`` for the variables it receives).

    Raises:
        ModelCardError: invalid ``info``, a missing template, or metadata the Hub would reject.
    """
    import jinja2
    from huggingface_hub import ModelCard

    from ..modeling.configuration_pruned_qwen2 import SUPPORTED_TRANSFORMERS_SPEC

    info.validate()
    template_path = Path(template) if template is not None else _default_template()
    if not template_path.is_file():
        raise ModelCardError(f"Model card template {template_path} does not exist.")
    repo = info.repo_id or "<namespace>/<repo-name>"
    bullets, tables = _calibration(info.calibration)
    reference = _reference(info)
    revision = f" at revision `{info.base_model_revision}`" if info.base_model_revision else ""
    try:
        card = ModelCard.from_template(
            _card_data(info), template_path=str(template_path),
            title=_title(info),
            summary=(f"A structurally pruned version of {reference}: {_pct(info.achieved_sparsity)} sparsity "
                     f"({_count(info.params_before, False)} → {_count(info.params_after, False)} parameters), KV cache "
                     f"{_pct(info.kv_cache_reduction)} smaller. This card describes branch `{info.branch}`."),
            repo_id=repo, branch=info.branch, transformers_range=SUPPORTED_TRANSFORMERS_SPEC,
            origin=f"Pruned from {reference}{revision}", method=info.method.strip(),
            calibration_bullets=bullets, calibration_tables=tables, size_rows=_size_rows(info),
            chart_file=CHART_FILENAME, layer_rows=_layer_rows(info.layers), **_eval_table(info),
            **_accuracy_table(info),
            recovery_bullets=_recovery_bullets(info.recovery),
            eval_seq_len=info.eval_seq_len, **_speed(info.speed), level_rows=_level_rows(info),
            base_model_ref=reference,
        )
    except jinja2.TemplateError as err:
        raise ModelCardError(f"Template {template_path} does not render: {err}") from None
    text = str(card)
    check_card_metadata(text)
    return text


def write_model_card(folder: str | Path, info: CardInfo, *, template: str | Path | None = None) -> Path:
    """Write ``README.md`` and the per-layer chart (``layer_sizes.png``) into ``folder``; returns the README path."""
    from .chart import write_layer_chart

    folder = Path(folder)
    if not folder.is_dir():
        raise ModelCardError(f"Folder does not exist: {folder}")
    text = render_model_card(info, template=template)
    write_layer_chart(folder / CHART_FILENAME, info.layers, info.base_layers, title=f"{info.branch}: per-layer sizes")
    readme = folder / "README.md"
    readme.write_text(text, encoding="utf-8")
    return readme
