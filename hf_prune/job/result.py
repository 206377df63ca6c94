"""What :func:`~hf_prune.prune_and_push` returns, and its tables."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..markdown import table
from .record import accuracy_columns

__all__ = ["PruneAndPushResult"]


@dataclass
class PruneAndPushResult:
    """What :func:`prune_and_push` returns.

    Attributes:
        folders: sparsity -> saved level folder.
        metrics: ``{"dense": {...}, "levels": {sparsity: {...}}}``; each entry holds ``params``, and for
            levels ``target_sparsity``, ``sparsity`` (measured), ``kv_cache_reduction``, ``branch``; plus
            ``perplexity`` (a :meth:`PerplexityReport.to_dict`, before recovery) when an evaluation was given.
            With recovery, a level also holds ``recovery`` (:meth:`RecoveryResult.to_dict`: settings, tokens,
            throughput) and ``recovered`` (``{"perplexity": ...}`` after recovery, when evaluated). With
            ``eval_tasks``, dense, each level and each recovered level also hold ``accuracy``
            (:meth:`AccuracyReport.to_dict`: ``{task: {"acc", "acc_stderr", "n", ...}}``).
        pushes: one :class:`~hf_prune.hub.PushResult` per branch, then ``main`` (empty when not pushed).
        result: the :class:`~hf_prune.PruneResult` of the run.
        primary: the level that is (or would be) on ``main``.
        repo_id: the Hub repo pushed to, if any.
    """

    folders: dict[float, Path]
    metrics: dict[str, Any]
    pushes: list[Any] = field(default_factory=list)
    result: Any = field(default=None, repr=False)
    primary: float | None = None
    repo_id: str | None = None

    def summary(self) -> str:
        """Markdown table: one row for the dense model, one per level (params, sparsity, KV, mean perplexity)."""
        dense = self.metrics["dense"]
        has_ppl = "perplexity" in dense
        has_rec = has_ppl and any("recovered" in m for m in self.metrics["levels"].values())

        def evaluated(m: dict[str, Any]) -> list[str]:
            ppl = [f"{m['perplexity']['mean']:.2f}"] if has_ppl else []
            rec = [f"{m['recovered']['perplexity']['mean']:.2f}" if "recovered" in m else ""] if has_rec else []
            return ppl + rec

        head = ["model", "params", "sparsity", "KV cache removed", *(["mean ppl"] if has_ppl else []),
                *(["recovered ppl"] if has_rec else []), "folder"]
        rows = [["dense", f"{dense['params'] / 1e6:.2f} M", "0%", "0%", *evaluated(dense), ""]]
        for s, m in sorted(self.metrics["levels"].items()):
            mark = " (main)" if s == self.primary and self.pushes else ""
            rows.append([f"{m['branch']}{mark}", f"{m['params'] / 1e6:.2f} M", f"{m['sparsity']:.1%}",
                         f"{m['kv_cache_reduction']:.1%}", *evaluated(m), str(self.folders[s])])
        return table(head, rows, "l" + "r" * (len(head) - 2) + "l")

    def accuracy_table(self) -> str:
        """Markdown table of accuracy per task (%): dense, then every level; the mean (empty if not evaluated)."""
        columns = accuracy_columns(self.metrics)
        if not columns:
            return ""
        tasks = list(columns[0][1])
        rows = [[task] + [f"{100 * c[task]['acc']:.1f}" for _, c in columns] for task in tasks]
        rows.append(["**mean**"] + [f"**{100 * sum(c[t]['acc'] for t in tasks) / len(tasks):.1f}**"
                                    for _, c in columns])
        return table(["task"] + [name for name, _ in columns], rows, "l" + "r" * len(columns))

    def perplexity_table(self) -> str:
        """Markdown table of per-domain perplexity: dense, then every level (empty string if not evaluated)."""
        dense = self.metrics["dense"].get("perplexity")
        if dense is None:
            return ""
        # One column per level, and one per recovered level next to it.
        columns = []
        for _, m in sorted(self.metrics["levels"].items()):
            columns.append((m["branch"], m["perplexity"]))
            if "recovered" in m:
                columns.append((f"{m['branch']} recovered", m["recovered"]["perplexity"]))
        rows = [[d, f"{v:.2f}"] + [f"{p['per_domain'][d]:.2f}" for _, p in columns]
                for d, v in dense["per_domain"].items()]
        rows.append(["**mean**", f"**{dense['mean']:.2f}**"] + [f"**{p['mean']:.2f}**" for _, p in columns])
        return table(["domain", "dense"] + [name for name, _ in columns], rows, "l" + "r" * (len(columns) + 1))
