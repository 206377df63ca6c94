"""``prune_and_push``: the whole job, from a model id to pruned checkpoints on the Hub.

Load -> prune every requested sparsity in one nested run -> evaluate dense and pruned per domain -> save one
folder per level (``output_dir/sparsity-XX/``, with model card, plan and evaluation) -> push one branch per
level (``main`` = the primary level). Every argument that can be checked cheaply is checked **before** the
model is loaded, so a typo fails in a second and leaves nothing on disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .checkpoint import check_output_dir, save_pruned_model
from .data.mix import CalibrationMix
from .data.sources import DomainSource
from .errors import CalibrationError, HubAuthError, PruningError, PushArgumentError, TokenizerError

__all__ = ["prune_and_push", "PruneAndPushResult", "level_name", "DEFAULT_CALIBRATION", "EVAL_FILE"]

logger = logging.getLogger(__name__)

#: Used when no calibration is given: public Hub datasets (see ``hf_prune.data.PRESETS``).
DEFAULT_CALIBRATION = "web=0.3,code=0.3,math=0.2,dialogue=0.2"
#: Evaluation results written into every level folder.
EVAL_FILE = "eval_results.json"

_REPO_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?"
_REPO_ID_RE = re.compile(rf"{_REPO_PART}/{_REPO_PART}")


def level_name(sparsity: float) -> str:
    """Folder and branch name of a level: ``0.3 -> "sparsity-30"``, ``0.125 -> "sparsity-12.5"``."""
    return f"sparsity-{round(sparsity * 100, 2):g}"


@dataclass
class PruneAndPushResult:
    """What :func:`prune_and_push` returns.

    Attributes:
        folders: sparsity -> saved level folder.
        metrics: ``{"dense": {...}, "levels": {sparsity: {...}}}``; each entry holds ``params``, and for
            levels ``target_sparsity``, ``sparsity`` (measured), ``kv_cache_reduction``, ``branch``; plus
            ``perplexity`` (a :meth:`PerplexityReport.to_dict`) when an evaluation was given.
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
        head = "| model | params | sparsity | KV cache removed |" + (" mean ppl |" if has_ppl else "") + " folder |"
        rows = [head, "|---|---:|---:|---:|" + ("---:|" if has_ppl else "") + "---|"]
        ppl = lambda m: f" {m['perplexity']['mean']:.2f} |" if has_ppl else ""  # noqa: E731
        rows.append(f"| dense | {dense['params'] / 1e6:.2f} M | 0% | 0% |{ppl(dense)} |")
        for s, m in sorted(self.metrics["levels"].items()):
            mark = " (main)" if s == self.primary and self.pushes else ""
            rows.append(f"| {m['branch']}{mark} | {m['params'] / 1e6:.2f} M | {m['sparsity']:.1%} | "
                        f"{m['kv_cache_reduction']:.1%} |{ppl(m)} {self.folders[s]} |")
        return "\n".join(rows)

    def perplexity_table(self) -> str:
        """Markdown table of per-domain perplexity: dense, then every level (empty string if not evaluated)."""
        dense = self.metrics["dense"].get("perplexity")
        if dense is None:
            return ""
        levels = sorted(self.metrics["levels"].items())
        head = "| domain | dense | " + " | ".join(m["branch"] for _, m in levels) + " |"
        rows = [head, "|---|---:|" + "---:|" * len(levels)]
        for d, v in dense["per_domain"].items():
            rows.append(f"| {d} | {v:.2f} | " + " | ".join(f"{m['perplexity']['per_domain'][d]:.2f}" for _, m in levels) + " |")
        rows.append(f"| **mean** | **{dense['mean']:.2f}** | "
                    + " | ".join(f"**{m['perplexity']['mean']:.2f}**" for _, m in levels) + " |")
        return "\n".join(rows)


# ---- cheap validation ----------------------------------------------------------------------------------
def _levels(target_sparsity: float | Sequence[float]) -> list[float]:
    values = [target_sparsity] if isinstance(target_sparsity, (int, float)) else list(target_sparsity)
    if not values:
        raise PruningError("target_sparsity names no level; give e.g. (0.2, 0.3).")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 1:
            raise PruningError(f"every target sparsity must be a fraction in (0, 1), got {v!r}.")
    levels = sorted({round(float(v), 6) for v in values})
    names = [level_name(s) for s in levels]
    if len(set(names)) != len(names):
        raise PruningError(f"sparsity levels {levels} are too close: they would share a folder name.")
    return levels


