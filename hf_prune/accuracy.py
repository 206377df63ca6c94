"""Zero-shot (and few-shot) accuracy through EleutherAI's lm-evaluation-harness, next to perplexity.

A task is one of:

- a standard lm-eval task name (``hellaswag``, ``arc_easy``...): its data comes from the Hugging Face Hub (or the
  ``datasets`` cache);
- a local multiple-choice file (``.jsonl``/``.json`` of ``{"prompt" or "context", "choices", "answer"}``
  records, the format :func:`~hf_prune.data.load_multiple_choice` reads; the task's name is the file's stem), or a
  folder of them (one task per file);
- an lm-eval task YAML (``.yaml``/``.yml``), e.g. one with ``dataset_path: json`` and local ``data_files``.

A local file becomes an lm-eval ``multiple_choice`` task through lm-eval's Python task API (an inline config whose
``custom_dataset`` returns the records already checked by hf-prune's loader): lm-eval then scores it exactly as it
scores its own tasks. The context is the prompt, each choice follows it after one space (``target_delimiter``),
the score of a choice is the summed log-likelihood of its tokens given the prompt, and the highest wins (``acc``);
``acc_norm`` divides each score by the choice's length in characters first. ``acc_stderr`` is lm-eval's sample
standard error of the mean.

lm-eval is an optional dependency (``pip install 'hf-prune[eval]'``); only :func:`prepare_tasks` and
:func:`evaluate_tasks` import it (and torch), so resolving task specs stays cheap.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EvaluationError
from .markdown import table
from .options import is_int, is_number

__all__ = ["TaskSpec", "TaskSuite", "AccuracyReport", "resolve_task_specs", "prepare_tasks", "evaluate_tasks",
           "check_task_options", "EVAL_EXTRA_HINT"]

logger = logging.getLogger(__name__)

#: What the error of a missing lm-eval tells the user to run.
EVAL_EXTRA_HINT = "pip install 'hf-prune[eval]'"
_LOCAL_SUFFIXES = (".jsonl", ".json")
_YAML_SUFFIXES = (".yaml", ".yml")
#: Metrics reported per task (lm-eval computes more for some tasks; these are what the papers compare).
_METRICS = ("acc", "acc_norm")


# ---- task specs (no lm-eval, no torch) -----------------------------------------------------------------
@dataclass(frozen=True)
class TaskSpec:
    """One task as given: ``kind`` is ``"local"`` (multiple-choice file), ``"yaml"`` or ``"lm-eval"`` (a name)."""

    name: str
    kind: str
    path: Path | None = None


def _split(tasks: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[str]:
    items = [tasks] if isinstance(tasks, (str, os.PathLike)) else list(tasks)
    out = []
    for item in items:
        parts = [os.fspath(item)] if isinstance(item, os.PathLike) else str(item).split(",")
        out += [p.strip() for p in parts if p.strip()]
    return out


def _looks_like_path(item: str) -> bool:
    return os.sep in item or "/" in item or item.lower().endswith(_LOCAL_SUFFIXES + _YAML_SUFFIXES)


def _folder_specs(folder: Path) -> list[TaskSpec]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _LOCAL_SUFFIXES)
    if not files:
        raise EvaluationError(f"task folder {str(folder)!r} holds no multiple-choice .jsonl/.json files")
    return [TaskSpec(p.stem, "local", p) for p in files]


def _one_spec(item: str) -> list[TaskSpec]:
    path = Path(item).expanduser()
    if path.is_dir():
        return _folder_specs(path)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in _YAML_SUFFIXES:
            return [TaskSpec(path.stem, "yaml", path.resolve())]
        if suffix in _LOCAL_SUFFIXES:
            return [TaskSpec(path.stem, "local", path.resolve())]
        raise EvaluationError(f"task file {item!r} is neither multiple-choice records (.jsonl/.json) nor an "
                              "lm-eval task YAML (.yaml)")
    if _looks_like_path(item):
        raise EvaluationError(f"task file {item!r} does not exist")
    return [TaskSpec(item, "lm-eval")]


def resolve_task_specs(tasks: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> list[TaskSpec]:
    """The tasks of ``tasks`` (comma-separated names/paths, or a list of them), checked without lm-eval.

    Raises:
        EvaluationError: no task, a path that does not exist, a file of another kind, an empty task folder, or two
            tasks of the same name.
    """
    specs = [spec for item in _split(tasks) for spec in _one_spec(item)]
    if not specs:
        raise EvaluationError("give at least one task (an lm-eval task name, a multiple-choice .jsonl or a task YAML)")
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise EvaluationError(f"two tasks are named {spec.name!r} (a local task's name is its file's stem)")
        seen.add(spec.name)
    return specs


def check_task_options(*, num_fewshot: int = 0, limit: int | float | None = None, batch_size: int = 8) -> None:
    """Raise :class:`EvaluationError` for unusable settings (cheap: call it before loading a model)."""
    if not is_int(num_fewshot) or num_fewshot < 0:
        raise EvaluationError(f"num_fewshot must be an integer >= 0, got {num_fewshot!r}")
    if limit is not None and (not is_number(limit) or limit <= 0):
        raise EvaluationError(f"limit must be a positive number of examples (or a fraction < 1), got {limit!r}")
    if not is_int(batch_size) or batch_size < 1:
        raise EvaluationError(f"batch_size must be an integer >= 1, got {batch_size!r}")


# ---- lm-eval task objects ------------------------------------------------------------------------------
def _require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise EvaluationError(f"accuracy tasks need lm-evaluation-harness, which is not installed: "
                              f"{EVAL_EXTRA_HINT}") from None


def _prompt_field(path: Path) -> str:
    """``prompt``, or ``context`` for files whose records name the prompt that way (HellaSwag's word)."""
    with path.open(encoding="utf-8") as handle:
        first = handle.read(1 << 16).lstrip()
    try:
        row = json.loads(first.splitlines()[0]) if path.suffix.lower() == ".jsonl" and first else {}
    except (json.JSONDecodeError, IndexError):
        return "prompt"  # load_multiple_choice reports the bad JSON
    return "context" if isinstance(row, dict) and "prompt" not in row and "context" in row else "prompt"


def _local_records(spec: TaskSpec) -> list[dict[str, Any]]:
    """The file's records, checked and normalised (answer as an index) by hf-prune's multiple-choice loader."""
    from .data.multiple_choice import load_multiple_choice

    records = load_multiple_choice(spec.path, domain=spec.name, prompt_field=_prompt_field(spec.path))
    return [{"prompt": r.prompt, "choices": list(r.choices), "answer": r.answer} for r in records]


def _local_task_config(spec: TaskSpec, records: list[dict[str, Any]]) -> dict[str, Any]:
    """An inline lm-eval ``multiple_choice`` config over already loaded records (no file is written)."""
    import datasets

    def dataset(**_: Any) -> datasets.DatasetDict:  # lm-eval passes its metadata as keyword arguments
        return datasets.DatasetDict({"test": datasets.Dataset.from_list(records)})

    return {
        "task": spec.name, "custom_dataset": dataset, "test_split": "test", "output_type": "multiple_choice",
        "doc_to_text": _prompt, "doc_to_choice": _choices, "doc_to_target": _answer, "target_delimiter": " ",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in _METRICS],
        "metadata": {"version": 1.0, "source": str(spec.path)},
    }


