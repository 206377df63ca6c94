"""``RecoveryConfig``: the options of healing a pruned model by training, with their defaults and meanings.

Like :class:`~hf_prune.PruneConfig`, one documented dataclass: :func:`hf_prune.recover` takes it,
``PruneConfig.recovery`` holds it (so ``prune_and_push(..., recovery={...})`` and ``prune_config.json`` carry
it), and the ``hf-prune prune`` command line generates its ``--recovery-*`` options from its fields. This module
imports nothing heavy: a config is built and checked without torch.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RecoveryError
from ..markdown import table
from ..options import Options, is_number
from ..options import option as _option

__all__ = ["RecoveryConfig", "parse_tokens", "RECOVERY_METHODS", "TEACHER_METHODS", "LR_SCHEDULERS"]

#: ``kd``: KL divergence of the student's next-token distribution to the dense teacher's (optionally mixed with
#: the LM loss); ``lm``: the next-token cross-entropy alone (no teacher: the baseline); ``local``: every decoder
#: layer, on the pruned model's own inputs, trained to reproduce the dense layer's output (no lm_head, gradients
#: stop at each layer's input).
RECOVERY_METHODS = ("kd", "lm", "local")
#: Methods that need the dense teacher model.
TEACHER_METHODS = ("kd", "local")
#: Learning-rate schedules (transformers' ``lr_scheduler_type`` names) offered here.
LR_SCHEDULERS = ("cosine", "linear", "constant", "constant_with_warmup")
#: Learning rate when ``learning_rate="auto"`` cannot probe (too small a budget, nothing held back): the largest
#: full-parameter rate measured that improved both SmolLM2-135M and Qwen2.5-Coder-0.5B (1e-4 made Qwen worse);
#: LoRA adapters start at zero and take larger steps.
DEFAULT_LR = {False: 3e-5, True: 1e-3}
#: What ``learning_rate=None`` meant in configs saved before "auto" existed.
LEGACY_DEFAULT_LR = {False: 1e-4, True: 1e-3}
#: ``learning_rate="auto"`` tries these rates (full-parameter, LoRA) ...
LR_CANDIDATES = {False: (1e-5, 3e-5, 1e-4, 3e-4), True: (1e-4, 3e-4, 1e-3, 3e-3)}
#: ... spending at most this share of the token budget on them together ...
LR_PROBE_SHARE = 0.05
#: ... and probes only when that gives each candidate at least this many optimizer steps.
LR_PROBE_MIN_STEPS = 2
#: Held-back evaluations per run when ``eval_steps`` is None.
EVALUATIONS = 20
_SUFFIXES = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "b": 10**9}
_TOKENS = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([kmgb]?)\s*$", re.IGNORECASE)


def _rates(rates: Any) -> str:
    """``1e-5, 3e-5`` (the help text's spelling of learning rates)."""
    return ", ".join(f"{r:.0e}".replace("e-0", "e-") for r in rates)


def parse_tokens(value: Any) -> int:
    """A token budget as an int: ``100_000``, ``"100k"``, ``"2M"``, ``"62.5k"``, ``"1e6"`` (must be a whole number > 0).

    Raises:
        RecoveryError: not a number, not whole, or not positive.
    """
    if is_number(value):
        number = float(value)
    else:
        match = _TOKENS.match(str(value))
        if not match:
            raise RecoveryError(f"recovery tokens must be a number of tokens like 100000, '100k' or '2M', got {value!r}.")
        number = float(match.group(1)) * _SUFFIXES[match.group(2).lower()]
    if not math.isfinite(number) or number != int(number):
        raise RecoveryError(f"recovery tokens must be a whole number of tokens, got {value!r}.")
    if number <= 0:
        raise RecoveryError(f"recovery tokens must be > 0, got {value!r}.")
    return int(number)


@dataclass
class RecoveryConfig(Options):
    """Options of a recovery run (see :func:`hf_prune.recover`). Invalid values raise
    :class:`~hf_prune.errors.RecoveryError` at construction.

    Example::

        RecoveryConfig(method="kd", tokens="2M", lora=True)
        PruneConfig(target_sparsity=0.3, recovery={"method": "kd", "tokens": 100_000})
    """

    error = RecoveryError
    label = "recovery "
    title = "recovery option"

    method: str = _option("kd", "kd (KL to the dense model's next-token distribution, optionally mixed with the LM "
                                "loss), lm (next-token cross-entropy alone) or local (experimental: each decoder layer "
                                "trained to reproduce the dense layer's output; no gain measured: benchmarks/README.md)",
                          flag="--recovery")
    tokens: int = _option(1_000_000, "training token budget (e.g. 100k, 2M); rounded up to whole optimizer steps")
    seq_len: int = _option(256, "tokens per training window")
    temperature: float = _option(1.0, "kd: softmax temperature of teacher and student (the KL is scaled by T^2)")
    lm_weight: float = _option(0.0, "kd: share of the LM loss in the objective, (1 - w) KL + w CE")
    learning_rate: float | str = _option(
        "auto", f"peak learning rate, or auto: each of {_rates(LR_CANDIDATES[False])} (LoRA "
                f"{_rates(LR_CANDIDATES[True])}) trained briefly from the same start, the one with "
                f"the lowest held-back loss used (at most {LR_PROBE_SHARE:.0%} of the tokens, spent on top of the "
                f"budget; a budget too small to probe, or held_back=0, uses {_rates([DEFAULT_LR[False]])}, LoRA "
                f"{_rates([DEFAULT_LR[True]])})", flag="--recovery-lr")
    lr_scheduler: str = _option("cosine", f"learning-rate schedule after warmup: {', '.join(LR_SCHEDULERS)}")
    warmup: float = _option(0.05, "fraction of the optimizer steps spent warming the learning rate up from 0")
    weight_decay: float = _option(0.0, "AdamW weight decay")
    max_grad_norm: float = _option(1.0, "gradient clipping norm (0 disables it)")
    batch_size: int = _option(8, "windows per forward/backward pass")
    gradient_accumulation_steps: int = _option(1, "passes per optimizer step (tokens per step = batch x this x "
                                                  "seq_len)")
    lora: bool = _option(False, "train LoRA adapters (PEFT, pip install 'hf-prune[lora]') on every linear layer and "
                                "merge them back, instead of all parameters")
    lora_r: int = _option(16, "LoRA rank")
    lora_alpha: float = _option(32.0, "LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = _option(0.0, "dropout on the LoRA input")
    seed: int = _option(0, "seed of the training windows (drawn apart from the scoring windows), the window "
                           "order and the adapters' init")
    allow_repeat: bool = _option(True, "reuse windows (another epoch) when the mix holds fewer than the budget "
                                       "needs; off: such a budget is refused before loading")
    save_steps: int = _option(200, "with a state dir: checkpoint every N optimizer steps, resumed after an "
                                   "interruption (0: no checkpoints)")
    bf16: bool = _option(False, "bfloat16 autocast for the student (and the teacher's forward)")
    gradient_checkpointing: bool = _option(False, "recompute activations in the backward pass (less memory)")
    teacher_device: str | None = _option(None, "device of the dense teacher, e.g. cuda:1 (default: the student's)")
    kd_top_k: int = _option(64, "kd: the teacher's next-token distribution is computed once per window and kept as its "
                                "top-k probabilities plus the remaining mass (the teacher then leaves the training "
                                "loop); 0: the full vocabulary, the teacher run at every step")
    held_back: int = _option(32, "calibration windows held back from training (disjoint from the training windows, "
                                 "every domain at least one): their loss is measured before training and every "
                                 "eval_steps, the best state is kept, and a run that never lowers it returns the model "
                                 "as given (0: no held-back check)")
    eval_steps: int | None = _option(None, "held-back evaluation every N optimizer steps (default: about "
                                           f"{EVALUATIONS} evaluations per run; the last step is always measured)")
    patience: int = _option(5, "stop early after this many held-back evaluations in a row without a new best "
                               "(0: never stop early)")

    def __post_init__(self) -> None:
        self.tokens = parse_tokens(self.tokens)
        if self.learning_rate is None:  # what configs saved before "auto" meant by None: the fixed default
            self.learning_rate = LEGACY_DEFAULT_LR[bool(self.lora)]
        self.validate()

    # ---- checks -----------------------------------------------------------------------------------------
    def validate_names(self) -> None:
        if self.method not in RECOVERY_METHODS:
            raise RecoveryError(f"Unknown recovery method {self.method!r}; choose one of {list(RECOVERY_METHODS)}.")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise RecoveryError(f"Unknown recovery lr_scheduler {self.lr_scheduler!r}; choose one of "
                                f"{list(LR_SCHEDULERS)}.")
        if self.teacher_device is not None and not isinstance(self.teacher_device, str):
            raise RecoveryError(f"recovery teacher_device must be a device name like 'cuda:1', got "
                                f"{self.teacher_device!r}.")

    def validate_counts(self) -> None:
        self.check_ints(("batch_size", "gradient_accumulation_steps", "lora_r"), minimum=1)
        self.check_ints(("seq_len",), minimum=2)
        self.check_ints(("save_steps", "kd_top_k", "held_back", "patience"), minimum=0)
        self.check_ints(("eval_steps",), minimum=1, optional=("eval_steps",))
        self.check_ints(("seed",), minimum=None)

    def validate_rates(self) -> None:
        if self.learning_rate != "auto":
            self.check_numbers((("learning_rate", lambda v: 0 < v < 1, "in (0, 1) (e.g. 1e-4) or 'auto'"),))
        self.check_numbers((
            ("temperature", lambda v: v > 0, "> 0"),
            ("lm_weight", lambda v: 0 <= v <= 1, "in [0, 1]"), ("warmup", lambda v: 0 <= v < 1, "in [0, 1)"),
            ("weight_decay", lambda v: v >= 0, ">= 0"), ("max_grad_norm", lambda v: v >= 0, ">= 0"),
            ("lora_alpha", lambda v: v > 0, "> 0"), ("lora_dropout", lambda v: 0 <= v < 1, "in [0, 1)")))
        if self.method != "kd" and self.lm_weight not in (0, 1):
            raise RecoveryError(f"recovery lm_weight mixes the LM loss into kd; method {self.method!r} does not use it.")

    def check_available(self) -> None:
        """Refuse options whose libraries are missing (cheap: nothing is imported)."""
        if self.lora and importlib.util.find_spec("peft") is None:
            raise RecoveryError("recovery with lora=True needs PEFT: pip install 'hf-prune[lora]'.")

    # ---- derived ----------------------------------------------------------------------------------------
    @property
    def lr(self) -> float:
        """The learning rate of a run that does not probe: ``learning_rate``, or with ``"auto"`` the default of
        full-parameter or LoRA training (what :func:`~hf_prune.recover` uses when the probe cannot run)."""
        return DEFAULT_LR[bool(self.lora)] if self.learning_rate == "auto" else float(self.learning_rate)

    @property
    def lr_candidates(self) -> tuple[float, ...]:
        """The learning rates ``"auto"`` tries (those of full-parameter or LoRA training)."""
        return LR_CANDIDATES[bool(self.lora)]

    @property
    def lr_probe_steps(self) -> int:
        """Optimizer steps of each probed learning rate (0: no probe: a fixed rate, or too small a budget)."""
        if self.learning_rate != "auto" or not self.held_back:
            return 0
        steps = int(LR_PROBE_SHARE * self.max_steps) // len(self.lr_candidates)
        return steps if steps >= LR_PROBE_MIN_STEPS else 0

    @property
    def needs_teacher(self) -> bool:
        """Whether the method trains towards the dense model (``kd``, ``local``)."""
        return self.method in TEACHER_METHODS

    @property
    def caches_teacher(self) -> bool:
        """Whether the teacher's top-k distribution is computed once per window (``kd`` with ``kd_top_k`` > 0)."""
        return self.method == "kd" and self.kd_top_k > 0

    @property
    def evaluation_interval(self) -> int:
        """Optimizer steps between held-back evaluations: ``eval_steps``, else about EVALUATIONS per run."""
        return self.eval_steps if self.eval_steps is not None else max(1, math.ceil(self.max_steps / EVALUATIONS))

    def per_device_batch(self, world_size: int) -> int:
        """Windows per process and pass when ``world_size`` data-parallel processes share a step (the global batch
        stays ``batch_size``, so a run gives the same steps on any number of processes).

        Raises:
            RecoveryError: ``batch_size`` is not a multiple of ``world_size``.
        """
        if self.batch_size % world_size:
            raise RecoveryError(f"recovery batch_size {self.batch_size} does not split evenly over {world_size} "
                                f"processes; use a multiple of {world_size}.")
        return self.batch_size // world_size

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps * self.seq_len

    @property
    def max_steps(self) -> int:
        """Optimizer steps: the budget rounded up to whole steps (at least one)."""
        return max(1, math.ceil(self.tokens / self.tokens_per_step))

    @property
    def num_windows(self) -> int:
        """Training windows the steps consume."""
        return self.max_steps * self.batch_size * self.gradient_accumulation_steps

    @property
    def tokens_used(self) -> int:
        return self.num_windows * self.seq_len

    # ---- serialisation ----------------------------------------------------------------------------------
    @classmethod
    def coerce(cls, value: RecoveryConfig | Mapping[str, Any] | str | None) -> RecoveryConfig | None:
        """``None``, a RecoveryConfig, its dict (same field names), or a method name (``"kd"``) -> a config."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, str):
            return None if value == "none" else cls(method=value)
        if isinstance(value, Mapping):
            return cls.from_dict(value)
        raise RecoveryError(f"recovery must be a RecoveryConfig, a dict, a method name or None, got "
                            f"{type(value).__name__}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RecoveryConfig:
        """The inverse of :meth:`to_dict`; unknown keys are refused."""
        cls.check_known(data)
        return cls(**dict(data))

    @classmethod
    def reference(cls) -> str:
        """Markdown table of every field: name, command-line option, default, meaning (docs/reference is generated from it)."""
        rows = [[f"`{f.name}`", f"`{cli_flag(f)}`", f"`{f.default}`", f.metadata["help"]]
                for f in dataclasses.fields(cls)]
        return table(["option", "command line", "default", "meaning"], rows)


def cli_flag(f: dataclasses.Field) -> str:
    """The ``hf-prune prune`` option of a RecoveryConfig field: ``--recovery-<name>`` unless the field names one."""
    return f.metadata.get("flag", "--recovery-" + f.name.replace("_", "-"))