def _primary(primary: float | str | None, levels: list[float]) -> float:
    if primary is None:
        return levels[0]
    if isinstance(primary, str):
        by_name = {level_name(s): s for s in levels}
        if primary in by_name:
            return by_name[primary]
        try:
            primary = float(primary)
        except ValueError:
            raise PushArgumentError(f"primary must be one of the levels {levels} (or {sorted(by_name)}), "
                                    f"got {primary!r}.") from None
    for s in levels:
        if abs(s - float(primary)) < 1e-6:
            return s
    raise PushArgumentError(f"primary must be one of the levels {levels}, got {primary!r}.")


def _as_mix(spec: Any) -> Any:
    """A CalibrationMix from a spec string / file path / mapping; other objects (windows, batches) pass through."""
    if spec is None:
        return None
    if isinstance(spec, CalibrationMix):
        mix = spec
    elif isinstance(spec, (str, os.PathLike)):
        mix = CalibrationMix.parse(os.fspath(spec))
    elif isinstance(spec, Mapping):
        if all(isinstance(v, (list, tuple)) and all(isinstance(t, str) for t in v) for v in spec.values()):
            return dict(spec)  # {domain: [documents]}: accepted by evaluate_perplexity as is
        mix = CalibrationMix(spec)
    else:
        return spec
    for src in mix.sources:
        if src.is_local:
            src.files()  # a missing file or unsupported type fails now, naming the domain
    return mix


def _local_sources(spec: Any) -> dict[Path, str]:
    out: dict[Path, str] = {}
    for src in getattr(spec, "sources", ()):
        if isinstance(src, DomainSource) and src.is_local:
            out.update({p.resolve(): src.name for p in src.files()})
    return out


def _check_overlap(calibration: Any, evaluation: Any) -> None:
    """Refuse an evaluation that reads the calibration's files or Hub split (as evaluate_perplexity does)."""
    if not isinstance(calibration, CalibrationMix) or not isinstance(evaluation, CalibrationMix):
        return
    cal_files = _local_sources(calibration)
    for path, edomain in _local_sources(evaluation).items():
        if path in cal_files:
            raise CalibrationError(f"domain {edomain!r}: evaluation source is the same as calibration domain "
                                   f"{cal_files[path]!r} ({path}); evaluate on held-out text (e.g. a dev split)")
    hub = {(s.source, s.config, s.split): s.name for s in calibration.sources if not s.is_local}
    for s in evaluation.sources:
        if not s.is_local and (s.source, s.config, s.split) in hub:
            raise CalibrationError(f"domain {s.name!r}: evaluation source is the same as calibration domain "
                                   f"{hub[(s.source, s.config, s.split)]!r} ({s.source} split {s.split}); "
                                   "evaluate on held-out text (e.g. a dev split)")


def _dtype(torch_dtype: Any) -> Any:
    import torch

    if torch_dtype is None or torch_dtype == "auto" or isinstance(torch_dtype, torch.dtype):
        return torch_dtype
    name = str(torch_dtype).replace("torch.", "")
    aliases = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}
    value = getattr(torch, aliases.get(name, name), None)
    if not isinstance(value, torch.dtype):
        raise PruningError(f"unknown dtype {torch_dtype!r}; use auto, float32, bfloat16 or float16.")
    return value


def _is_local(model_id_or_path: str | os.PathLike) -> bool:
    return Path(os.fspath(model_id_or_path)).expanduser().exists()


def _card_base_model(model_id: str, local: bool, config: Any) -> str:
    """A Hub-style id for the card: the given id, or for a local folder the id it was saved from, or its name."""
    if not local:
        return model_id
    for candidate in (getattr(config, "_name_or_path", None), Path(model_id).resolve().name):
        if isinstance(candidate, str) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", candidate):
            return candidate
    return re.sub(r"[^\w.-]+", "-", Path(model_id).resolve().name).strip("-") or "local-model"


def _license(model_id: str, local: bool, revision: str | None, token: str | None) -> str:
    """The base model's licence id from its card (local README.md, or the Hub); ``"unknown"`` if not found."""
    text = None
    try:
        if local:
            readme = Path(model_id).expanduser() / "README.md"
            text = readme.read_text(encoding="utf-8") if readme.is_file() else None
        else:
            from huggingface_hub import ModelCard

            return str(ModelCard.load(model_id, token=token).data.license or "unknown")
    except Exception:  # no card, no network: the licence is just not known
        return "unknown"
    if text:
        m = re.search(r"^license:\s*([^\s#]+)\s*$", text, flags=re.M)
        if m:
            return m.group(1).strip("'\"")
    return "unknown"