def _prompt(doc: Mapping[str, Any]) -> str:
    return doc["prompt"]


def _choices(doc: Mapping[str, Any]) -> list[str]:
    return list(doc["choices"])


def _answer(doc: Mapping[str, Any]) -> int:
    return int(doc["answer"])


_OFFLINE_HINT = ("Point it at local copies: a multiple-choice .jsonl ({\"prompt\", \"choices\", \"answer\"} records), "
                 "an lm-eval task YAML with dataset_path: json and data_files: {test: FILE}, or the dataset in the "
                 "datasets cache with HF_DATASETS_OFFLINE=1.")


def _load_error(spec: TaskSpec, err: Exception) -> EvaluationError:
    """One line for a task lm-eval cannot build: unknown name, unreachable Hub, a broken YAML."""
    text = " ".join(str(err).split())
    if isinstance(err, KeyError) and spec.kind == "lm-eval":
        return EvaluationError(f"{spec.name!r} is not an lm-eval task name (nor a file): see `lm-eval ls tasks`")
    if spec.kind == "lm-eval" and _is_offline_error(err):
        return EvaluationError(f"task {spec.name!r} needs its dataset from the Hugging Face Hub, which cannot be "
                               f"reached ({text[:200]}). {_OFFLINE_HINT}")
    return EvaluationError(f"task {spec.name!r} cannot be loaded by lm-eval: {type(err).__name__}: {text[:300]}")


def _is_offline_error(err: BaseException) -> bool:
    names = {type(e).__name__ for e in _chain(err)}
    offline = {"ConnectionError", "OfflineModeIsEnabled", "LocalEntryNotFoundError", "DatasetNotFoundError",
               "HfHubHTTPError", "Timeout", "ReadTimeout", "ConnectTimeout", "FileNotFoundError"}
    return bool(names & offline) or "Hub" in str(err) or "offline" in str(err).lower()


def _chain(err: BaseException | None) -> list[BaseException]:
    out = []
    while err is not None and len(out) < 10:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


