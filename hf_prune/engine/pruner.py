"""The :class:`Pruner` (one scoring round per :meth:`~Pruner.step`) and :func:`prune`, the loop over it.

Each round scores the current model, allocates the round's removal budget and slices the model; the plans of
the requested levels are recorded as the schedule passes them, so one run gives every level (nested).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..compat import disable_activation_checkpointing, enable_activation_checkpointing
from ..config import PruneConfig
from ..data.calibration import as_calibration
from ..errors import PruningError
from ..fileio import write_text_atomic
from ..markdown import table
from ..format.geometry import ModelGeometry, check_supported
from ..format.plan import PruningPlan
from ..format.slicing import apply_plan
from ..options import is_number
from .allocation import Constraints, allocate
from .batches import LossRecorder
from .compensation import MAX_FOLDS, CompensationData, DenseStatistics, RefitRule, compensate, compensation_batches
from .dispatch import redispatch
from .distributed import TRAFFIC, is_main, shard, world_size
from .fsdp import check_config as check_fsdp
from .fsdp import shard_model
from .importance import get_importance
from .memory import ModelDims
from .objectives import get_objective
from .priors import check_memory, choose_plan, holdout_windows, is_auto, start_priors
from .schedule import check_schedule, get_schedule
from .structures import LayerScores, kv_cache_per_token
from .targets import check_targets, keep_dense_layers, kv_heads_at, level_targets, resolve_targets

__all__ = ["Pruner", "prune", "PruneResult", "StepLog", "STATE_FILE"]

logger = logging.getLogger(__name__)

STATE_FILE = "prune_state.json"
_STATE_VERSION = 2


@dataclass
class StepLog:
    """One scoring round."""

    step: int
    target_sparsity: float
    sparsity: float
    params: int
    query_heads: int
    kv_heads: int
    mlp_channels: int
    loss: float | None
    loss_per_domain: dict[str, float]
    seconds: float
    recomputed_scores: bool
    priors: dict[str, Any] | None = None  # with "auto" priors: the chosen ones and the candidates' held-back losses


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        plans: requested sparsity -> plan, indices into the original model (nested: each level's kept set
            contains the next level's). ``apply_plan(original_model, result.plans[s])`` rebuilds a level.
        sparsity: requested sparsity -> measured fraction of decoder-layer parameters removed.
        kv_cache_reduction: requested sparsity -> fraction of the KV cache removed.
        log: one :class:`StepLog` per scoring round.
        config: the :class:`~hf_prune.PruneConfig` of the run, every method default filled in.
        settings: ``config.to_dict()`` plus the schedule's sparsities and the dense decoder parameter count.
        model: the pruned model of the highest level as :meth:`apply` gives it, when the run ended with it.
        compensation_data: the calibration batches weight compensation refits on (``None`` without it).
    """

    plans: dict[float, PruningPlan]
    sparsity: dict[float, float]
    kv_cache_reduction: dict[float, float]
    log: list[StepLog]
    config: PruneConfig
    settings: dict[str, Any]
    model: Any = field(default=None, repr=False)
    compensation_data: CompensationData | None = field(default=None, repr=False)

    def apply(self, model, sparsity: float, *, show_progress: bool = False):
        """The pruned model of one level, from the original ``model``, exactly as it is saved: sliced, and with
        ``compensation`` its kept output projections refit (:func:`hf_prune.compensate`)."""
        if self.config.compensation:
            return compensate(model, self.plans[sparsity], None, config=self.config, data=self.compensation_data,
                              show_progress=show_progress)
        return redispatch(apply_plan(model, self.plans[sparsity]), model)

    def summary(self) -> str:
        """A markdown table: level, measured sparsity, KV-cache reduction."""
        rows = [[self.config.name_of(s), f"{self.sparsity[s]:.2%}", f"{self.kv_cache_reduction[s]:.2%}"]
                for s in sorted(self.plans)]
        return table(["level", "decoder params removed", "KV cache removed"], rows)


