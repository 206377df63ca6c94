"""``recover``: train a pruned model back towards the dense one with transformers' ``Trainer``.

The objective (:class:`DistillationTrainer.compute_loss`, computed by :mod:`hf_prune.recovery.losses`) is, per
predicted token,

- ``kd``: ``(1 - w) T^2 KL(softmax(t / T) || softmax(s / T)) + w CE(s, next token)``, with ``t`` the dense
  teacher's logits (eval mode, no gradients, optionally on another device) and ``s`` the student's; with
  ``kd_top_k`` > 0 the teacher's side is its top-k and the rest, cached once per window
  (:class:`~hf_prune.recovery.teacher.TeacherCache`);
- ``lm``: ``CE(s, next token)`` alone (a plain training step, the baseline);
- ``local``: the mean over decoder layers of ``||y_l - t_l||^2 / ||t_l||^2``, with ``t_l`` the dense layer's output
  and ``y_l`` the pruned layer's output on the pruned model's own (detached) input: each layer learns to undo its
  own error and the drift it receives, gradients stop at its input, and no lm_head or vocabulary-sized softmax is
  computed (layer-local reconstruction, "A Free Lunch in LLM Compression", arXiv 2510.14444).

Everything else is the ecosystem's: the Trainer's optimizer (AdamW), schedule, clipping, autocast, activation
checkpointing and checkpoints (``state_dir``: every ``save_steps``, resumed by the next call); PEFT's LoRA adapters
(merged back with ``merge_and_unload``, so the model keeps its class and shapes). Two callbacks are ours: a
progress bar with tokens/s and ETA, and a stop naming the step when the loss is NaN or infinite; and the held-back
guard (:mod:`hf_prune.recovery.guard`), which decides which weights come back. Under ``torchrun`` the Trainer runs
data parallel (DDP) with the global batch split over the processes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import PrinterCallback, ProgressCallback
from transformers.trainer_utils import get_last_checkpoint

from ..compat import disable_activation_checkpointing, is_activation_checkpointing, training_checkpointing_argument
from ..data.windows import CalibrationWindows
from ..errors import RecoveryDivergedError, RecoveryError
from ..fileio import write_text_atomic
from .config import LR_PROBE_SHARE, RecoveryConfig
from .data import RecoveryWindows, recovery_windows
from .guard import HeldBackGuard, HeldBackReport
from .losses import LayerTaps, SparseTeacher, kd_loss, local_loss, token_losses
from .probe import LearningRateProbe, probe_learning_rate
from .teacher import TeacherCache

__all__ = ["recover", "RecoveryResult", "DistillationTrainer", "kd_loss", "local_loss", "LayerTaps",
           "NonFiniteLossCallback", "TokenProgressCallback", "SparseTeacher", "TeacherCache"]

logger = logging.getLogger(__name__)

#: The options a state dir was written with (a resumed run must use the same).
STATE_CONFIG = "recovery_config.json"
#: Linear layers LoRA adapts (those a pruned layer lacks are skipped by PEFT's suffix match).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class _Windows(torch.utils.data.Dataset):
    """Training windows as the Trainer's dataset: ``{"input_ids": [seq_len], "window": index}`` rows (the index
    finds the window's cached teacher distribution, whichever process trains on it)."""

    def __init__(self, input_ids: torch.Tensor) -> None:
        self.input_ids = input_ids

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[i], "window": torch.tensor(i)}