@dataclass
class TaskSuite:
    """Tasks resolved and checked once (local records read, standard datasets fetched), ready to evaluate any
    number of models. Build it with :func:`prepare_tasks` before loading a model: a task that cannot load fails
    then.

    Attributes:
        specs: the tasks as given.
        sources: per task, where its data is: ``{"dataset": ..., "config": ..., "split": ...}`` (model-index).
    """

    specs: list[TaskSpec]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    _configs: dict[str, Any] = field(default_factory=dict, repr=False)
    _manager: Any = field(default=None, repr=False)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    def task_list(self) -> list[Any]:
        """What lm-eval's ``simple_evaluate(tasks=...)`` takes: names, YAML paths and inline configs."""
        return [self._configs[s.name] for s in self.specs]


def _manager(specs: Sequence[TaskSpec]) -> Any:
    from lm_eval.tasks import TaskManager

    # Indexing lm-eval's own task folder takes seconds; inline configs of local files do not need it.
    return TaskManager(include_defaults=any(s.kind != "local" for s in specs))


def _source(spec: TaskSpec, task: Any) -> dict[str, Any]:
    config = task.config
    if spec.kind == "local":
        return {"dataset": spec.path.name, "local": True, "split": "test"}
    split = config.test_split or config.validation_split
    path = config.dataset_path
    local = path in ("json", "csv", "parquet", "text", None) or config.custom_dataset is not None
    return {"dataset": spec.name if local else path, "config": config.dataset_name, "split": split, "local": local}


def prepare_tasks(tasks: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | TaskSuite) -> TaskSuite:
    """Resolve ``tasks`` and load each once with lm-eval (a Hub dataset is fetched now, before any model work).

    Raises:
        EvaluationError: lm-eval is not installed (the message names ``hf-prune[eval]``), an unknown task name, a
            standard task whose data cannot be reached offline (the message says how to use local copies), or a
            task YAML lm-eval cannot build.
        CalibrationError: a local file's records are invalid (names the task and the record).
    """
    if isinstance(tasks, TaskSuite):
        return tasks
    specs = resolve_task_specs(tasks)
    _require_lm_eval()
    suite = TaskSuite(specs=specs, _manager=_manager(specs))
    for spec in specs:
        suite._configs[spec.name] = (_local_task_config(spec, _local_records(spec)) if spec.kind == "local"
                                     else str(spec.path) if spec.kind == "yaml" else spec.name)
        try:
            loaded = suite._manager.load([suite._configs[spec.name]])
        except Exception as err:  # noqa: BLE001 - one line naming the task
            raise _load_error(spec, err) from err
        for name, task in loaded["tasks"].items():
            suite.sources[name if len(loaded["tasks"]) > 1 else spec.name] = _source(spec, task)
    return suite


# ---- results -------------------------------------------------------------------------------------------
def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


@dataclass
class AccuracyReport:
    """Accuracy per task, with the settings it was measured under.

    Attributes:
        per_task: ``{task: {"acc", "acc_stderr", "n", "acc_norm"?, "acc_norm_stderr"?, "num_fewshot"}}``.
        sources: per task, where its data came from (``dataset``, ``config``, ``split``, ``local``).
        label: free text naming the model.
    """

    per_task: dict[str, dict[str, Any]]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    label: str | None = None

    @property
    def mean(self) -> float:
        """Unweighted mean accuracy over the tasks (each task counts once, as the papers average)."""
        return sum(t["acc"] for t in self.per_task.values()) / len(self.per_task)

    @property
    def mean_stderr(self) -> float | None:
        """The standard error of :attr:`mean`, the tasks taken as independent samples: sqrt(sum of the squared
        task errors) / number of tasks. None when a task has no standard error."""
        errors = [_number(t.get("acc_stderr")) for t in self.per_task.values()]
        if any(e is None for e in errors):
            return None
        return math.sqrt(sum(e * e for e in errors)) / len(errors)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{task: {...}}``: what ``--json`` writes."""
        return {task: dict(values) for task, values in self.per_task.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping[str, Any]], label: str | None = None) -> AccuracyReport:
        return cls(per_task={k: dict(v) for k, v in data.items()}, label=label)

    def to_json(self, path: str | os.PathLike[str] | None = None) -> str:
        """The per-task results as JSON text; also written (atomically) to ``path`` when given."""
        from .fileio import write_text_atomic

        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            write_text_atomic(path, text + "\n")
        return text

    def to_markdown(self) -> str:
        """A markdown table: task, examples, accuracy ± stderr, normalised accuracy ± stderr; then the mean."""
        title = f" ({self.label})" if self.label else ""
        shots = sorted({t.get("num_fewshot", 0) for t in self.per_task.values()})
        rows = [[task, t["n"], _fmt(t["acc"]), _fmt(t.get("acc_stderr")), _fmt(t.get("acc_norm")),
                 _fmt(t.get("acc_norm_stderr"))] for task, t in self.per_task.items()]
        rows.append(["**mean**", sum(t["n"] for t in self.per_task.values()), f"**{_fmt(self.mean)}**",
                     _fmt(self.mean_stderr), "", ""])
        return (f"Accuracy{title}, {'/'.join(map(str, shots))}-shot (higher is better)\n\n"
                + table(["task", "n", "acc", "±", "acc_norm", "±"], rows, "lrrrrr"))


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "—"


def _task_result(values: Mapping[str, Any], n: int, num_fewshot: int) -> dict[str, Any]:
    """lm-eval's ``{"acc,none": .., "acc_stderr,none": ..}`` as ``{"acc": .., "acc_stderr": .., "n": ..}``."""
    out: dict[str, Any] = {}
    for metric in _METRICS:
        key = next((k for k in values if k.split(",")[0] == metric), None)
        if key is None:
            continue
        out[metric] = _number(values[key])
        out[f"{metric}_stderr"] = _number(values.get(key.replace(metric, f"{metric}_stderr", 1)))
    out["n"] = int(n)
    out["num_fewshot"] = num_fewshot
    return out