# ---- model-dependent checks --------------------------------------------------------------------------------
def _max_removable(geometry: ModelGeometry, c: Constraints) -> int:
    """Decoder parameters the constraints allow removing at most (checked before any scoring)."""
    total = 0
    for i, s in enumerate(geometry.shapes):
        if i in c.keep_dense:
            continue
        full = geometry.layer_params(s.num_attention_heads, s.num_key_value_heads, s.intermediate_size)
        groups = s.num_key_value_heads
        kept_heads = kept_kv = 0
        if c.min_heads and groups:
            per_group = math.ceil(c.min_heads / groups)
            kept_heads, kept_kv = per_group * groups, groups
        kept_channels = math.ceil(c.min_channels / c.channel_multiple) * c.channel_multiple if s.intermediate_size else 0
        total += full - geometry.layer_params(kept_heads, kept_kv, min(kept_channels, s.intermediate_size))
    return total


def _constraints(config: PruneConfig, geometry: ModelGeometry) -> Constraints:
    """The config's constraints for this model, refused if the model cannot satisfy them."""
    # An "auto" prior's placeholder (the neutral value) is replaced by each candidate's (engine.priors).
    weight, balance = (v if is_number(v) else d for v, d in ((config.attention_weight, 1.0), (config.layer_balance, 0.0)))
    c = Constraints(keep_dense_layers(config.keep_dense, len(geometry.shapes)), config.min_heads,
                    config.min_channels, config.channel_multiple_for([s.intermediate_size for s in geometry.shapes]),
                    config.tp_degree, float(weight), float(balance),
                    tuple(s.intermediate_size for s in geometry.shapes), bool(config.uniform_heads))
    heads = sorted({s.num_attention_heads for s in geometry.shapes if s.num_attention_heads})
    if c.uniform_heads and len(heads) > 1:
        raise PruningError(f"uniform_heads keeps every layer at one query-head count, but this model's layers already "
                           f"have {heads} query heads: prune the dense model instead.")
    for i, s in enumerate(geometry.shapes):
        if i not in c.keep_dense and s.num_key_value_heads % c.tp_degree:
            raise PruningError(f"Layer {i} has {s.num_key_value_heads} KV heads, not divisible by tp_degree={c.tp_degree}.")
    params = geometry.total_params()
    removable = _max_removable(geometry, c)
    top = config.target_sparsity[-1]
    if top * params > removable + 0.005 * params:
        raise PruningError(
            f"Sparsity {top:.0%} is impossible under these constraints: at most {removable / params:.1%} of "
            "decoder parameters can be removed (keep_dense / min_heads / min_channels)."
        )
    return c


# ---- scores follow the model as it shrinks -----------------------------------------------------------------
def _remap(scores: list[LayerScores], plan: PruningPlan) -> list[LayerScores]:
    """Scores of the current model re-indexed for the model after ``plan`` (one-shot methods reuse them)."""
    out = []
    for s, layer in zip(scores, plan.layers):
        pick = lambda t, idx: None if t is None or not idx else t[torch.tensor(idx, dtype=torch.long)]  # noqa: E731
        out.append(LayerScores(pick(s.query_heads, layer.query_heads), pick(s.kv_heads, layer.kv_heads),
                               pick(s.mlp_channels, layer.mlp_channels)))
    return out


def _count_structures(geometry: ModelGeometry) -> tuple[int, int, int]:
    heads = sum(s.num_attention_heads for s in geometry.shapes)
    kv = sum(s.num_key_value_heads for s in geometry.shapes)
    channels = sum(s.intermediate_size for s in geometry.shapes)
    return heads, kv, channels


def _scores_to_json(scores: list[LayerScores] | None) -> list | None:
    if scores is None:
        return None
    return [[None if t is None else t.tolist() for t in (s.query_heads, s.kv_heads, s.mlp_channels)] for s in scores]


def _scores_from_json(data: list | None) -> list[LayerScores] | None:
    if data is None:
        return None
    return [LayerScores(*(None if t is None else torch.tensor(t) for t in layer)) for layer in data]


