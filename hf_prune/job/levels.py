"""The steps of a job that run on the model: load, evaluate, and build each level (recovered, saved)."""

from __future__ import annotations

import copy
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import PruneConfig
from .arguments import EvaluationArguments, ModelArguments
from .record import DenseRecord, LevelRecord, level_record

__all__ = ["load_tokenizer", "load_model", "Evaluator", "LevelBuilder"]

logger = logging.getLogger(__name__)


def load_tokenizer(model: ModelArguments, source: Any):
    """The run's tokenizer: the one given, or loaded from where ``model.tokenizer`` (else the model) says."""
    from ..loading import load_tokenizer as load

    tokenizer = model.tokenizer
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        return tokenizer
    name = source.name if tokenizer is None else os.fspath(tokenizer)
    hub = {"token": model.token} if model.token is not None and not Path(name).expanduser().exists() else {}
    return load(name, **hub, **({"revision": model.revision} if tokenizer is None and model.revision else {}))


def load_model(model: ModelArguments, source: Any) -> tuple[Any, str, bool]:
    """(model as a Qwen2-family causal LM in eval mode, name it came from, local?)."""
    from ..loading import load_model as load
    from ..loading import to_qwen2_family

    if source is None:  # an already loaded model
        name = str(getattr(model.model.config, "_name_or_path", "") or "model")
        return to_qwen2_family(model.model).eval(), name, True
    loaded = load(source, dtype=model.torch_dtype, device_map=model.device_map, revision=model.revision, token=model.token,
                  max_memory=model.max_memory)
    return loaded, source.name, source.local


@dataclass
class Evaluator:
    """``evaluator(model, label) -> (PerplexityReport | None, AccuracyReport | None)``: perplexity on the run's
    evaluation text, then accuracy on its tasks (each ``None`` when not asked for)."""

    tokenizer: Any
    evaluation: Any  # a Calibration, or None
    arguments: EvaluationArguments
    tasks: Any = None  # a prepared TaskSuite, or None
    show_progress: bool = True

    def __call__(self, model, label: str) -> tuple[Any, Any]:
        report = accuracy = None
        if self.evaluation is not None:
            from ..evaluation import evaluate_perplexity

            logger.info("evaluating %s", label)
            report = evaluate_perplexity(model, self.tokenizer, self.evaluation, seq_len=self.arguments.seq_len,
                                         max_windows_per_domain=self.arguments.max_windows, label=label,
                                         progress=self.show_progress)
        if self.tasks is not None:
            from ..accuracy import evaluate_tasks

            logger.info("accuracy of %s on %s", label, ", ".join(self.tasks.names))
            accuracy = evaluate_tasks(model, self.tokenizer, self.tasks, label=label, **self.arguments.task_options())
        return report, accuracy

    def dense(self, model, params: int) -> DenseRecord:
        return DenseRecord(params, *self(model, "dense"))


@dataclass
class LevelBuilder:
    """Builds each level from the dense model, evaluates it, recovers it (when asked) and evaluates it again,
    saves its folder (without the card), and returns its :class:`LevelRecord`.

    Attributes:
        windows: recovery's training and held-back windows (drawn once for every level), or ``None`` without
            recovery.
        teacher_cache: the dense model's cached distributions of the training windows, filled by the first level's
            recovery and reused by the others (``kd`` with ``kd_top_k`` > 0).
        plan_metadata: what every level's ``pruning_plan.json`` adds to the plan's own metadata.
    """

    model: Any
    tokenizer: Any
    result: Any  # the PruneResult
    evaluate: Evaluator
    out: Path
    plan_metadata: dict[str, Any]
    windows: Any = None
    state_dir: Any = None
    overwrite: bool = False
    show_progress: bool = True
    ledger: Any = None  # a LevelLedger: the levels an interrupted run saved (kept), and where this one notes its own
    teacher_cache: Any = None

    def name(self, s: float) -> str:
        """The level's folder and branch name (``sparsity-30``, ``params-5B``, ``memory-12GiB-kv-50``)."""
        return self.result.config.name_of(s)

    def _pruned(self, s: float):
        """The level's model: the run's own top level (a copy when recovery will train it), else rebuilt."""
        if s == self.result.config.target_sparsity[-1] and self.result.model is not None:
            pruned = copy.deepcopy(self.result.model) if self.windows is not None else self.result.model
        else:
            pruned = self.result.apply(self.model, s, show_progress=self.show_progress)
        pruned.eval()
        if getattr(pruned, "generation_config", None) is None and getattr(self.model, "generation_config", None) is not None:
            pruned.generation_config = self.model.generation_config
        return pruned

    def _recover(self, pruned, s: float, record: LevelRecord):
        """``pruned`` trained towards the dense model and evaluated again (into ``record``)."""
        from ..recovery.distill import recover

        config: PruneConfig = self.result.config
        logger.info("recovering %s: %s on %s tokens", self.name(s), config.recovery.method,
                    f"{config.recovery.tokens_used:,}")
        state = Path(self.state_dir) / "recovery" / self.name(s) if self.state_dir is not None else None
        trained = recover(pruned, self.model, self.tokenizer, None, config.recovery, windows=self.windows,
                          state_dir=state, show_progress=self.show_progress, teacher_cache=self.teacher_cache)
        self.teacher_cache = trained.teacher_cache
        if record is None:  # a process other than rank 0: it trains alongside, rank 0 evaluates and saves
            return trained.model
        record.recovery = trained
        record.recovered_perplexity, record.recovered_accuracy = self.evaluate(trained.model, f"{self.name(s)} recovered")
        return trained.model

    def follow(self, s: float) -> None:
        """On a process other than rank 0 under torchrun: the collectives of building level ``s`` (its refit,
        its recovery), nothing evaluated or written."""
        pruned = self._pruned(s)
        if self.windows is not None:
            self._recover(pruned, s, None)

    def build(self, s: float, dense: DenseRecord, base_name: str) -> LevelRecord:
        import torch

        from ..format.geometry import layer_shapes
        from .save import save_level

        plan = self.result.plans[s]
        plan = type(plan)(layers=plan.layers, metadata={**plan.metadata, **self.plan_metadata})
        saved = self.ledger.saved(self.name(s), plan.to_dict()) if self.ledger is not None else None
        if saved is not None:
            return LevelRecord.from_state(saved, self.out / self.name(s))
        pruned = self._pruned(s)
        record = level_record(self.result, s, self.model, pruned)
        record.perplexity, record.accuracy = self.evaluate(pruned, self.name(s))
        if self.windows is not None:
            pruned = self._recover(pruned, s, record)
        record.layers = [asdict(shape) for shape in layer_shapes(pruned)]
        # A folder the interrupted run left (one that did not verify) is this run's to replace.
        replace = self.overwrite or (self.ledger is not None and self.ledger.knows(self.name(s)))
        record.folder = save_level(self.out / self.name(s), pruned, self.tokenizer, plan=plan,
                                   config=self.result.config, evaluation=record.eval_results(base_name, dense),
                                   overwrite=replace)
        if self.ledger is not None:
            self.ledger.record(self.name(s), plan.to_dict(), record.to_state())
        del pruned
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return record