# ---- the job -------------------------------------------------------------------------------------------
def load_tokenizer(name_or_path: str, **kwargs: Any):
    """``AutoTokenizer.from_pretrained``, refusing a tokenizer that cannot tokenise.

    transformers 5 builds an *empty* tokenizer for a folder without tokenizer files (its config's model type
    picks the class, with no vocabulary); every text then becomes zero tokens and the failure would surface
    much later as "not enough calibration text".
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    if not tokenizer("The quick brown fox.", add_special_tokens=False)["input_ids"]:
        raise TokenizerError(f"the tokenizer loaded from {name_or_path} turns text into no tokens (no tokenizer files "
                             "there?); pass one with tokenizer=... (CLI: --tokenizer ID_OR_PATH).")
    return tokenizer


def prune_and_push(
    model_id_or_path: str | os.PathLike,
    repo_id: str | None = None,
    *,
    target_sparsity: float | Sequence[float] = (0.2, 0.3, 0.4, 0.5),
    calibration: Any = None,
    evaluation: Any = None,
    method: str = "gisp",
    output_dir: str | os.PathLike = "pruned",
    num_samples: int = 128,
    seq_len: int = 256,
    steps: int | None = None,
    seed: int = 0,
    eval_seq_len: int = 256,
    eval_max_windows: int | None = None,
    primary: float | str | None = None,
    private: bool = False,
    token: str | None = None,
    push: bool | None = None,
    overwrite: bool = False,
    torch_dtype: Any = "auto",
    device_map: Any = None,
    revision: str | None = None,
    endpoint: str | None = None,
    base_model: str | None = None,
    license: str | None = None,
    tokenizer: Any = None,
    calibration_sources: Mapping[str, str] | None = None,
    **prune_kwargs: Any,
) -> PruneAndPushResult:
    """Prune a model to several sparsities, evaluate, save one checkpoint folder per level, and push them.

    Args:
        model_id_or_path: Hub model id or local folder of a Qwen2 (or Llama, converted exactly) causal LM.
        repo_id: ``"namespace/name"`` to push to; ``None`` saves locally only.
        target_sparsity: fractions of decoder parameters to remove; one nested run gives every level.
        calibration: a :class:`CalibrationMix`, its CLI form (``"web=0.3,code=data/code.jsonl@0.7"``), a
            YAML/JSON mix file, a mapping, or anything :func:`hf_prune.prune` accepts. Default:
            :data:`DEFAULT_CALIBRATION` (public Hub datasets).
        evaluation: evaluation domains in the same forms (or ``{domain: [texts]}``); ``None`` skips evaluation.
            A source shared with the calibration is refused.
        method, num_samples, seq_len, steps, seed, **prune_kwargs: passed to :func:`hf_prune.prune`.
        output_dir: parent folder of the ``sparsity-XX/`` level folders; must be empty unless ``overwrite``.
        eval_seq_len, eval_max_windows: evaluation window length and per-domain cap.
        primary: the level that goes to ``main`` (a sparsity or a level name); default the lowest.
        private, token, endpoint: Hub repo visibility, token (default: ``HF_TOKEN`` or the stored login),
            Hub URL. The token is never logged.
        push: ``None`` pushes when ``repo_id`` is given; ``False`` never pushes.
        overwrite: replace a non-empty ``output_dir`` and allow pushing to a repo that has content.
        torch_dtype, device_map, revision: passed to ``from_pretrained``.
        base_model, license: what the model cards name as base model and licence (default: the model id
            and the licence in its card).
        tokenizer: a tokenizer, or the Hub id / folder to load one from, instead of
            ``AutoTokenizer.from_pretrained(model_id_or_path)``. ``model_id_or_path`` may also be an already
            loaded model, with ``tokenizer`` given.
        calibration_sources: domain -> where its text comes from, for the model cards (default: the file
            name of a local source, the dataset id of a Hub one).

    Raises:
        PruningError, CalibrationError, PushArgumentError, HubAuthError, OutputExistsError: bad arguments,
            all raised before the model is loaded. Errors of :func:`prune` and of the push propagate.
    """
    # ---- 1. everything cheap, before any loading ----
    levels = _levels(target_sparsity)
    primary_level = _primary(primary, levels)
    out = check_output_dir(output_dir, overwrite)
    if push and repo_id is None:
        raise PushArgumentError("push=True needs a repo_id ('namespace/name').")
    do_push = repo_id is not None and push is not False
    if repo_id is not None and (not isinstance(repo_id, str) or not _REPO_ID_RE.fullmatch(repo_id)
                                or ".." in repo_id or "--" in repo_id):
        raise PushArgumentError(f"repo_id must look like 'namespace/model-name', got {repo_id!r}.")
    for name, value in (("num_samples", num_samples), ("seq_len", seq_len), ("eval_seq_len", eval_seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PruningError(f"{name} must be a positive integer, got {value!r}.")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise PruningError(f"steps must be a positive integer, got {steps!r}.")
    if eval_max_windows is not None and (not isinstance(eval_max_windows, int) or eval_max_windows < 1):
        raise PruningError(f"eval_max_windows must be a positive integer, got {eval_max_windows!r}.")
    from .engine.presets import get_method

    get_method(method)
    if isinstance(prune_kwargs.get("importance"), str):
        from .engine.importance import get_importance

        get_importance(prune_kwargs["importance"])
    calib = _as_mix(DEFAULT_CALIBRATION if calibration is None else calibration)
    evals = _as_mix(evaluation)
    _check_overlap(calib, evals)
    dtype = _dtype(torch_dtype)
    if not isinstance(model_id_or_path, (str, os.PathLike)) and tokenizer is None:
        raise PruningError("a loaded model needs its tokenizer: prune_and_push(model, tokenizer=tokenizer, ...).")
    if do_push:
        if token is not None and (not isinstance(token, str) or not token.strip()):
            raise PushArgumentError("token must be a non-empty string or None.")
        from huggingface_hub import get_token

        if token is None and get_token() is None:
            raise HubAuthError("pushing needs a Hugging Face token: set HF_TOKEN, run `hf auth login`, or pass token=...")

    # ---- 2. load ----
    import torch
    from transformers import AutoModelForCausalLM

    from .card import CardInfo, write_model_card
    from .convert import llama_to_qwen2
    from .engine import prune
    from .evaluation import evaluate_perplexity
    from .slicing import layer_shapes

    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer_id = os.fspath(tokenizer)
        logger.info("loading the tokenizer %s", tokenizer_id)
        tokenizer = load_tokenizer(
            tokenizer_id, **({"token": token} if token is not None and not _is_local(tokenizer_id) else {}))
    if isinstance(model_id_or_path, (str, os.PathLike)):
        model_id = os.fspath(model_id_or_path)
        local = _is_local(model_id)
        load_kwargs: dict[str, Any] = {"revision": revision}
        if token is not None and not local:
            load_kwargs["token"] = token
        logger.info("loading %s", model_id)
        if tokenizer is None:  # first: cheap, and a folder without a usable tokenizer fails before the model loads
            tokenizer = load_tokenizer(model_id, **load_kwargs)
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=dtype, device_map=device_map, **load_kwargs)
        base_revision = revision if local else (getattr(model.config, "_commit_hash", None) or revision)
    else:  # an already loaded model
        model, local = model_id_or_path, True
        model_id = str(getattr(model.config, "_name_or_path", "") or "model")
        base_revision = revision
    if getattr(model.config, "model_type", None) == "llama":
        logger.info("converting the Llama model to Qwen2 (exact)")
        model = llama_to_qwen2(model)
    model.eval()
    card_base = base_model or _card_base_model(model_id, local, model.config)
    card_license = license or _license(model_id, local, revision, token)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    dense_params = params(model)

    # ---- 3. prune (one nested run) ----
    logger.info("pruning to %s with %s", ", ".join(f"{s:.0%}" for s in levels), method)
    result = prune(model, tokenizer, calib, levels, method=method, num_samples=num_samples, seq_len=seq_len,
                   steps=steps, seed=seed, **prune_kwargs)

    # ---- 4. evaluate ----
    def evaluate(m, label):
        logger.info("evaluating %s", label)
        return evaluate_perplexity(m, tokenizer, evals, seq_len=eval_seq_len, max_windows_per_domain=eval_max_windows,
                                   calibration=calib if isinstance(calib, CalibrationMix) else None, label=label,
                                   progress=prune_kwargs.get("show_progress", True))

    metrics: dict[str, Any] = {"dense": {"params": dense_params}, "levels": {}}
    dense_report = evaluate(model, "dense") if evals is not None else None
    if dense_report is not None:
        metrics["dense"]["perplexity"] = dense_report.to_dict()

    # ---- 5. save one folder per level ----
    calib_desc: dict[str, Any] = {"num_samples": num_samples, "seq_len": seq_len, "seed": seed}
    if isinstance(calib, CalibrationMix):
        calib_desc["domains"] = {s.name: round(s.weight, 4) for s in calib.sources}
        origins = dict(calibration_sources or {})
        # Local paths mean nothing to a reader of the card: the file name (or the description given) is shown.
        calib_desc["sources"] = {s.name: origins.get(s.name) or (Path(s.source).name if s.is_local else s.source)
                                 for s in calib.sources}
        hub_ids = [s.source for s in calib.sources if not s.is_local]
        if hub_ids:
            calib_desc["datasets"] = sorted(set(hub_ids))
    else:
        calib_desc["data"] = type(calib).__name__
    settings = result.settings
    method_text = (f"Method `{method}`: {settings.get('importance')} importance, {settings.get('allocation')} "
                   f"allocation, {settings.get('steps')} scoring round(s); attention heads (GQA-aware: a KV head "
                   "goes with its query heads) and MLP channels removed. No recovery fine-tuning.")
    other_levels = [(s, level_name(s)) for s in levels]
    folders: dict[float, Path] = {}
    out.mkdir(parents=True, exist_ok=True)
    for s in levels:
        pruned = result.model if (s == levels[-1] and result.model is not None) else result.apply(model, s)
        pruned.eval()
        report = evaluate(pruned, level_name(s)) if evals is not None else None
        entry = {"branch": level_name(s), "target_sparsity": s, "sparsity": result.sparsity[s],
                 "kv_cache_reduction": result.kv_cache_reduction[s], "params": params(pruned)}
        if report is not None:
            entry["perplexity"] = report.to_dict()
        metrics["levels"][s] = entry
        plan = result.plans[s]
        plan = type(plan)(layers=plan.layers, metadata={
            **plan.metadata, "base_model": card_base, "base_model_path": model_id,
            "base_model_revision": base_revision, "calibration": calib.to_dict() if hasattr(calib, "to_dict") else None,
            "settings": {k: v for k, v in settings.items() if k != "calibration"},
        })
        layers = [asdict(shape) for shape in layer_shapes(pruned)]
        info = CardInfo(
            base_model=card_base, base_model_revision=base_revision, license=card_license,
            repo_id=repo_id, method=method_text, calibration=calib_desc, target_sparsity=s,
            achieved_sparsity=float(result.sparsity[s]), params_before=dense_params, params_after=entry["params"],
            kv_cache_reduction=float(result.kv_cache_reduction[s]), layers=layers,
            eval_before=dense_report.per_domain if dense_report else {},
            eval_after=report.per_domain if report else {}, eval_seq_len=eval_seq_len,
            other_levels=other_levels, branch=level_name(s),
        )
        eval_json = {"base_model": card_base, "branch": level_name(s), "target_sparsity": s,
                     "sparsity": result.sparsity[s], "kv_cache_reduction": result.kv_cache_reduction[s],
                     "params_before": dense_params, "params_after": entry["params"],
                     "dense": dense_report.to_dict() if dense_report else None,
                     "pruned": report.to_dict() if report else None}

        def extra(folder: Path, info=info, eval_json=eval_json) -> None:
            (folder / EVAL_FILE).write_text(json.dumps(eval_json, indent=2) + "\n", encoding="utf-8")
            write_model_card(folder, info)

        if getattr(pruned, "generation_config", None) is None and getattr(model, "generation_config", None) is not None:
            pruned.generation_config = model.generation_config
        folders[s] = save_pruned_model(pruned, out / level_name(s), tokenizer=tokenizer, plan=plan,
                                       overwrite=overwrite, extra=extra)
        logger.info("saved %s", folders[s])
        del pruned
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ---- 6. push ----
    pushes: list[Any] = []
    if do_push:
        from .hub import push_pruned_folders

        logger.info("pushing %d level(s) to %s (main = %s)", len(levels), repo_id, level_name(primary_level))
        pushes = push_pruned_folders(repo_id, {level_name(s): folders[s] for s in levels},
                                     primary=level_name(primary_level), token=token, private=private,
                                     overwrite=overwrite, endpoint=endpoint)
    return PruneAndPushResult(folders=folders, metrics=metrics, pushes=pushes, result=result,
                              primary=primary_level, repo_id=repo_id if do_push else None)