class DistillationTrainer(Trainer):
    """A ``Trainer`` whose loss is the distillation objective of the module docstring.

    Args:
        teacher: the dense model (``None`` for ``method="lm"``, and for ``kd`` when ``teacher_cache`` holds every
            window); used in eval mode under ``no_grad``.
        recovery: the :class:`RecoveryConfig` (``method``, ``temperature``, ``lm_weight``, ``kd_top_k``).
        teacher_cache: the :class:`TeacherCache` of the training windows (``kd`` with ``kd_top_k`` > 0).
    """

    def __init__(self, *args: Any, teacher: torch.nn.Module | None, recovery: RecoveryConfig,
                 teacher_cache: TeacherCache | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher, self.recovery, self.teacher_cache = teacher, recovery, teacher_cache
        # compute_loss returns a per-batch mean: the Trainer divides it by the accumulation steps (every 5.x).
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False

    def _teacher(self, inputs: Mapping[str, Any], device: torch.device) -> Any:
        """The teacher's distribution of the batch: a SparseTeacher from the cache, else the live logits."""
        if self.teacher_cache is not None:
            return self.teacher_cache.get(inputs["window"], device, self.teacher, self.recovery.bf16)
        ids = inputs["input_ids"]
        with torch.no_grad():
            logits = self.teacher(input_ids=ids.to(next(self.teacher.parameters()).device), use_cache=False).logits
        return logits[:, :-1].to(device)

    def compute_loss(self, model: torch.nn.Module, inputs: Mapping[str, Any], return_outputs: bool = False,
                     num_items_in_batch: torch.Tensor | int | None = None):
        ids = inputs["input_ids"]
        config = self.recovery
        if config.method == "local":
            loss = local_loss(model, self.teacher, ids)
            return (loss, None) if return_outputs else loss
        outputs = model(input_ids=ids, use_cache=False)
        teacher = self._teacher(inputs, outputs.logits.device) if config.method == "kd" else None
        want_ce = config.method == "lm" or config.lm_weight > 0
        # One window at a time: logits[b, :-1] is a view, where logits[:, :-1].reshape(...) would copy the batch.
        ce = kd = 0.0
        for b in range(ids.shape[0]):
            c, k = token_losses(outputs.logits[b, :-1], ids[b, 1:] if want_ce else None,
                                teacher[b] if teacher is not None else None, config.temperature)
            ce, kd = ce + c, kd + k
        ce, kd = ce / ids.shape[0], kd / ids.shape[0]
        if config.method == "lm":
            loss = ce
        else:
            loss = (1 - config.lm_weight) * kd + config.lm_weight * ce if config.lm_weight else kd
        return (loss, outputs) if return_outputs else loss


class NonFiniteLossCallback(TrainerCallback):
    """Stops training with :class:`RecoveryDivergedError` naming the step when a logged loss is NaN or inf.

    Needs ``logging_steps=1`` and ``logging_nan_inf_filter=False`` (what :func:`recover` sets): every step's loss is
    then logged as it was.
    """

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise RecoveryDivergedError(
                f"recovery loss became {loss} at step {state.global_step} of {state.max_steps}; lower the learning "
                f"rate (was {args.learning_rate:g}) or use bf16=False.", step=state.global_step)


class TokenProgressCallback(TrainerCallback):
    """A tqdm bar over optimizer steps with the loss and student tokens/s (the bar gives the ETA).

    ``tokens_per_second`` is measured over the steps this call ran (a resumed run's earlier steps excluded).
    """

    def __init__(self, tokens_per_step: int, show: bool = True) -> None:
        self.tokens_per_step, self.show = tokens_per_step, show
        self.bar: tqdm | None = None
        self.loss: float | None = None
        self.start_step, self.start_time, self.seconds = 0, 0.0, 0.0
        self.steps_run = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step, self.start_time = state.global_step, time.perf_counter()
        self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="recovery", unit="step",
                        disable=not self.show, dynamic_ncols=True, leave=False)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.loss = (logs or {}).get("loss", self.loss)

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.start_time
        self.steps_run = state.global_step - self.start_step
        self.bar.update(state.global_step - self.bar.n)
        postfix = {"tok/s": f"{self.tokens_per_second:.0f}"}
        if self.loss is not None:
            postfix["loss"] = f"{self.loss:.3f}"
        self.bar.set_postfix(postfix, refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()

    @property
    def tokens_per_second(self) -> float:
        return self.steps_run * self.tokens_per_step / self.seconds if self.seconds > 0 else 0.0


class _LossHistory(TrainerCallback):
    """Every logged training loss, as ``(step, loss)``."""

    def __init__(self) -> None:
        self.losses: list[tuple[int, float]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append((state.global_step, float(logs["loss"])))


@dataclass
class RecoveryResult:
    """What :func:`recover` returns.

    Attributes:
        model: the trained student (LoRA merged in), in eval mode; the same object that was passed in.
        config: the :class:`RecoveryConfig` used.
        steps: optimizer steps run in all (a resumed run counts the steps before the interruption).
        tokens: training tokens of those steps (``config.tokens_used``: the budget rounded up to whole steps).
        seconds, tokens_per_second: wall time and student tokens/s of the steps this call ran.
        losses: ``(step, loss)`` of the steps this call ran.
        domain_counts: training windows per domain.
        resumed_from: the checkpoint resumed from, if any.
        held_back: the held-back guard's :class:`~hf_prune.recovery.guard.HeldBackReport` (loss before / best /
            final and their steps, what was returned), ``None`` with ``held_back=0``.
        teacher_cache: the :class:`TeacherCache` of the training windows (``kd`` with ``kd_top_k`` > 0), to pass to
            another call on the same windows (another level) instead of running the teacher again.
        lr_probe: what the learning-rate probe measured (:class:`~hf_prune.recovery.probe.LearningRateProbe`),
            ``None`` when the run did not probe; ``config.learning_rate`` is the rate used either way.
    """

    model: Any = field(repr=False)
    config: RecoveryConfig
    steps: int
    tokens: int
    seconds: float
    tokens_per_second: float
    losses: list[tuple[int, float]] = field(default_factory=list, repr=False)
    domain_counts: dict[str, int] = field(default_factory=dict)
    resumed_from: str | None = None
    held_back: HeldBackReport | None = None
    teacher_cache: TeacherCache | None = field(default=None, repr=False)
    lr_probe: LearningRateProbe | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (for ``eval_results.json`` and the metrics), without the model and losses."""
        final = self.losses[-1][1] if self.losses else None
        return {"config": self.config.to_dict(), "steps": self.steps, "tokens": self.tokens,
                "seconds": round(self.seconds, 2), "tokens_per_second": round(self.tokens_per_second, 1),
                "final_loss": final, "domain_counts": self.domain_counts, "resumed_from": self.resumed_from,
                "held_back": self.held_back.to_dict() if self.held_back is not None else None,
                "lr_probe": self.lr_probe.to_dict() if self.lr_probe is not None else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], model: Any = None) -> RecoveryResult:
        """The summary :meth:`to_dict` wrote (the losses reduced to the final one), with ``model`` if given."""
        final = data.get("final_loss")
        return cls(model=model, config=RecoveryConfig.from_dict(data["config"]), steps=data["steps"],
                   tokens=data["tokens"], seconds=data["seconds"], tokens_per_second=data["tokens_per_second"],
                   losses=[] if final is None else [(data["steps"], final)], domain_counts=dict(data["domain_counts"]),
                   resumed_from=data.get("resumed_from"),
                   held_back=HeldBackReport.from_dict(data["held_back"]) if data.get("held_back") else None,
                   lr_probe=LearningRateProbe.from_dict(data["lr_probe"]) if data.get("lr_probe") else None)


def _with_lora(model: torch.nn.Module, config: RecoveryConfig) -> torch.nn.Module:
    """The model wrapped with LoRA adapters on its linear layers (PEFT), seeded by ``config.seed``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)  # the adapters' A matrices are random: make them reproducible
    lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=list(LORA_TARGETS), bias="none", task_type="CAUSAL_LM")
    with warnings.catch_warnings():
        # PEFT (0.21) still reads transformers' deprecated `is_gradient_checkpointing`; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, lora)


