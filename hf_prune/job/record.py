"""What a job learned about the dense model and each level, held once.

A level's facts (its sparsity, size, perplexity and accuracy before and after recovery, the recovery run) are
gathered into one :class:`LevelRecord` as the level is built and evaluated; the job's ``metrics``, the level's
``eval_results.json`` and its model card are views of it (:meth:`LevelRecord.metrics`,
:meth:`LevelRecord.eval_results`, :func:`hf_prune.job.save.level_card`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import level_name

__all__ = ["DenseRecord", "LevelRecord", "level_record", "accuracy_columns"]


def _dict(report: Any) -> dict[str, Any] | None:
    return report.to_dict() if report is not None else None


@dataclass
class DenseRecord:
    """The dense model: its size and, when evaluated, its :class:`~hf_prune.evaluation.PerplexityReport` and
    :class:`~hf_prune.accuracy.AccuracyReport`."""

    params: int
    perplexity: Any = None
    accuracy: Any = None

    def metrics(self) -> dict[str, Any]:
        out: dict[str, Any] = {"params": self.params}
        if self.perplexity is not None:
            out["perplexity"] = self.perplexity.to_dict()
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy.to_dict()
        return out


@dataclass
class LevelRecord:
    """One level as saved.

    Attributes:
        target: the requested sparsity; sparsity: the measured one; kv_cache_reduction: the KV cache removed.
        params: its parameter count; layers: its per-layer sizes (:class:`~hf_prune.format.plan.LayerShape` dicts).
        perplexity, accuracy: its reports before recovery (``None``: not evaluated).
        recovery: its :class:`~hf_prune.recovery.RecoveryResult` (``None``: not recovered);
        recovered_perplexity, recovered_accuracy: its reports after recovery.
        folder: where it was saved.
        name: its folder and branch name (``None``: the sparsity's, ``sparsity-30``).
        targets: what it was asked, what it reached (parameters counted from its weights, memory at the run's
            context, KV cache removed) and whether it met each target (:func:`hf_prune.engine.targets.measured`).
    """

    target: float
    sparsity: float
    kv_cache_reduction: float
    params: int
    layers: list[dict[str, int]] = field(repr=False)
    perplexity: Any = None
    accuracy: Any = None
    recovery: Any = None
    recovered_perplexity: Any = None
    recovered_accuracy: Any = None
    folder: Path | None = None
    name: str | None = None
    targets: dict[str, Any] | None = None

    @property
    def branch(self) -> str:
        return self.name or level_name(self.target)

    @property
    def own_accuracy(self) -> Any:
        """The accuracy the saved checkpoint has: after recovery if it was recovered."""
        return self.recovered_accuracy if self.recovered_accuracy is not None else self.accuracy

    def metrics(self) -> dict[str, Any]:
        """The level's entry in :attr:`PruneAndPushResult.metrics` (see there)."""
        out: dict[str, Any] = {"branch": self.branch, "target_sparsity": self.target, "sparsity": self.sparsity,
                               "kv_cache_reduction": self.kv_cache_reduction, "params": self.params}
        if self.targets is not None:
            out["targets"] = self.targets
        if self.perplexity is not None:
            out["perplexity"] = self.perplexity.to_dict()
        if self.accuracy is not None:
            out["accuracy"] = self.accuracy.to_dict()
        if self.recovery is not None:
            out["recovery"] = self.recovery.to_dict()
            recovered = {k: v.to_dict() for k, v in (("perplexity", self.recovered_perplexity),
                                                     ("accuracy", self.recovered_accuracy)) if v is not None}
            if recovered:
                out["recovered"] = recovered
        return out

    def to_state(self) -> dict[str, Any]:
        """Everything but the folder, JSON-ready: what a resumed run reads back with :meth:`from_state`."""
        return {"target": self.target, "sparsity": self.sparsity, "kv_cache_reduction": self.kv_cache_reduction,
                "params": self.params, "layers": self.layers, "name": self.name, "targets": self.targets,
                "perplexity": _dict(self.perplexity),
                "accuracy": _dict(self.accuracy), "recovery": _dict(self.recovery),
                "recovered_perplexity": _dict(self.recovered_perplexity),
                "recovered_accuracy": _dict(self.recovered_accuracy)}

    @classmethod
    def from_state(cls, data: Mapping[str, Any], folder: Path) -> LevelRecord:
        """The record :meth:`to_state` wrote, of the level saved in ``folder``."""
        from ..accuracy import AccuracyReport
        from ..evaluation import PerplexityReport
        from ..recovery.distill import RecoveryResult

        def load(kind: Any, key: str) -> Any:
            return kind.from_dict(data[key]) if data.get(key) is not None else None

        return cls(data["target"], data["sparsity"], data["kv_cache_reduction"], data["params"], data["layers"],
                   perplexity=load(PerplexityReport, "perplexity"), accuracy=load(AccuracyReport, "accuracy"),
                   recovery=load(RecoveryResult, "recovery"),
                   recovered_perplexity=load(PerplexityReport, "recovered_perplexity"),
                   recovered_accuracy=load(AccuracyReport, "recovered_accuracy"), folder=folder,
                   name=data.get("name"), targets=data.get("targets"))

    def eval_results(self, base_model: str, dense: DenseRecord) -> dict[str, Any]:
        """What the level's ``eval_results.json`` holds: perplexity of dense, pruned (and recovered); accuracy of
        each beside it, model by model."""
        out: dict[str, Any] = {
            "base_model": base_model, "branch": self.branch, "target_sparsity": self.target,
            "sparsity": self.sparsity, "kv_cache_reduction": self.kv_cache_reduction,
            "params_before": dense.params, "params_after": self.params,
            **({} if self.targets is None else {"targets": self.targets}),
            "dense": _dict(dense.perplexity), "pruned": _dict(self.perplexity)}
        if self.recovery is not None:
            out["recovered"] = _dict(self.recovered_perplexity)
            out["recovery"] = self.recovery.to_dict()
        if self.accuracy is not None:
            out["accuracy"] = {k: v.to_dict() for k, v in (("dense", dense.accuracy), ("pruned", self.accuracy),
                                                           ("recovered", self.recovered_accuracy)) if v is not None}
        return out


def level_record(result: Any, sparsity: float, model: Any, pruned: Any) -> LevelRecord:
    """The record of a level just built: ``pruned``, the level at ``sparsity`` of ``result`` (a
    :class:`~hf_prune.PruneResult`), pruned from ``model``; its name, sizes and targets, nothing evaluated yet."""
    from ..engine.memory import ModelDims
    from ..engine.targets import measured

    config = result.config
    params = sum(p.numel() for p in pruned.parameters())
    targets = measured(config, sparsity, ModelDims.from_model(model), ModelDims.from_model(pruned), params)
    return LevelRecord(sparsity, result.sparsity[sparsity], result.kv_cache_reduction[sparsity], params, [],
                       name=config.name_of(sparsity), targets=targets)


def accuracy_columns(metrics: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(label, {task: {...}})`` per accuracy column of a job's ``metrics``: dense, then each level and (if
    recovered) the level recovered beside it; empty when no accuracy was evaluated."""
    if "accuracy" not in metrics["dense"]:
        return []
    columns = [("dense", metrics["dense"]["accuracy"])]
    for _, m in sorted(metrics["levels"].items()):
        columns.append((m["branch"], m["accuracy"]))
        if "accuracy" in m.get("recovered", {}):
            columns.append((f"{m['branch']} recovered", m["recovered"]["accuracy"]))
    return columns