def _sample_counts(results: Mapping[str, Any]) -> dict[str, int]:
    counts = {k: int(v.get("effective", v.get("original", 0))) for k, v in results.get("n-samples", {}).items()}
    for group, children in results.get("group_subtasks", {}).items():
        counts.setdefault(group, sum(counts.get(c, 0) for c in children))
    return counts


def _collect(results: Mapping[str, Any], num_fewshot: int) -> dict[str, dict[str, Any]]:
    counts = _sample_counts(results)
    per_task = {}
    for task, values in results["results"].items():
        if any(k.split(",")[0] == "acc" for k in values):
            per_task[task] = _task_result(values, counts.get(task, 0), num_fewshot)
    if not per_task:
        raise EvaluationError(f"none of the tasks {sorted(results['results'])} reports an accuracy (acc): "
                              "only multiple-choice (log-likelihood) tasks are supported")
    return per_task


# ---- main entry ----------------------------------------------------------------------------------------
def _harness_model(model: Any, tokenizer: Any, batch_size: int, full_logits: bool = False) -> Any:
    from lm_eval.models.huggingface import HFLM

    from .harness import PromptSharingLM

    # backend="causal": lm-eval would otherwise look the pruned model types up in transformers' causal-LM table.
    harness = HFLM if full_logits else PromptSharingLM
    return harness(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size)


def evaluate_tasks(
    model: Any,
    tokenizer: Any,
    tasks: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | TaskSuite,
    *,
    num_fewshot: int = 0,
    limit: int | float | None = None,
    batch_size: int = 8,
    label: str | None = None,
    full_logits: bool = False,
) -> AccuracyReport:
    """Accuracy of an already loaded causal LM (pruned or not) on lm-eval tasks.

    lm-eval builds the requests and computes the metrics; the log-likelihoods come from
    :class:`~hf_prune.harness.PromptSharingLM`, lm-eval's ``HFLM`` with each question's prompt run once for all of
    its choices and the vocabulary head applied only to the answer tokens (same results, several times faster).

    Args:
        tasks: task names / files / folders (see the module docstring), comma-separated or a list, or a
            :class:`TaskSuite` from :func:`prepare_tasks` (to check the tasks before loading the model, and to
            evaluate several models on them).
        num_fewshot: examples in each prompt (0: zero-shot); a task whose config fixes 0 keeps 0.
        limit: at most this many examples per task (a fraction < 1: that share), for quick runs.
        batch_size: requests (question-choice pairs) per forward pass (does not change the result beyond float
            noise).
        label: name of the model in the report.
        full_logits: score with lm-eval's own ``HFLM`` instead (every choice a separate sequence, logits at every
            position): the reference the faster path is checked against.

    Raises:
        EvaluationError: see :func:`prepare_tasks`; bad settings (checked first).
    """
    check_task_options(num_fewshot=num_fewshot, limit=limit, batch_size=batch_size)
    suite = prepare_tasks(tasks)
    from lm_eval import simple_evaluate

    was_training = getattr(model, "training", False)
    model.eval()
    try:
        # bootstrap_iters only matters for metrics without a closed-form stderr (acc's is analytic).
        results = simple_evaluate(model=_harness_model(model, tokenizer, batch_size, full_logits), tasks=suite.task_list(),
                                  num_fewshot=num_fewshot, limit=limit, bootstrap_iters=1000, log_samples=False,
                                  task_manager=suite._manager)
    finally:
        model.train(was_training)
    per_task = _collect(results, num_fewshot)
    return AccuracyReport(per_task=per_task, sources={t: suite.sources.get(t, {}) for t in per_task}, label=label)