def _arguments(config: RecoveryConfig, out: Path, checkpoints: bool, device: torch.device) -> TrainingArguments:
    """The ``TrainingArguments`` of a recovery run (one place that maps RecoveryConfig onto them). Under torchrun
    each of the ``world_size`` processes takes ``batch_size / world_size`` windows per pass: the same global batch,
    so the same optimizer steps, as one process."""
    args = TrainingArguments(
        output_dir=str(out), max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps, learning_rate=config.lr,
        lr_scheduler_type=config.lr_scheduler, warmup_steps=round(config.warmup * config.max_steps),
        weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm, seed=config.seed, data_seed=config.seed,
        # Windows are drawn in a seeded random order already; reading them in order makes a resume exact.
        train_sampling_strategy="sequential", dataloader_num_workers=0, remove_unused_columns=False,
        logging_steps=1, logging_nan_inf_filter=False, report_to="none", disable_tqdm=True,
        save_strategy="steps" if checkpoints else "no", save_steps=max(config.save_steps, 1), save_total_limit=1,
        bf16=config.bf16, use_cpu=device.type == "cpu",
        # local: lm_head and the embeddings get no gradient (each layer's input is detached)
        ddp_find_unused_parameters=config.method == "local",
        **{training_checkpointing_argument(): config.gradient_checkpointing},
    )
    args.per_device_train_batch_size = config.per_device_batch(args.world_size)
    return args