# ---- the pruner ----------------------------------------------------------------------------------------------
class Pruner:
    """Prunes ``model`` round by round towards every level of ``config.target_sparsity``.

    ``model`` is **not modified**: it is scored in place (gradients are cleared and ``requires_grad`` flags
    restored) and every later round runs on sliced copies, which get cheaper as the model shrinks. Everything
    that can be checked (options, the model's shape, the calibration data) is checked at construction, before
    any scoring.

    Example::

        pruner = Pruner(model, tokenizer, mix, PruneConfig(target_sparsity=(0.2, 0.4), steps=4))
        while not pruner.done:
            log = pruner.step()            # one round: score, allocate, slice
        result = pruner.result()           # plans of 20% and 40%, indices into `model`

    Args:
        model: a ``Qwen2ForCausalLM`` / ``Qwen3ForCausalLM`` (or an already pruned model: plans then index into it).
        tokenizer: tokenises a :class:`~hf_prune.CalibrationMix` (unused for pre-tokenised calibration).
        calibration: a ``CalibrationMix``, ``CalibrationWindows``, a ``[N, seq_len]`` tensor of token ids, a
            ``MultipleChoiceBatch`` (with ``objective="margin"``) or a list of batch dicts.
        config: the :class:`~hf_prune.PruneConfig` (default: all defaults); ``overrides`` replace fields.
        show_progress: per-batch progress bars while scoring.

    Raises:
        PruningError: invalid options, a target the constraints make impossible, no calibration tokens.
        UnsupportedModelError: ``model`` is not a Qwen2 / Qwen3 causal LM.
    """

    def __init__(self, model, tokenizer: Any, calibration: Any, config: PruneConfig | Mapping | None = None, *,
                 show_progress: bool = True, **overrides: Any) -> None:
        check_supported(model)
        geometry = ModelGeometry.of(model)
        # Parameter and memory targets become each level's decoder sparsity on this model (refused if unreachable).
        self.config = resolve_targets(PruneConfig.coerce(config, **overrides).resolved(), ModelDims.from_model(model))
        c = self.config
        self.model, self.tokenizer, self.show_progress = model, tokenizer, show_progress
        self.calibration = as_calibration(calibration)
        check_fsdp(c)
        self.criterion = get_importance(c.importance, seed=c.seed)
        self.objective = get_objective(c.objective)
        self.base_params = geometry.total_params()
        self.constraints = _constraints(c, geometry)
        check_targets(c, geometry)
        self.schedule = check_schedule(get_schedule(c.schedule)(list(c.target_sparsity), c.steps), c.target_sparsity)
        # Where inputs go: the embeddings' device (a model dispatched by accelerate moves them on from there).
        self.device = model.get_input_embeddings().weight.device
        if is_auto(c) and c.compensation:  # a memory check: before any calibration text is drawn
            check_memory(model, MAX_FOLDS if RefitRule.of(c).damping is None else 1)  # cross-validated: per fold
        # Drawn once, before any model work: spec errors (empty domain, missing file...) surface here.
        self.batches = self._draw(c.seed) if self.criterion.needs_data else []
        self.compensation_data = self._compensation_data(geometry) if c.compensation else None
        self.holdout = (holdout_windows(self.calibration, tokenizer, c.num_samples, c.seq_len, c.seed).to(self.device)
                        if is_auto(c) else None)
        self.priors_at = start_priors(c) if is_auto(c) else None  # "auto": where the next round's choice starts
        self.key = hashlib.sha256(json.dumps(
            {"config": c.fingerprint(), "schedule": self.schedule, "base_params": self.base_params,
             "calibration": self.calibration and self.calibration.describe()}, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self._kv0 = kv_cache_per_token(geometry.shapes)
        self.current = model
        self.cumulative = PruningPlan.keep_all(geometry.shapes).explicit(geometry.shapes)
        self.plans: dict[float, PruningPlan] = {}
        self.log: list[StepLog] = []
        self.next_step = 0
        self.scores: list[LayerScores] | None = None
        self._statistics: DenseStatistics | None = None  # "auto" priors with compensation: built at first use

    def _compensation_data(self, geometry: ModelGeometry) -> CompensationData:
        data = compensation_batches(self.calibration, self.tokenizer, self.config, self.device)
        dims = max(max(s.intermediate_size for s in geometry.shapes),
                   max(s.num_attention_heads for s in geometry.shapes) * geometry.head_dim)
        if self.config.compensation_damping == 0 and data.num_tokens < dims:
            raise PruningError(f"compensation without damping needs at least {dims:,} calibration tokens for a "
                               f"positive-definite system (the widest projection input), got {data.num_tokens:,}: "
                               "raise compensation_samples or set compensation_damping > 0.")
        return data

    def _compensated(self, plan: PruningPlan):
        return compensate(self.model, plan, None, config=self.config, data=self.compensation_data,
                          show_progress=self.show_progress)

    def _draw(self, seed: int) -> list[dict[str, Any]]:
        """The calibration batches (every rank draws the same) and this rank's share of them."""
        c = self.config
        if self.calibration is None:
            raise PruningError("scoring needs calibration data: give a CalibrationMix, windows or token ids.")
        batches = self.calibration.batches(c.num_samples, c.seq_len, seed, c.batch_size, self.device,
                                           tokenizer=self.tokenizer)
        if not batches:
            raise PruningError("The calibration set has no tokens.")
        if len(batches) < world_size():
            raise PruningError(f"{len(batches)} calibration batches cannot be split over {world_size()} processes; "
                               "raise num_samples or lower batch_size.")
        return shard(batches)

    @property
    def done(self) -> bool:
        """Whether every round of the schedule has run."""
        return self.next_step >= len(self.schedule)

    def _score(self, step: int, recorder: LossRecorder) -> list[LayerScores]:
        batches = self.batches
        if self.config.resample_each_step and step and self.criterion.needs_data:
            batches = self._draw(self.config.seed + step)
        checkpointing = (self.config.gradient_checkpointing and self.criterion.needs_grad
                         and getattr(self.criterion, "supports_checkpointing", True))
        if checkpointing:
            enable_activation_checkpointing(self.current)
        try:
            # fsdp: a copy sharded over the ranks is scored (and dropped with its shards when the round ends);
            # self.current stays whole on every rank, for slicing.
            model = shard_model(self.current) if self.config.fsdp else self.current
            return self.criterion(model, batches, recorder, show_progress=self.show_progress)
        finally:
            if checkpointing:
                disable_activation_checkpointing(self.current)

    def step(self) -> StepLog:
        """One round: score the current model, remove this round's share, slice. Returns the round's log."""
        if self.done:
            raise PruningError("every round of this run has run already.")
        t0, step, point = time.perf_counter(), self.next_step, self.schedule[self.next_step]
        geometry = ModelGeometry.of(self.current)
        budget = int(round(point * self.base_params)) - (self.base_params - geometry.total_params())

        kv0 = self._kv0 // 2  # the dense model's KV heads (the cache holds a key and a value per head)
        kv_gone = kv0 - sum(s.num_key_value_heads for s in geometry.shapes)
        kv_budget = max(0, kv_heads_at(self.config, point, kv0) - kv_gone)  # the KV-cache targets' share of the round
        recorder = LossRecorder(self.objective)
        fresh = self.scores is None or self.config.steps > 1
        TRAFFIC.reset()
        if fresh:
            self.scores = self._score(step, recorder)
            recorder.reduce()
        sent, calls = TRAFFIC.reset()
        if calls:
            logger.info("round %d: all-reduced %d bytes in %d calls", step + 1, sent, calls)
        plan, priors = self._allocate(geometry, budget, kv_budget)
        self.scores = _remap(self.scores, plan)
        self.cumulative = self.cumulative.compose(plan)
        c = self.config
        if c.compensation and c.compensation_when == "round":  # later rounds score the compensated model
            self.current = self._compensated(self.cumulative)
        else:
            self.current = redispatch(apply_plan(self.current, plan), self.model)

        after = ModelGeometry.of(self.current)
        sparsity = 1 - after.total_params() / self.base_params
        entry = StepLog(step, point, sparsity, after.total_params(), *_count_structures(after), recorder.mean(),
                        recorder.per_domain(), time.perf_counter() - t0, fresh, priors)
        self.log.append(entry)
        if point in c.target_sparsity:
            level = next(t for t in level_targets(c) if t.sparsity == point)
            targets = {} if c.size_target == "sparsity" and c.target_kv_cache is None else {"targets": level.asked(c)}
            self.plans[point] = PruningPlan(layers=self.cumulative.layers, metadata={
                "method": c.method, "level": level.name, **targets, "target_sparsity": point, "sparsity": sparsity,
                "kv_cache_reduction": 1 - kv_cache_per_token(after.shapes) / self._kv0,
                "base_model": getattr(self.model.config, "_name_or_path", None) or None, "seed": c.seed,
                "compensation": None if not c.compensation else {
                    "method": c.compensation, "damping": c.compensation_damping, "toward": c.compensation_toward,
                    "samples": c.compensation_samples,
                    "target": c.compensation_target, "when": c.compensation_when},
                **({} if priors is None else {"priors": [  # what "auto" chose in each round up to this level
                    {k: e.priors[k] for k in ("attention_weight", "layer_balance")} for e in self.log]}),
            })
        self.next_step += 1
        return entry

    def _allocate(self, geometry: ModelGeometry, budget: int, kv_budget: int = 0
                  ) -> tuple[PruningPlan, dict[str, Any] | None]:
        """The round's plan (of the current model); with "auto" priors, the candidates' best and what was measured.
        ``kv_budget``: KV heads the round removes at least (the levels' KV-cache targets)."""
        c = self.config

        def allocate_with(constraints: Constraints) -> PruningPlan:
            return allocate(self.scores, geometry, budget, allocation=c.allocation, normalization=c.normalization,
                            constraints=constraints, tolerance=int(0.002 * self.base_params),
                            kv_heads_to_remove=kv_budget).explicit(geometry.shapes)

        if self.holdout is None:
            return allocate_with(self.constraints), None
        plan, priors = choose_plan(allocate_with, self.constraints, c, self._judged, self.holdout, c.batch_size,
                                   self.priors_at)
        self.priors_at = (priors["attention_weight"], priors["layer_balance"])
        return plan, {**priors, "judged_after_refit": bool(c.compensation)}

    def _judged(self, plan: PruningPlan):
        """The model an "auto" candidate plan (of the current model) is judged by: sliced and, with compensation,
        refit, because the refit recovers part of what a plan removes and it recovers heads and channels unequally
        (judged before it, "auto" kept heads the refit would have restored: 13% worse at 50% on SmolLM2). The
        refit is the ``"dense"`` target's, from statistics gathered once: a solve per layer, no model pass."""
        if not self.config.compensation:
            return redispatch(apply_plan(self.current, plan), self.model)
        if self._statistics is None:
            self._statistics = DenseStatistics(self.model, self.compensation_data)
        return self._statistics.refit(self.cumulative.compose(plan), self.config.compensation_damping)

    def state_dict(self) -> dict[str, Any]:
        """The run so far, JSON-ready: enough to continue with :meth:`load_state_dict` in a new process."""
        return {
            "version": _STATE_VERSION, "key": self.key, "config": self.config.to_dict(), "next_step": self.next_step,
            "cumulative_plan": self.cumulative.to_dict(), "plans": {str(s): p.to_dict() for s, p in self.plans.items()},
            "log": [asdict(entry) for entry in self.log],
            # One-shot methods keep their scores across rounds: saved so a resumed run uses the same.
            "scores": None if self.config.steps > 1 else _scores_to_json(self.scores),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue a run from :meth:`state_dict`; refused unless it is the same run (options, model, data)."""
        if state.get("version") != _STATE_VERSION or state.get("key") != self.key:
            raise PruningError("this run state belongs to a run with other settings (options, model or calibration "
                               "data); start afresh or use another state_dir.")
        self.cumulative = PruningPlan.from_dict(state["cumulative_plan"])
        self.plans = {float(s): PruningPlan.from_dict(p) for s, p in state["plans"].items()}
        self.log = [StepLog(**entry) for entry in state["log"]]
        self.next_step = state["next_step"]
        self.scores = _scores_from_json(state.get("scores"))
        chosen = [entry.priors for entry in self.log if entry.priors]
        if chosen:  # "auto" continues from the last round's choice
            self.priors_at = (chosen[-1]["attention_weight"], chosen[-1]["layer_balance"])
        if not self.next_step:
            self.current = self.model
        elif self.config.compensation and self.config.compensation_when == "round":
            self.current = self._compensated(self.cumulative)
        else:
            self.current = redispatch(apply_plan(self.model, self.cumulative), self.model)

    def result(self) -> PruneResult:
        """The plans of every level reached so far, with the run's log and settings."""
        return PruneResult(
            plans=dict(self.plans),
            sparsity={s: p.metadata["sparsity"] for s, p in self.plans.items()},
            kv_cache_reduction={s: p.metadata["kv_cache_reduction"] for s, p in self.plans.items()},
            log=list(self.log), config=self.config,
            settings={**self.config.to_dict(), "schedule": self.schedule, "base_params": self.base_params},
            # The last round's model is the top level as saved, unless compensation still has to refit it.
            model=self.current if self.current is not self.model and self._current_is_final() else None,
            compensation_data=self.compensation_data,
        )

    def _current_is_final(self) -> bool:
        return not self.config.compensation or self.config.compensation_when == "round"


def prune(
    model,
    tokenizer: Any,
    calibration: Any,
    config: PruneConfig | Mapping[str, Any] | float | Sequence[float] | None = None,
    *,
    state_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
    **overrides: Any,
) -> PruneResult:
    """Prune ``model`` to every level of the config's ``target_sparsity`` in one nested run.

    Sparsity is the fraction of decoder-layer parameters removed (embeddings, final norm and lm_head excluded);
    each level lands within half a percentage point of its target. Levels are nested: one trajectory passes
    through all of them, so every level's kept structures contain the next level's.

    Args:
        model, tokenizer, calibration: as for :class:`Pruner`.
        config: a :class:`~hf_prune.PruneConfig` (or its dict); a number or list of numbers is taken as
            ``target_sparsity`` with every other option at its default.
        state_dir: the run state is written there after every round; a run started again with the same options,
            model, data and ``state_dir`` resumes after the last finished round and gives the same plans.
        show_progress: a progress bar per round and per batch.
        **overrides: any :class:`~hf_prune.PruneConfig` field, e.g. ``method="llm-pruner"``, ``steps=4``.

    Raises:
        PruningError: invalid options, a target the constraints make impossible, no calibration data; all before
            any scoring.
        UnsupportedModelError: ``model`` is not a Qwen2 / Qwen3 causal LM.
    """
    if config is not None and not isinstance(config, (PruneConfig, Mapping)):
        config, overrides = None, {"target_sparsity": config, **overrides}
    pruner = Pruner(model, tokenizer, calibration, config, show_progress=show_progress, **overrides)
    state_path = Path(state_dir) / STATE_FILE if state_dir is not None else None
    if state_path is not None and state_path.is_file():
        pruner.load_state_dict(json.loads(state_path.read_text(encoding="utf-8")))
    bar = tqdm(total=len(pruner.schedule), initial=pruner.next_step, desc=f"pruning ({pruner.config.method})",
               disable=not show_progress or not is_main(), unit="step")
    while not pruner.done:
        entry = pruner.step()
        if state_path is not None and is_main():  # after every round: a crash keeps the previous state
            state_path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(state_path, json.dumps(pruner.state_dict(), indent=1))
        bar.set_postfix(sparsity=f"{entry.sparsity:.1%}", loss=None if entry.loss is None else f"{entry.loss:.3f}")
        bar.update(1)
    bar.close()
    return pruner.result()
