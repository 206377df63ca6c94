"""The *save* step: one self-describing folder per level (weights, plan, config, evaluation, model card).

A level folder holds the checkpoint (:func:`~hf_prune.format.checkpoint.save_pruned_model`: safetensors,
``config.json`` with ``auto_map``, the remote-code files, the tokenizer), ``pruning_plan.json``,
``prune_config.json`` (the :class:`~hf_prune.PruneConfig` that produced it) and ``eval_results.json``; it
appears complete or not at all. Its model card and chart are written once every level is evaluated
(:func:`write_cards`): a card compares the level with all the others.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..config import CONFIG_FILE, PruneConfig
from ..format.plan import PruningPlan
from .record import DenseRecord, LevelRecord

__all__ = ["BaseModelInfo", "describe_base_model", "calibration_description", "level_card", "save_level",
           "write_cards", "recovery_description", "held_back_description", "EVAL_FILE"]

logger = logging.getLogger(__name__)

#: Evaluation results written into every level folder.
EVAL_FILE = "eval_results.json"


@dataclass(frozen=True)
class BaseModelInfo:
    """What the cards and plans say about the dense model that was pruned.

    Attributes:
        name: how it is named: its Hub id, or for a local model the folder (or ``_name_or_path``) name.
        hub_id: its Hub id, ``None`` when it exists only locally (the card then links nowhere).
        path: the id or path it was loaded from.
        revision: the commit (Hub) or revision that was pruned, if known.
        license: its licence id (``"unknown"`` if none was found).
        params: its parameter count.
        layers: its per-layer sizes (:class:`~hf_prune.format.plan.LayerShape` dicts).
    """

    name: str
    hub_id: str | None
    path: str
    revision: str | None
    license: str
    params: int
    layers: list[dict[str, int]] = field(repr=False)


def _license(path: str, local: bool, token: str | None) -> str:
    """The licence id in the model's card (its local README.md, or its Hub card); ``"unknown"`` if none."""
    from huggingface_hub import ModelCard

    try:
        if local:
            readme = Path(path).expanduser() / "README.md"
            card = ModelCard.load(readme) if readme.is_file() else None
        else:
            card = ModelCard.load(path, token=token)
    except Exception:  # no card, no network: the licence is just not known
        return "unknown"
    return str(getattr(card.data, "license", None) or "unknown") if card is not None else "unknown"


def describe_base_model(model: Any, path: str, *, local: bool, base_model: str | None = None,
                        license: str | None = None, revision: str | None = None,
                        token: str | None = None) -> BaseModelInfo:
    """:class:`BaseModelInfo` of a loaded ``model`` that came from ``path`` (a Hub id unless ``local``).

    ``base_model`` / ``license`` override what the cards say; a local model has no Hub id unless ``base_model``
    names one.
    """
    from ..format.geometry import layer_shapes

    hub_id = base_model or (None if local else path)
    name = hub_id or Path(str(getattr(model.config, "_name_or_path", "") or path or "model")).name or "model"
    commit = revision if local else (getattr(model.config, "_commit_hash", None) or revision)
    return BaseModelInfo(
        name=name, hub_id=hub_id, path=path, revision=commit,
        license=license or _license(path, local, token),
        params=sum(p.numel() for p in model.parameters()),
        layers=[asdict(s) for s in layer_shapes(model)],
    )