def _state_dir(state_dir: str | Any | None, config: RecoveryConfig) -> tuple[Path, bool]:
    """(folder for the Trainer's files, whether it keeps checkpoints); a state dir must hold the same options."""
    if state_dir is None:
        return Path(tempfile.mkdtemp(prefix="hf-prune-recovery-")), False
    path = Path(state_dir)
    saved = path / STATE_CONFIG
    if saved.is_file():
        before = json.loads(saved.read_text(encoding="utf-8"))
        if before != config.to_dict():
            changed = sorted(k for k in config.to_dict() if before.get(k) != config.to_dict()[k])
            raise RecoveryError(f"{path} holds a recovery run with other options ({', '.join(changed)}); use another "
                                "state dir or the same options.")
    else:
        path.mkdir(parents=True, exist_ok=True)
        write_text_atomic(saved, json.dumps(config.to_dict(), indent=1) + "\n")
    return path, config.save_steps > 0


def recover(student: torch.nn.Module, teacher: torch.nn.Module | None, tokenizer: Any, calibration: Any,
            config: RecoveryConfig | Mapping[str, Any] | str | None = None, *, state_dir: str | Path | None = None,
            show_progress: bool = True, callbacks: Sequence[TrainerCallback] = (),
            windows: RecoveryWindows | CalibrationWindows | None = None, teacher_cache: TeacherCache | None = None,
            **overrides: Any) -> RecoveryResult:
    """Train ``student`` (a pruned model) towards ``teacher`` (the dense model) on windows of ``calibration``, and
    return it in the state that did best on the held-back windows (never worse there than it came).

    Args:
        student: the model to train, in place (full-parameter, or LoRA merged back in).
        teacher: the dense model for ``method="kd"`` / ``"local"`` (``None`` for ``"lm"``); left unchanged.
        tokenizer: the tokenizer (needed when ``calibration`` is a mix).
        calibration: a :class:`~hf_prune.CalibrationMix` (windows drawn by :func:`recovery_windows`),
            :class:`~hf_prune.data.CalibrationWindows` or a ``[N, seq_len]`` token tensor.
        config: a :class:`RecoveryConfig`, its dict or a method name; ``overrides`` replace fields.
        state_dir: folder for checkpoints every ``save_steps``; a call with the same folder and options resumes
            from its last checkpoint. ``None``: no checkpoints.
        callbacks: extra ``TrainerCallback``s (e.g. to evaluate at some steps).
        windows: windows already drawn: a :class:`RecoveryWindows` (training and held-back), or training windows
            alone (then nothing is held back: the guard is off).
        teacher_cache: the ``teacher_cache`` of an earlier result on the same windows (``kd`` with ``kd_top_k``).

    Raises:
        RecoveryError: bad options, PEFT missing for LoRA, no teacher for ``kd``, data that cannot supply the budget,
            a ``batch_size`` that does not split over the torchrun processes.
        RecoveryDivergedError: the loss became NaN/inf (names the step).
    """
    config = RecoveryConfig.coerce(config) or RecoveryConfig()
    config = config.replace(**overrides) if overrides else config
    config.check_available()
    needs_teacher = f"recovery method {config.method!r} needs the dense teacher model; pass it or use method='lm'."
    if config.needs_teacher and teacher is None and teacher_cache is None:
        raise RecoveryError(needs_teacher)
    windows = _windows(windows, calibration, tokenizer, config)
    if config.needs_teacher and teacher is None and not _serves(teacher_cache, windows, config):
        raise RecoveryError(needs_teacher + " (The teacher_cache given is of other windows or options.)")
    out, checkpoints = _state_dir(state_dir, config)
    device = next(student.parameters()).device
    if teacher is not None and config.teacher_device is not None:
        teacher.to(config.teacher_device)
    teacher_was_training = teacher.training if teacher is not None else False
    if teacher is not None:
        teacher.eval()
    model = _with_lora(student, config) if config.lora else student
    args = _arguments(config, out, checkpoints, device)
    cache = _teacher_cache(teacher, windows.train, config, args, teacher_cache, show_progress)
    guard = (HeldBackGuard(windows.held_back, config.evaluation_interval, config.patience,
                           args.per_device_train_batch_size, config.bf16) if windows.held_back is not None else None)
    resume = get_last_checkpoint(str(out)) if checkpoints and out.is_dir() else None
    if resume:
        logger.info("resuming recovery from %s", resume)
    try:
        with _offloaded(teacher if cache is not None else None):
            if guard is not None:
                guard.begin(model, resume)
            probe = _probe(model, teacher, cache, config, windows, guard, device,
                           out if state_dir is not None else None, show_progress)
            if config.learning_rate == "auto":  # the result (and the card) name the rate used
                config = config.replace(learning_rate=probe.chosen if probe is not None else config.lr)
                args.learning_rate = config.lr
            trainer, progress, history = _trainer(model, teacher, cache, config, args, windows.train, show_progress,
                                                  [*([guard] if guard else []), *callbacks])
            trainer.train(resume_from_checkpoint=resume)
    finally:
        if teacher is not None:
            teacher.train(teacher_was_training)
        _cleanup(out, keep=state_dir is not None)
    report = guard.restore(model) if guard is not None else None
    trained = model.merge_and_unload() if config.lora else model
    _disable_checkpointing(trained)
    trained.eval()
    return RecoveryResult(model=trained, config=config, steps=trainer.state.global_step, tokens=config.tokens_used,
                          seconds=progress.seconds, tokens_per_second=progress.tokens_per_second,
                          losses=history.losses, domain_counts=windows.train.domain_counts, resumed_from=resume,
                          held_back=report, teacher_cache=cache, lr_probe=probe)


