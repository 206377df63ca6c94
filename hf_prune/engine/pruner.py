"""`prune()`: score, allocate and slice, step by step, through every requested sparsity in one nested run."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import PruningError
from ..fileio import write_text_atomic
from ..plan import PruningPlan
from ..slicing import apply_plan, check_supported
from .allocation import NORMALIZATIONS, Constraints, allocate
from .importance import Importance, get_importance
from .objectives import get_objective, lm_loss
from .presets import get_method
from .structures import LayerScores, ModelGeometry, kv_cache_per_token

__all__ = ["prune", "PruneResult", "StepLog"]

STATE_FILE = "prune_state.json"
_STATE_VERSION = 1


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


@dataclass
class PruneResult:
    """What :func:`prune` returns.

    Attributes:
        plans: requested sparsity -> plan, indices into the original model (nested: each level's kept set
            contains the next level's). ``apply_plan(original_model, result.plans[s])`` rebuilds a level.
        sparsity: requested sparsity -> measured fraction of decoder-layer parameters removed.
        kv_cache_reduction: requested sparsity -> fraction of the KV cache removed.
        log: one :class:`StepLog` per scoring round.
        settings: the method and arguments of the run.
        model: the pruned model of the highest level (already sliced; saves a rebuild).
    """

    plans: dict[float, PruningPlan]
    sparsity: dict[float, float]
    kv_cache_reduction: dict[float, float]
    log: list[StepLog]
    settings: dict[str, Any]
    model: Any = field(default=None, repr=False)

    def apply(self, model, sparsity: float):
        """The pruned model of one level, sliced from the original ``model``."""
        return apply_plan(model, self.plans[sparsity])

    def summary(self) -> str:
        """A markdown table: level, measured sparsity, KV-cache reduction."""
        rows = ["| target | decoder params removed | KV cache removed |", "|---|---|---|"]
        for s in sorted(self.plans):
            rows.append(f"| {s:.0%} | {self.sparsity[s]:.2%} | {self.kv_cache_reduction[s]:.2%} |")
        return "\n".join(rows)


# ---- calibration batches -----------------------------------------------------------------------------------
def _batches_from(calibration: Any, tokenizer: Any, num_samples: int, seq_len: int, seed: int,
                  batch_size: int, device: torch.device) -> list[dict[str, Any]]:
    """Normalise the accepted calibration inputs into a list of batches (dicts of tensors, with domain labels)."""
    from ..data.multiple_choice import MultipleChoiceBatch
    from ..data.windows import CalibrationWindows

    if hasattr(calibration, "sample") and not isinstance(calibration, CalibrationWindows):
        if tokenizer is None:
            raise PruningError("A CalibrationMix needs the tokenizer: prune(model, tokenizer, calibration, ...).")
        calibration = calibration.sample(tokenizer, num_samples, seq_len, seed=seed)
    if isinstance(calibration, torch.Tensor):
        calibration = CalibrationWindows(calibration.long(), ["calibration"] * calibration.shape[0])
    if isinstance(calibration, CalibrationWindows):
        return [
            {"input_ids": ids.to(device), "domains": list(domains)}
            for ids, domains in calibration.iter_batches(batch_size)
        ]
    if isinstance(calibration, MultipleChoiceBatch):
        # Batches hold whole questions, so the margin objective sees every question's correct and wrong choices.
        out = []
        questions = calibration.question_index
        for start in range(0, calibration.num_questions, batch_size):
            rows = (questions >= start) & (questions < start + batch_size)
            out.append({k: getattr(calibration, k)[rows].to(device) for k in calibration.__dataclass_fields__})
        return out
    if isinstance(calibration, Sequence) and calibration and isinstance(calibration[0], Mapping):
        return [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in b.items()} for b in calibration]
    raise PruningError(
        "calibration must be a CalibrationMix, CalibrationWindows, a [N, seq_len] tensor of token ids, a "
        f"MultipleChoiceBatch or a list of batch dicts; got {type(calibration).__name__}."
    )


def _window_losses(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of each window (fp32)."""
    logits = model(input_ids=ids, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none").mean(1)


class _LossRecorder:
    """Wraps the objective to log the loss per domain (the forward pass is shared with scoring)."""

    def __init__(self, objective: Callable):
        self.objective = objective
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def __call__(self, model, batch):
        domains = batch.get("domains")
        if self.objective is lm_loss and domains is not None and "labels" not in batch:
            per_sample = _window_losses(model, batch["input_ids"])
            for d, value in zip(domains, per_sample.detach().tolist()):
                self.sums[d] = self.sums.get(d, 0.0) + value
                self.counts[d] = self.counts.get(d, 0) + 1
            return per_sample.mean()
        loss = self.objective(model, batch)
        self.sums["all"] = self.sums.get("all", 0.0) + float(loss.detach())
        self.counts["all"] = self.counts.get("all", 0) + 1
        return loss

    def per_domain(self) -> dict[str, float]:
        return {d: self.sums[d] / self.counts[d] for d in sorted(self.sums)}

    def mean(self) -> float | None:
        total = sum(self.counts.values())
        return sum(self.sums.values()) / total if total else None


# ---- scores follow the model as it shrinks -----------------------------------------------------------------
def _remap(scores: list[LayerScores], plan: PruningPlan) -> list[LayerScores]:
    """Scores of the current model re-indexed for the model after ``plan`` (one-shot methods reuse them)."""
    out = []
    for s, layer in zip(scores, plan.layers):
        pick = lambda t, idx: None if t is None or not idx else t[torch.tensor(idx, dtype=torch.long)]  # noqa: E731
        out.append(LayerScores(pick(s.query_heads, layer.query_heads), pick(s.kv_heads, layer.kv_heads),
                               pick(s.mlp_channels, layer.mlp_channels)))
    return out


def _keep_dense_layers(keep_dense: str | Iterable[int] | None, num_layers: int) -> frozenset[int]:
    if keep_dense is None:
        return frozenset()
    if keep_dense == "gisp":  # GISP leaves layers < int(0.1 L) and the last layer dense
        return frozenset(range(int(0.1 * num_layers))) | {num_layers - 1}
    if isinstance(keep_dense, str):
        raise PruningError(f"keep_dense must be a list of layer indices or 'gisp', got {keep_dense!r}.")
    layers = frozenset(int(i) for i in keep_dense)
    bad = sorted(i for i in layers if not 0 <= i < num_layers)
    if bad:
        raise PruningError(f"keep_dense layers {bad} are out of range for a model with {num_layers} layers.")
    return layers


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


def _schedule(targets: list[float], steps: int) -> list[float]:
    """Sparsity after each scoring round: a linear ramp to the highest target, passing through every target."""
    top = targets[-1]
    ramp = [round(top * (j + 1) / steps, 6) for j in range(steps)]
    return sorted(set(ramp) | set(targets))


def _settings_hash(settings: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _save_state(state_dir: Path, state: dict[str, Any]) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(state_dir / STATE_FILE, json.dumps(state, indent=1))  # a crash keeps the previous state


def _count_structures(geometry: ModelGeometry) -> tuple[int, int, int]:
    heads = sum(s.num_attention_heads for s in geometry.shapes)
    kv = sum(s.num_key_value_heads for s in geometry.shapes)
    channels = sum(s.intermediate_size for s in geometry.shapes)
    return heads, kv, channels


# ---- the entry point ---------------------------------------------------------------------------------------
def prune(
    model,
    tokenizer: Any,
    calibration: Any,
    target_sparsity: float | Sequence[float],
    *,
    method: str = "gisp",
    num_samples: int = 128,
    seq_len: int = 256,
    steps: int | None = None,
    seed: int = 0,
    importance: str | Importance | Callable | None = None,
    allocation: str | None = None,
    normalization: str | None = None,
    objective: str | Callable = "lm",
    batch_size: int = 4,
    resample_each_step: bool = False,
    keep_dense: str | Iterable[int] | None = None,
    min_heads: int = 0,
    min_channels: int = 0,
    channel_multiple: int = 1,
    tp_degree: int = 1,
    attention_weight: float | None = None,
    layer_balance: float | None = None,
    gradient_checkpointing: bool = False,
    state_dir: str | os.PathLike | None = None,
    show_progress: bool = True,
) -> PruneResult:
    """Prune ``model`` to every sparsity in ``target_sparsity`` in one nested run.

    Sparsity is the fraction of decoder-layer parameters removed (embeddings, final norm and lm_head excluded);
    each level lands within half a percentage point of its target. Levels are nested: one trajectory passes
    through all of them, so every level's kept structures contain the next level's.

    ``model`` is **not modified**: it is scored in place (gradients are cleared and ``requires_grad`` flags
    restored afterwards) and every later round runs on sliced copies, which get cheaper as the model shrinks.

    Args:
        model: a ``Qwen2ForCausalLM`` (or an already pruned model: plans then index into it).
        tokenizer: tokenises a :class:`~hf_prune.CalibrationMix` (unused for pre-tokenised calibration).
        calibration: a ``CalibrationMix``, ``CalibrationWindows``, a ``[N, seq_len]`` tensor of token ids, a
            ``MultipleChoiceBatch`` (with ``objective="margin"``) or a list of batch dicts.
        target_sparsity: one level or a list, each in (0, 1).
        method: preset: ``gisp`` (default: taylor + global + iterative), ``llm-pruner``, ``wanda-sp``, ``flap``,
            ``magnitude``, ``random``. ``importance`` / ``allocation`` / ``normalization`` / ``steps`` override it.
        num_samples, seq_len: calibration windows drawn from a mix.
        steps: scoring rounds (linear ramp to the highest target, passing through every target); 1 = one-shot.
        seed: seeds the calibration draw (``seed + step`` with ``resample_each_step``) and random scores.
        importance: a criterion name, an :class:`Importance`, or ``fn(model, batches, objective) -> list[LayerScores]``.
        objective: ``"lm"`` (next-token loss), ``"margin"`` (multiple choice), or ``fn(model, batch) -> loss``.
        keep_dense: layer indices left unpruned, or ``"gisp"`` (first 10% and the last layer).
        min_heads, min_channels: per-layer minimums (0 lets a whole sublayer go).
        channel_multiple: kept MLP widths are multiples of this (e.g. 64).
        tp_degree: kept KV heads per layer divisible by this (tensor parallelism).
        attention_weight: global allocation multiplies attention units' scores by this (> 1: heads are harder
            to remove than their first-order score says); default: the preset's.
        layer_balance: global allocation multiplies an MLP unit's score by ``1 + layer_balance * f``, ``f`` the
            fraction of its layer's original channels already removed (concentrated removal costs more than its
            first-order scores add up to); default: the preset's (``gisp``: 2; 0 = face value).
        gradient_checkpointing: trade compute for memory in gradient-based scoring.
        state_dir: the run state is written there after every round; a run started again with the same
            arguments and ``state_dir`` resumes after the last finished round and gives the same plans.

    Raises:
        PruningError: sparsity outside (0, 1), a target the constraints make impossible, no calibration data,
            unknown method / criterion / allocation; all before any scoring.
        UnsupportedModelError: ``model`` is not a Qwen2 causal LM.
    """
    check_supported(model)
    targets = [target_sparsity] if isinstance(target_sparsity, (int, float)) else list(target_sparsity)
    if not targets or any(not isinstance(t, (int, float)) or not 0 < t < 1 for t in targets):
        raise PruningError(f"target_sparsity must be in (0, 1), got {target_sparsity!r}.")
    targets = sorted({float(t) for t in targets})
    recipe = get_method(method, importance=importance if isinstance(importance, str) else None,
                        allocation=allocation, normalization=normalization, steps=steps)
    if recipe.steps < 1:
        raise PruningError(f"steps must be >= 1, got {recipe.steps}.")
    if recipe.allocation not in ("global", "uniform"):
        raise PruningError(f"Unknown allocation {recipe.allocation!r}; choose 'global' or 'uniform'.")
    if recipe.normalization not in NORMALIZATIONS:
        raise PruningError(f"Unknown normalization {recipe.normalization!r}; choose one of {NORMALIZATIONS}.")
    criterion = get_importance(importance if importance is not None and not isinstance(importance, str)
                               else recipe.importance, seed=seed)
    objective_fn = get_objective(objective)
    for name, value in (("channel_multiple", channel_multiple), ("tp_degree", tp_degree), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise PruningError(f"{name} must be a positive integer, got {value!r}.")
    if criterion.needs_data and (not isinstance(num_samples, int) or num_samples < 1):
        raise PruningError(f"num_samples must be >= 1, got {num_samples!r}.")

    geometry0 = ModelGeometry.of(model)
    num_layers = len(geometry0.shapes)
    if attention_weight is None:
        attention_weight = recipe.attention_weight
    if not isinstance(attention_weight, (int, float)) or attention_weight <= 0:
        raise PruningError(f"attention_weight must be a positive number, got {attention_weight!r}.")
    if layer_balance is None:
        layer_balance = recipe.layer_balance
    if not isinstance(layer_balance, (int, float)) or layer_balance < 0:
        raise PruningError(f"layer_balance must be a number >= 0, got {layer_balance!r}.")
    constraints = Constraints(_keep_dense_layers(keep_dense, num_layers), min_heads, min_channels,
                              channel_multiple, tp_degree, float(attention_weight), float(layer_balance),
                              tuple(s.intermediate_size for s in geometry0.shapes))
    for i, s in enumerate(geometry0.shapes):
        if i not in constraints.keep_dense and s.num_key_value_heads % tp_degree:
            raise PruningError(f"Layer {i} has {s.num_key_value_heads} KV heads, not divisible by tp_degree={tp_degree}.")
    params0 = geometry0.total_params()
    removable = _max_removable(geometry0, constraints)
    if targets[-1] * params0 > removable + 0.005 * params0:
        raise PruningError(
            f"Sparsity {targets[-1]:.0%} is impossible under these constraints: at most {removable / params0:.1%} of "
            "decoder parameters can be removed (keep_dense / min_heads / min_channels)."
        )

    device = next(model.parameters()).device
    # Drawn once, before any model work: spec errors (empty domain, missing file...) surface here.
    batches = _batches_from(calibration, tokenizer, num_samples, seq_len, seed, batch_size, device) \
        if criterion.needs_data else []
    if criterion.needs_data and not batches:
        raise PruningError("The calibration set has no tokens.")

    schedule = _schedule(targets, recipe.steps)
    recompute = recipe.steps > 1
    settings = {
        "method": method, "importance": getattr(criterion, "name", "callable"), "allocation": recipe.allocation,
        "normalization": recipe.normalization, "steps": recipe.steps, "schedule": schedule, "targets": targets,
        "num_samples": num_samples, "seq_len": seq_len, "seed": seed, "batch_size": batch_size,
        "objective": objective if isinstance(objective, str) else "callable",
        "resample_each_step": resample_each_step, "keep_dense": sorted(constraints.keep_dense),
        "min_heads": min_heads, "min_channels": min_channels, "channel_multiple": channel_multiple,
        "tp_degree": tp_degree, "attention_weight": float(attention_weight), "layer_balance": float(layer_balance),
        "base_params": params0,
        "calibration": calibration.to_dict() if hasattr(calibration, "to_dict") else type(calibration).__name__,
    }
    key = _settings_hash(settings)

    current, cumulative = model, PruningPlan.keep_all(geometry0.shapes).explicit(geometry0.shapes)
    plans: dict[float, PruningPlan] = {}
    log: list[StepLog] = []
    start_step, scores = 0, None
    state_path = Path(state_dir) if state_dir is not None else None
    if state_path is not None and (state_path / STATE_FILE).is_file():
        state = json.loads((state_path / STATE_FILE).read_text())
        if state.get("version") != _STATE_VERSION or state.get("settings_hash") != key:
            raise PruningError(f"{state_path / STATE_FILE} belongs to a run with other settings; use another state_dir.")
        cumulative = PruningPlan.from_dict(state["cumulative_plan"])
        plans = {float(s): PruningPlan.from_dict(p) for s, p in state["plans"].items()}
        log = [StepLog(**entry) for entry in state["log"]]
        start_step = state["next_step"]
        if state.get("scores") is not None:
            scores = [LayerScores(*(None if t is None else torch.tensor(t) for t in layer)) for layer in state["scores"]]
        if start_step:
            current = apply_plan(model, cumulative)

    kv0 = kv_cache_per_token(geometry0.shapes)
    bar = tqdm(total=len(schedule), initial=start_step, desc=f"pruning ({method})", disable=not show_progress, unit="step")
    for step in range(start_step, len(schedule)):
        t0 = time.perf_counter()
        point = schedule[step]
        geometry = ModelGeometry.of(current)
        removed_so_far = params0 - geometry.total_params()
        budget = int(round(point * params0)) - removed_so_far

        recorder = _LossRecorder(objective_fn)
        fresh = scores is None or recompute
        if fresh:
            step_batches = batches
            if resample_each_step and step and criterion.needs_data:
                step_batches = _batches_from(calibration, tokenizer, num_samples, seq_len, seed + step, batch_size, device)
            if gradient_checkpointing and criterion.needs_grad:
                current.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            try:
                scores = criterion(current, step_batches, recorder, show_progress=show_progress)
            finally:
                if gradient_checkpointing and criterion.needs_grad:
                    current.activation_checkpointing_disable()
        step_plan = allocate(scores, geometry, budget, allocation=recipe.allocation,
                             normalization=recipe.normalization, constraints=constraints,
                             tolerance=int(0.002 * params0))
        step_plan = step_plan.explicit(geometry.shapes)
        scores = _remap(scores, step_plan)
        cumulative = cumulative.compose(step_plan)
        current = apply_plan(current, step_plan)

        new_geometry = ModelGeometry.of(current)
        sparsity = 1 - new_geometry.total_params() / params0
        heads, kv, channels = _count_structures(new_geometry)
        log.append(StepLog(step, point, sparsity, new_geometry.total_params(), heads, kv, channels, recorder.mean(),
                           recorder.per_domain(), time.perf_counter() - t0, fresh))
        if point in targets:
            plans[point] = PruningPlan(
                layers=cumulative.layers,
                metadata={"method": method, "target_sparsity": point, "sparsity": sparsity,
                          "kv_cache_reduction": 1 - kv_cache_per_token(new_geometry.shapes) / kv0,
                          "base_model": getattr(model.config, "_name_or_path", None) or None, "seed": seed},
            )
        if state_path is not None:
            _save_state(state_path, {
                "version": _STATE_VERSION, "settings_hash": key, "settings": settings, "next_step": step + 1,
                "cumulative_plan": cumulative.to_dict(), "plans": {str(s): p.to_dict() for s, p in plans.items()},
                "log": [asdict(entry) for entry in log],
                # One-shot methods keep their scores across rounds: save them so a resumed run uses the same.
                "scores": None if recompute else [
                    [None if t is None else t.tolist() for t in (s.query_heads, s.kv_heads, s.mlp_channels)]
                    for s in scores
                ],
            })
        bar.set_postfix(sparsity=f"{sparsity:.1%}", loss=None if recorder.mean() is None else f"{recorder.mean():.3f}")
        bar.update(1)
    bar.close()

    measured = {s: p.metadata["sparsity"] for s, p in plans.items()}
    kv_reduction = {s: p.metadata["kv_cache_reduction"] for s, p in plans.items()}
    return PruneResult(plans=plans, sparsity=measured, kv_cache_reduction=kv_reduction, log=log,
                       settings=settings, model=current if current is not model else None)
