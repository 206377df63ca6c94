"""``PruneConfig``: every option of a pruning run in one place, with its default and its meaning.

One object describes what a run computes (the recipe): :func:`hf_prune.prune` and :func:`hf_prune.prune_and_push`
take it, the command line generates its ``prune`` options from its fields, the run state is keyed by its
fingerprint and every saved level carries it as ``prune_config.json``. Keyword arguments of those functions
override single fields.

This module imports nothing heavy: a config is checked (and ``hf-prune --help`` printed) without torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .presets import (
    ALLOCATIONS,
    AUTO,
    AUTO_ATTENTION_WEIGHTS,
    AUTO_LAYER_BALANCES,
    COMPENSATION_TARGETS,
    COMPENSATION_WHEN,
    COMPENSATIONS,
    CRITERIA,
    METHODS,
    NORMALIZATIONS,
    OBJECTIVES,
    SCHEDULES,
)
from .errors import PruningError
from .markdown import table
from .options import Options, is_int, is_number, option, parse_bytes, parse_count
from .recovery.config import RecoveryConfig

__all__ = ["PruneConfig", "CONFIG_FILE", "level_name", "LEVEL_NAME", "DEFAULT_LEVELS"]

#: What ``compensation_toward`` accepts (hf_prune.engine.compensation).
COMPENSATION_TOWARD = ("kept", "zero")
#: ``compensation_damping="auto"`` cross-validates over at most this many folds (each keeps its own ``X^T X``).
COMPENSATION_MAX_FOLDS = 8
#: File name of the config saved in every level folder (and in the run state).
CONFIG_FILE = "prune_config.json"
_FORMAT = 1
_CALLABLE = "callable:"
#: ``channel_multiple="auto"``: kept MLP widths are multiples of this when every layer's MLP is at least
#: ``AUTO_CHANNEL_MIN_WIDTH`` wide (the benchmarks page, "Kept MLP widths"), else any width.
AUTO_CHANNEL_MULTIPLE = 64
AUTO_CHANNEL_MIN_WIDTH = 1024
#: The levels of a run that names no size target.
DEFAULT_LEVELS = (0.2, 0.3, 0.4, 0.5)
#: What a level's folder and branch are named (:meth:`PruneConfig.level_names`).
LEVEL_NAME = re.compile(r"(sparsity-[0-9.]+|params-[0-9.]+[KMBT]|memory-[0-9.]+(?:[KMGT]i?)?B)(-kv-[0-9.]+)?")


def level_name(sparsity: float) -> str:
    """Folder and branch name of a level: ``0.3 -> "sparsity-30"``, ``0.125 -> "sparsity-12.5"``."""
    return f"sparsity-{round(sparsity * 100, 2):g}"


def _count_name(n: int) -> str:
    """``5_000_000_000 -> "5B"``, ``494_032_768 -> "494M"``."""
    unit, size = next((u, v) for u, v in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3), ("", 1)) if n >= v)
    return f"{n / size:.4g}{unit}" if unit else f"{n / 1e3:.4g}K"


def _bytes_name(n: int) -> str:
    """``12 * 2**30 -> "12GiB"``, ``12e9 -> "12GB"``: the first unit that shows it in at most two decimals."""
    for unit, size in (("TiB", 2**40), ("TB", 1e12), ("GiB", 2**30), ("GB", 1e9), ("MiB", 2**20), ("MB", 1e6),
                       ("KiB", 2**10), ("KB", 1e3)):
        value = n / size
        if value >= 1 and abs(round(value, 2) - value) < 1e-9 * value:
            return f"{value:g}{unit}"
    unit, size = next((u, v) for u, v in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1)) if n >= v)
    return f"{n / size:.4g}{unit}"


def _targets(value: Any, name: str, parse: Any, unique: bool = True) -> tuple | None:
    """A target's levels from a number, a string (``"5B,4B"``) or a list; ``None`` stays ``None``. ``unique``: a
    value given twice is refused (it would be one level twice)."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [value] if is_number(value) else list(value)
    try:
        values = tuple(parse(v.strip() if isinstance(v, str) else v) for v in items)
    except ValueError as err:
        raise PruningError(f"{name}: {err}.") from None
    if not values:
        raise PruningError(f"{name} names no level.")
    twice = sorted({v for v in values if values.count(v) > 1})
    if twice and unique:
        raise PruningError(f"{name} lists {', '.join(map(str, twice))} more than once: give each level once.")
    return values