def _probe(model, teacher, cache: TeacherCache | None, config: RecoveryConfig, windows: RecoveryWindows,
           guard: HeldBackGuard | None, device: torch.device, state_dir: Path | None,
           show_progress: bool) -> LearningRateProbe | None:
    """The learning-rate probe of ``learning_rate="auto"`` (:mod:`hf_prune.recovery.probe`), or None when the run
    does not probe (a fixed rate; or "auto" with too small a budget or nothing held back: then ``config.lr``)."""
    if config.learning_rate != "auto":
        return None
    if not config.lr_probe_steps or guard is None:
        logger.info("recovery learning rate %g: %s", config.lr, "nothing is held back to probe on" if guard is None
                    else "the budget is too small to probe (it gets at most "
                         f"{LR_PROBE_SHARE:.0%} of the tokens)")
        return None

    def train(probe: RecoveryConfig) -> None:
        with tempfile.TemporaryDirectory(prefix="hf-prune-lr-probe-") as scratch:
            probe_args = _arguments(probe, Path(scratch), False, device)
            _trainer(model, teacher, cache, probe, probe_args, windows.train, False, [])[0].train()

    return probe_learning_rate(model, config, guard, train, state_dir=state_dir, show_progress=show_progress)


def _serves(cache: TeacherCache | None, windows: Any, config: RecoveryConfig) -> bool:
    """Whether ``cache`` holds every training window's teacher distribution (then no teacher is needed)."""
    return (config.caches_teacher and cache is not None and cache.complete
            and cache.serves(windows.train.input_ids[: config.num_windows], config))