def calibration_description(calibration: Any, config: PruneConfig,
                            sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """How the model card describes the calibration data (domain shares and where each domain's text is from);
    ``calibration`` is a :class:`~hf_prune.data.calibration.Calibration`."""
    out: dict[str, Any] = {"num_samples": config.num_samples, "seq_len": config.seq_len, "seed": config.seed}
    if calibration.mix is None:
        out["data"] = calibration.kind
        return out
    calibration = calibration.mix
    out["domains"] = {s.name: round(s.weight, 4) for s in calibration.sources}
    origins = dict(sources or {})
    # Local paths mean nothing to a reader of the card: the file name (or the description given) is shown.
    out["sources"] = {s.name: origins.get(s.name) or (Path(s.source).name if s.is_local else s.source)
                      for s in calibration.sources}
    hub_ids = sorted({s.source for s in calibration.sources if not s.is_local})
    if hub_ids:
        out["datasets"] = hub_ids
    return out


def _method(config: PruneConfig) -> str:
    text = (f"Method `{config.method}`: {config.to_dict()['importance']} importance, {config.allocation} allocation, "
            f"{config.steps} scoring round(s); attention heads (GQA-aware: a KV head goes with its query heads) and "
            "MLP channels removed.")
    if config.compensation:
        text += (f" The kept columns of every o_proj and down_proj were then refit to the dense layer's output by damped "
                 f"least squares (`{config.compensation}`, {config.compensation_target} target, {_damping(config)}, "
                 f"{config.compensation_samples} calibration windows).")
    if config.recovery is None:
        return text + " No recovery fine-tuning."
    r = config.recovery
    what = {"kd": "distilled from the dense model (KL to its next-token distribution"
                  + (f", {r.lm_weight:g} LM loss" if r.lm_weight else "") + ")",
            "lm": "trained with the next-token (LM) loss",
            "local": "trained layer by layer to reproduce the dense model's layer outputs"}[r.method]
    return text + (f" The level was then {what} on {r.tokens_used:,} calibration-mix tokens, "
                   f"{'LoRA (merged back)' if r.lora else 'all parameters'} (see Recovery).")


def _damping(config: PruneConfig) -> str:
    toward = "the kept weights" if config.compensation_toward == "kept" else "zero"
    if config.compensation_damping == "auto":
        return f"damping chosen per projection by leave-one-domain-out cross-validation, toward {toward}"
    return f"damping {config.compensation_damping:g} toward {toward}"


def recovery_description(recovery: Any) -> dict[str, Any]:
    """What the card's Recovery section lists, from a :class:`~hf_prune.recovery.RecoveryResult`."""
    c = recovery.config
    out: dict[str, Any] = {"method": c.method, "tokens used": f"{recovery.tokens:,}", "optimizer steps": recovery.steps,
                           "sequence length": c.seq_len, "tokens per step": c.tokens_per_step,
                           "learning rate": f"{c.lr:g} ({c.lr_scheduler}, warmup {c.warmup:g})",
                           "parameters trained": f"LoRA r={c.lora_r}, alpha={c.lora_alpha:g}, merged back" if c.lora
                           else "all"}
    if recovery.lr_probe is not None:
        out["learning rate"] += f"; {recovery.lr_probe.describe()}"
    if c.method == "kd":
        out["temperature"] = c.temperature
        out["LM loss weight"] = c.lm_weight
    out["training data"] = ("windows drawn from the calibration mix with a seed of their own: "
                            + ", ".join(f"{d} {n}" for d, n in recovery.domain_counts.items()))
    if recovery.held_back is not None:
        out.update(held_back_description(recovery.held_back, c.patience))
    return out


def held_back_description(h: Any, patience: int) -> dict[str, str]:
    """The card's lines on the held-back check, from a :class:`~hf_prune.recovery.guard.HeldBackReport`."""
    windows = ", ".join(f"{d} {n}" for d, n in h.domain_counts.items())
    out = {"held-back loss": f"{h.before:.4f} before, {h.best:.4f} best (step {h.best_step}), {h.final:.4f} final "
                             f"(step {h.final_step}); next-token cross-entropy on {h.windows} calibration windows kept "
                             f"out of training ({windows})",
           "weights kept": {"input": "the model as pruned: no recovery step lowered the held-back loss",
                            "best": f"those of step {h.best_step}, the lowest held-back loss",
                            "final": "those of the last step, the lowest held-back loss"}[h.returned]}
    if h.stopped_early is not None:
        out["stopped early"] = f"at step {h.stopped_early}, after {patience} held-back evaluations without a new best"
    return out


def level_card(base: BaseModelInfo, record: LevelRecord, dense: DenseRecord, *, config: PruneConfig,
               calibration: Mapping[str, Any], eval_seq_len: int = 256, repo_id: str | None = None,
               accuracy_columns: list[tuple[str, dict[str, Any]]] = ()):
    """The :class:`~hf_prune.hub.CardInfo` of one level: a view of its record (``accuracy_columns``: the whole
    run's accuracy table, :func:`~hf_prune.job.record.accuracy_columns`)."""
    from ..hub.card import CardInfo

    own = record.own_accuracy
    accuracy = {} if own is None else {"accuracy": own.to_dict(), "accuracy_columns": accuracy_columns,
                                       "accuracy_sources": dict(own.sources)}
    return CardInfo(
        base_model=base.hub_id, base_model_source=base.name, base_model_revision=base.revision, license=base.license,
        repo_id=repo_id, method=_method(config), calibration=dict(calibration), target_sparsity=record.target,
        achieved_sparsity=float(record.sparsity), params_before=base.params, params_after=record.params,
        kv_cache_reduction=float(record.kv_cache_reduction), layers=record.layers, base_layers=base.layers,
        eval_before=dense.perplexity.per_domain if dense.perplexity is not None else {},
        eval_after=record.perplexity.per_domain if record.perplexity is not None else {}, eval_seq_len=eval_seq_len,
        eval_recovered=record.recovered_perplexity.per_domain if record.recovered_perplexity is not None else {},
        recovery=recovery_description(record.recovery) if record.recovery is not None else None,
        **accuracy, other_levels=[(s, config.name_of(s)) for s in config.target_sparsity], branch=record.branch,
        targets=record.targets,
    )


def save_level(folder: str | os.PathLike, model: Any, tokenizer: Any, *, plan: PruningPlan, config: PruneConfig,
               evaluation: Mapping[str, Any], overwrite: bool = False) -> Path:
    """Write one level folder (see the module docstring; the card comes later) atomically; returns its path.

    Args:
        plan: the level's plan (indices into the base model) with its metadata.
        config: the run's config, saved as ``prune_config.json``.
        evaluation: what ``eval_results.json`` holds.
    """
    from ..format.checkpoint import save_pruned_model

    def extra(tmp: Path) -> None:
        (tmp / EVAL_FILE).write_text(json.dumps(dict(evaluation), indent=2) + "\n", encoding="utf-8")
        config.save(tmp / CONFIG_FILE)

    path = save_pruned_model(model, folder, tokenizer=tokenizer, plan=plan, overwrite=overwrite, extra=extra)
    logger.info("saved %s", path)
    return path


def write_cards(cards: Mapping[Path, Any]) -> None:
    """Write each folder's model card (README.md and its chart), once every level is known."""
    from ..hub.card import write_model_card

    for folder, card in cards.items():
        write_model_card(folder, card)