def _kv_fraction(value: Any) -> float:
    try:
        fraction = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"not a fraction of the KV cache: {value!r} (give e.g. 0.25 or 0.5)") from None
    if not 0 <= fraction < 1 or isinstance(value, bool):
        raise ValueError(f"a fraction of the KV cache is in [0, 1), got {value!r}")
    return round(fraction, 6)


def _positive(parse: Any, what: str) -> Any:
    def parsed(value: Any) -> int:
        n = parse(value)
        if n <= 0:
            raise ValueError(f"{what} must be positive, got {value!r}")
        return n
    return parsed


def _option(default: Any, help: str, *, cli: bool = True, **extra: Any) -> Any:
    """A field with its help text; ``cli=False``: no command-line option (e.g. callables)."""
    return option(default, help, cli=cli, **extra)


@dataclass
class PruneConfig(Options):
    """Options of a pruning run. Every field has a default; ``None`` means "the method's" (see ``method``).

    Example::

        config = PruneConfig(target_sparsity=(0.2, 0.3), method="gisp", num_samples=64, seq_len=512)
        result = hf_prune.prune(model, tokenizer, mix, config)
        result = hf_prune.prune(model, tokenizer, mix, config, steps=4)   # keyword arguments override fields

    Invalid values raise :class:`~hf_prune.errors.PruningError` at construction. Checks that need the model
    (layer indices, KV heads divisible by ``tp_degree``, whether the sparsity is reachable) run when pruning
    starts, before any scoring.
    """

    error = PruningError
    title = "PruneConfig option"

    # ---- what to reach ----
    target_sparsity: tuple[float, ...] = _option(
        DEFAULT_LEVELS,
        "fractions of decoder-layer parameters to remove; one nested run passes through every level",
        flag="--sparsity")
    target_params: Any = _option(
        None, "total parameters each level keeps (e.g. 5B,3.5B or 5e9; embeddings and lm_head counted): the levels "
              "instead of target_sparsity", shown="none")
    target_memory: Any = _option(
        None, "memory each level fits in: its weights in the saved dtype plus the KV cache of memory_batch_size "
              "sequences of context_length tokens (e.g. 12GiB,10GB): the levels instead of target_sparsity",
        shown="none")
    context_length: int = _option(4096, "tokens per sequence of the KV cache that target_memory (and --dry-run) counts")
    memory_batch_size: int = _option(1, "sequences whose KV cache target_memory (and --dry-run) counts")
    target_kv_cache: Any = _option(
        None, "fraction of the KV cache each level removes at least: one for every level or one per level (e.g. "
              "0.5); a second budget, on KV groups, of the global ranking, met together with the size target",
        shown="none")
    resolved_decoder_params: int | None = _option(
        None, "set by hf-prune when target_params / target_memory are resolved on a model (its decoder "
              "parameters); target_sparsity then holds each level's decoder sparsity", cli=False)
    # ---- the method and its pieces ----
    method: str = _option(
        "gisp", f"preset: {', '.join(METHODS)}; the fields below that default to None take the preset's value")
    importance: Any = _option(
        None, f"importance criterion overriding the method's: {', '.join(CRITERIA)} (or an Importance / callable)")
    allocation: str | None = _option(None, "global (all layers ranked together) or uniform (same ratio per layer)")
    normalization: str | None = _option(
        None, "how global allocation compares heads and channels: param (score per parameter), gisp, standardize, none")
    steps: int | None = _option(None, "scoring rounds (1 = one-shot; gisp: 8)")
    schedule: Any = _option("linear", "sparsity after each round: linear ramp to the highest level (or a callable "
                                      "(targets, steps) -> sparsities)")
    attention_weight: float | str | None = _option(
        None, "global allocation multiplies attention units' scores by this (> 1: heads are harder to remove; gisp: 4); "
              f"auto: chosen per model on the grid {', '.join(f'{v:g}' for v in AUTO_ATTENTION_WEIGHTS)}, from the "
              "method's value, one step a round when held-back calibration loss clearly prefers it")
    layer_balance: float | str | None = _option(
        None, "global allocation prices an MLP unit up by 1 + B * (fraction of its layer already removed) "
              f"(gisp: 2; 0 ranks at face value); auto: chosen on the grid "
              f"{', '.join(f'{v:g}' for v in AUTO_LAYER_BALANCES)} as attention_weight is")
    objective: Any = _option("lm", "what the scores protect: lm (next-token loss), margin (multiple choice), or a "
                                   "callable (model, batch) -> loss", cli=False)
    # ---- calibration sampling ----
    num_samples: int = _option(32, "calibration windows drawn from the mix (32 x 512: the calibration budget study)")
    seq_len: int = _option(512, "tokens per calibration window")
    batch_size: int = _option(4, "calibration windows per forward/backward pass (does not change the scores)")
    seed: int = _option(0, "seed of the calibration draw (and of random scores)")
    resample_each_step: bool = _option(False, "draw fresh calibration windows (seed + round) every round")
    # ---- constraints ----
    keep_dense: Any = _option(None, "layer indices never pruned, or 'gisp' (the first 10% of layers and the last)")
    min_heads: int = _option(0, "query heads every pruned layer keeps (0 allows removing its attention)")
    min_channels: int = _option(0, "MLP channels every pruned layer keeps (0 allows removing its MLP)")
    channel_multiple: int | str = _option(
        AUTO, f"kept MLP widths are multiples of this; auto: {AUTO_CHANNEL_MULTIPLE} with global allocation when every "
              f"layer's MLP is at least {AUTO_CHANNEL_MIN_WIDTH:,} channels wide (aligned widths suit GEMM kernels; no "
              "measured quality cost), else 1")
    tp_degree: int = _option(1, "kept KV heads per layer divisible by this (tensor parallelism)")
    uniform_heads: bool = _option(
        False, "every layer that keeps attention keeps the same query heads (GQA groups intact), so the result "
               "exports as DeciLM for vLLM / SGLang (hf-prune export --format deci)")
    # ---- compensation ----
    compensation: str | None = _option(
        "auto", "refit the kept o_proj / down_proj columns to the dense layer's output: lsq (damped least squares), "
                "none (None), or auto (the method's)")
    compensation_damping: float | str = _option(
        "auto", "damping of the refit, a fraction of the mean diagonal of X^T X, or auto: chosen per projection on "
                "the grid 1e-4 ... 1 (and inf toward kept: no refit) by leave-one-domain-out cross-validation over "
                "the calibration domains (folds of windows when there is only one)")
    compensation_toward: str = _option(
        "kept", "what the damping shrinks the refit toward: kept (the kept columns' own weights, so a layer moves "
                "only as far as the calibration text supports) or zero (plain ridge)")
    compensation_samples: int = _option(128, "calibration windows (of seq_len tokens) the refit's statistics use")
    compensation_target: str = _option(
        "sequential", "sequential (each layer on the pruned, compensated model's own inputs), dense (on the dense "
                      "model's inputs) or stream (the pruned model's inputs fit to the dense model's hidden states)")
    compensation_when: str = _option(
        "level", "level (each saved level refit from the dense weights; the plans are those of no compensation) or "
                 "round (also after every scoring round, so later rounds score the compensated model)")
    # ---- cost ----
    gradient_checkpointing: bool = _option(False, "trade compute for memory in gradient-based scoring")
    fsdp: bool = _option(
        False, "under torchrun, score with FSDP2: weights and score buffers sharded over the ranks' GPUs (taylor only, "
               "compensation none)")
    # ---- recovery ----
    recovery: RecoveryConfig | None = _option(
        None, "train every saved level after pruning: a RecoveryConfig, its dict or a method name (kd, lm); None: "
              "no recovery (command line: --recovery and the --recovery-* options)", nested=RecoveryConfig)

    def __post_init__(self) -> None:
        self.target_params = _targets(self.target_params, "target_params", _positive(parse_count, "target_params"))
        self.target_memory = _targets(self.target_memory, "target_memory", _positive(parse_bytes, "target_memory"))
        self.target_kv_cache = _targets(self.target_kv_cache, "target_kv_cache", _kv_fraction, unique=False)
        given = self.target_sparsity
        self.target_sparsity = self._levels(given, named=self.size_target == "sparsity")
        self._order_levels(given)
        if self.compensation == "none":
            self.compensation = None
        if isinstance(self.keep_dense, Sequence) and not isinstance(self.keep_dense, str):
            self.keep_dense = tuple(self.keep_dense)
        self.recovery = RecoveryConfig.coerce(self.recovery)  # a dict or a method name becomes the dataclass
        self.validate()

    # ---- checks -----------------------------------------------------------------------------------------
    @staticmethod
    def _levels(value: Any, named: bool = True) -> tuple[float, ...]:
        values = [value] if is_number(value) or isinstance(value, (str, bool)) else list(value)
        if not values:
            raise PruningError("target_sparsity names no level; give e.g. (0.2, 0.3).")
        for v in values:
            if not is_number(v) or not 0 < v < 1:
                raise PruningError(f"target_sparsity must be in (0, 1): give each level as a fraction in (0, 1) of the "
                                   f"decoder parameters, e.g. 0.3; got {v!r}.")
        rounded = [round(float(v), 6) for v in values]
        twice = sorted(v for v, n in Counter(rounded).items() if n > 1)
        if twice:  # a silent merge would give fewer levels than asked for
            raise PruningError(f"target_sparsity lists {', '.join(f'{v:g}' for v in twice)} more than once: give "
                               "each level once.")
        levels = tuple(sorted(rounded))
        names = [level_name(s) for s in levels]
        if named and len(set(names)) != len(names):
            raise PruningError(f"sparsity levels {list(levels)} are too close: they would share a folder name.")
        return levels

    def _order_levels(self, given_sparsity: Any) -> None:
        """Levels in order, the least pruned first (a parameter or memory target from the largest); a per-level KV
        target stays with the level it was given with."""
        kind = self.size_target
        if kind != "sparsity" and self.resolved_decoder_params is None:
            sizes = getattr(self, f"target_{kind}")
            order = sorted(range(len(sizes)), key=lambda i: -sizes[i])
            setattr(self, f"target_{kind}", tuple(sizes[i] for i in order))
        else:  # target_sparsity, which _levels sorted from the order given
            given = [given_sparsity] if is_number(given_sparsity) else list(given_sparsity)
            order = sorted(range(len(given)), key=lambda i: float(given[i]))
        kv = self.target_kv_cache
        if kv is not None and len(kv) == len(order) > 1:
            self.target_kv_cache = tuple(kv[i] for i in order)

    def channel_multiple_for(self, widths: Sequence[int]) -> int:
        """The kept-width multiple for a model whose layers' MLP widths are ``widths`` (``"auto"`` resolved).

        ``"auto"`` rounds only under global allocation, where the other layers' units absorb the rounding: a uniform
        allocation rounds every layer alike, which would move a level off its target by up to a block per layer.
        """
        if self.channel_multiple != AUTO:
            return self.channel_multiple
        allocation = self.allocation or (METHODS[self.method].allocation if self.method in METHODS else None)
        mlps = [w for w in widths if w]
        wide = bool(mlps) and min(mlps) >= AUTO_CHANNEL_MIN_WIDTH
        return AUTO_CHANNEL_MULTIPLE if wide and allocation == "global" else 1

    # ---- the levels ----------------------------------------------------------------------------------------------
    @property
    def size_target(self) -> str:
        """What names the levels: ``"sparsity"``, ``"params"`` or ``"memory"``."""
        return "params" if self.target_params is not None else "memory" if self.target_memory is not None else "sparsity"

    @property
    def num_levels(self) -> int:
        return len({"params": self.target_params, "memory": self.target_memory}.get(self.size_target)
                   or self.target_sparsity)

    def kv_targets(self) -> tuple[float, ...]:
        """Each level's KV-cache target in level order (0 without one)."""
        kv = self.target_kv_cache or (0.0,)
        return kv * self.num_levels if len(kv) == 1 else kv

    def level_names(self) -> tuple[str, ...]:
        """Each level's folder and branch name, in level order: ``sparsity-30``, ``params-5B``, ``memory-12GiB``,
        with ``-kv-50`` when a KV-cache target is given."""
        kind = self.size_target
        if kind == "params":
            names = [f"params-{_count_name(n)}" for n in self.target_params]
        elif kind == "memory":
            names = [f"memory-{_bytes_name(n)}" for n in self.target_memory]
        else:
            names = [level_name(s) for s in self.target_sparsity]
        if self.target_kv_cache is not None:
            names = [f"{n}-kv-{round(k * 100, 2):g}" for n, k in zip(names, self.kv_targets())]
        return tuple(names)

    def name_of(self, sparsity: float) -> str:
        """The name of the level at ``sparsity`` (one of ``target_sparsity``: a resolved config's, for parameter or
        memory targets)."""
        if self.size_target != "sparsity" and self.resolved_decoder_params is None:
            raise PruningError(f"the {self.size_target} targets are not resolved on a model yet.")
        for s, name in zip(self.target_sparsity, self.level_names()):
            if abs(s - sparsity) < 1e-9:
                return name
        return level_name(sparsity)

    def validate_targets(self) -> None:
        kind = self.size_target
        if self.target_params is not None and self.target_memory is not None:
            raise PruningError("target_params and target_memory are both given: give one size target.")
        if kind != "sparsity":
            if self.resolved_decoder_params is None and self.target_sparsity != DEFAULT_LEVELS:
                raise PruningError(f"target_sparsity and target_{kind} are both given: give one size target.")
            if self.resolved_decoder_params is not None and len(self.target_sparsity) != self.num_levels:
                raise PruningError(f"a resolved config has one target_sparsity per target_{kind} level.")
        kv = self.target_kv_cache
        if kv is not None:
            if len(kv) not in (1, self.num_levels):
                raise PruningError(f"target_kv_cache gives {len(kv)} values for {self.num_levels} levels: give one "
                                   "for every level or one per level.")
            if list(kv) != sorted(kv):
                raise PruningError(f"target_kv_cache {list(kv)} shrinks from level to level; levels are nested (each "
                                   "keeps what the next keeps), so a smaller level removes at least as much KV cache.")
            allocation = (self.allocation or METHODS[self.method].allocation) if self.method in METHODS else None
            if any(kv) and allocation == "uniform":
                raise PruningError(f"target_kv_cache needs global allocation; method {self.method!r} allocates "
                                   "uniformly: pass allocation='global' (--allocation global) or another method.")
        names = self.level_names()
        if len(set(names)) != len(names):
            raise PruningError(f"levels {list(names)} share a name: give targets further apart.")

    def validate_names(self) -> None:
        if self.method not in METHODS:
            raise PruningError(f"Unknown method {self.method!r}; choose one of {sorted(METHODS)}.")
        for name, value, known in (("allocation", self.allocation, ALLOCATIONS),
                                   ("normalization", self.normalization, NORMALIZATIONS),
                                   ("compensation", self.compensation, COMPENSATIONS),
                                   ("compensation_target", self.compensation_target, COMPENSATION_TARGETS),
                                   ("compensation_toward", self.compensation_toward, COMPENSATION_TOWARD),
                                   ("compensation_when", self.compensation_when, COMPENSATION_WHEN)):
            if value is not None and value not in known:
                raise PruningError(f"Unknown {name} {value!r}; choose one of {sorted(known)}.")
        for name, value, known in (("importance criterion", self.importance, CRITERIA),
                                   ("schedule", self.schedule, SCHEDULES), ("objective", self.objective, OBJECTIVES)):
            if isinstance(value, str):
                if value not in known:
                    raise PruningError(f"Unknown {name} {value!r}; choose one of {sorted(known)} or pass a callable.")
            elif value is not None and not callable(value):
                raise PruningError(f"{name} must be a name or a callable, got {type(value).__name__}.")

    def validate_counts(self) -> None:
        if self.channel_multiple != AUTO:
            self.check_ints(("channel_multiple",), minimum=1)
        self.check_ints(("num_samples", "seq_len", "batch_size", "tp_degree",
                         "compensation_samples", "steps", "context_length", "memory_batch_size",
                         "resolved_decoder_params"), minimum=1, optional=("steps", "resolved_decoder_params"))
        self.check_ints(("min_heads", "min_channels"), minimum=0)
        self.check_ints(("seed",), minimum=None)
        for name in ("uniform_heads", "fsdp"):
            if not isinstance(getattr(self, name), bool):
                raise PruningError(f"{name} must be True or False, got {getattr(self, name)!r}.")

    def validate_weights(self) -> None:
        checks = (("attention_weight", lambda v: v > 0, "> 0 (or 'auto')"),
                  ("layer_balance", lambda v: v >= 0, ">= 0 (or 'auto')"),
                  ("compensation_damping", lambda v: v >= 0, ">= 0 (or 'auto')"))
        # A prior may be None (the method's) or "auto" (chosen per model: hf_prune.engine.priors); the damping
        # "auto" (chosen per projection: hf_prune.engine.compensation).
        self.check_numbers([c for c in checks if getattr(self, c[0]) != AUTO],
                           optional=("attention_weight", "layer_balance"))

    def validate_keep_dense(self) -> None:
        value = self.keep_dense
        if value is None or value == "gisp":
            return
        if isinstance(value, str) or not all(is_int(i) and i >= 0 for i in value):
            raise PruningError(f"keep_dense must be a list of layer indices or 'gisp', got {value!r}.")

    # ---- derived ----------------------------------------------------------------------------------------
    def resolved(self) -> PruneConfig:
        """This config with every ``None`` that the method decides replaced by the method's value."""
        preset = METHODS[self.method]
        names = ("importance", "allocation", "normalization", "steps", "attention_weight", "layer_balance")
        values = {n: getattr(preset, n) for n in names if getattr(self, n) is None}
        if self.compensation == "auto":
            values["compensation"] = preset.compensation
        return self.replace(**values)

    @classmethod
    def coerce(cls, config: PruneConfig | Mapping[str, Any] | None = None, **overrides: Any) -> PruneConfig:
        """``config`` (a PruneConfig, its dict, or ``None`` for the defaults) with ``overrides`` applied."""
        if config is None:
            base = cls()
        elif isinstance(config, cls):
            base = config
        elif isinstance(config, Mapping):
            base = cls.from_dict(config)
        else:
            raise PruningError(f"config must be a PruneConfig, a dict or None, got {type(config).__name__}.")
        return base.replace(**overrides) if overrides else base

    def fingerprint(self) -> str:
        """Hash of the resolved options: two configs with one fingerprint compute the same plans.

        ``recovery`` is left out: it trains the saved levels and changes no plan, so a pruning run's state is reused
        when only the recovery options change."""
        text = json.dumps({**self.resolved().to_dict(), "recovery": None}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ---- serialisation ----------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields; a callable is written as ``"callable:<module>.<name>"`` (not restorable)."""
        out: dict[str, Any] = {"format": _FORMAT}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if callable(value) and not isinstance(value, str):
                target = value if hasattr(value, "__qualname__") else type(value)
                value = f"{_CALLABLE}{target.__module__}.{target.__qualname__}"
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, RecoveryConfig):
                value = value.to_dict()
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PruneConfig:
        """The inverse of :meth:`to_dict`; unknown keys and callables that cannot be restored are refused."""
        values = {k: v for k, v in data.items() if k != "format"}
        if data.get("format", _FORMAT) > _FORMAT:
            raise PruningError(f"this PruneConfig was written by a newer hf-prune (format {data['format']}); upgrade.")
        for key, value in values.items():
            if isinstance(value, str) and value.startswith(_CALLABLE):
                raise PruningError(f"{key} was a callable ({value[len(_CALLABLE):]}); pass it again to restore the config.")
        cls.check_known(values)
        if "compensation_damping" in values and "compensation_toward" not in values:
            values["compensation_toward"] = "zero"  # saved before the option existed: the refit then was plain ridge
        return cls(**values)

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` as JSON (atomically); a folder gets :data:`CONFIG_FILE` inside it."""
        from .fileio import write_text_atomic

        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        return write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruneConfig:
        """Read a config written by :meth:`save` (a file, or a level folder holding :data:`CONFIG_FILE`)."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_FILE
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))

    @classmethod
    def reference(cls) -> str:
        """Markdown table of every field: name, default, meaning (docs/reference is generated from it)."""
        rows = []
        for f in dataclasses.fields(cls):
            default = f.default if not isinstance(f.default, tuple) else ", ".join(map(str, f.default))
            rows.append([f"`{f.name}`", f"`{default}`", f.metadata["help"]])
        return table(["option", "default", "meaning"], rows)