def _windows(windows: Any, calibration: Any, tokenizer: Any, config: RecoveryConfig) -> RecoveryWindows:
    if windows is None:
        return recovery_windows(calibration, tokenizer, config)
    if isinstance(windows, CalibrationWindows):
        logger.warning("recovery was given training windows without held-back ones: the held-back guard is off.")
        return RecoveryWindows(windows, None)
    return windows if config.held_back else RecoveryWindows(windows.train, None)


def _teacher_cache(teacher, train: CalibrationWindows, config: RecoveryConfig, args: TrainingArguments,
                   given: TeacherCache | None, show_progress: bool) -> TeacherCache | None:
    """The teacher's top-k distributions of the windows this process trains on (``None``: not cached)."""
    if not config.caches_teacher:
        return None
    ids = train.input_ids[: config.num_windows]
    cache = given if given is not None and given.serves(ids, config) else TeacherCache(ids, config.kd_top_k,
                                                                                       config.temperature)
    if teacher is not None:
        cache.fill(teacher, _process_rows(len(ids), args), args.per_device_train_batch_size, bf16=config.bf16,
                   show_progress=show_progress)
    return cache


def _process_rows(n: int, args: TrainingArguments) -> torch.Tensor:
    """The windows this process trains on: with ``world`` processes, accelerate deals whole per-process batches of
    the sequential order in turn (batch ``i`` to process ``i % world``). Any row it deals otherwise is filled when
    met."""
    batch, world = args.per_device_train_batch_size, args.world_size
    rows = torch.arange(n)
    return rows[(rows // batch) % world == args.process_index]


@contextlib.contextmanager
def _offloaded(teacher: torch.nn.Module | None):
    """The teacher off its accelerator while the student trains (its distributions are cached: it is run again
    only for a window the cache lacks), then back."""
    device = next(teacher.parameters()).device if teacher is not None else None
    movable = device is not None and device.type != "cpu" and getattr(teacher, "hf_device_map", None) is None
    if movable:
        teacher.to("cpu")
    try:
        yield
    finally:
        if movable:
            teacher.to(device)


def _trainer(model, teacher, cache: TeacherCache | None, config: RecoveryConfig, args: TrainingArguments,
             windows: CalibrationWindows, show_progress: bool, callbacks: Sequence[TrainerCallback]):
    """(DistillationTrainer with our callbacks instead of the printing ones, progress callback, loss history)."""
    ids = windows.input_ids[: config.num_windows]
    progress, history = TokenProgressCallback(config.tokens_per_step, show_progress), _LossHistory()
    trainer = DistillationTrainer(model=model, args=args, train_dataset=_Windows(ids), teacher=teacher,
                                  recovery=config, teacher_cache=cache,
                                  callbacks=[NonFiniteLossCallback(), progress, history, *callbacks])
    # The Trainer's own bar / printer would print every step's log line (we log every step for the NaN check).
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    return trainer, progress, history


def _disable_checkpointing(model: torch.nn.Module) -> None:
    """Leave the returned model as it came: the Trainer turned activation checkpointing on if asked."""
    if is_activation_checkpointing(model):
        disable_activation_checkpointing(model)


def _cleanup(out: Path, keep: bool) -> None:
    """Remove the Trainer's scratch folder when the caller gave no state dir."""
    if not keep:
        import shutil

        shutil.rmtree(out, ignore_errors=True)
