"""The *load* step: find the model, check it, then load it with a tokenizer that matches its vocabulary.

:func:`check_model_source` reads only ``config.json`` (a local file, or one Hub request): a missing folder, a
folder that is no model, a mistyped id or an architecture hf-prune cannot prune is refused in one line, in
well under a second, before any weights are read. :func:`load_model` then loads the checked source
(converting a Llama model exactly to Qwen2) and :func:`load_tokenizer` refuses or repairs a tokenizer that
would tokenise the text differently from the vocabulary it was trained with.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ModelLoadError, TokenizerError, UnsupportedModelError

__all__ = ["ModelSource", "check_model_source", "load_model", "load_tokenizer", "parse_dtype", "to_qwen2_family",
           "SUPPORTED_MODEL_TYPES"]

logger = logging.getLogger(__name__)

#: ``model_type`` values hf-prune prunes (a Llama model is converted exactly to Qwen2 first).
SUPPORTED_MODEL_TYPES = ("qwen2", "pruned_qwen2", "qwen3", "pruned_qwen3", "llama")
_DTYPES = {"auto": "auto", "float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16",
           "bf16": "bfloat16", "float16": "float16", "fp16": "float16", "half": "float16"}
# Text that exposes tokenizers which split or normalise differently from their vocabulary's own rules
# (indentation, CJK next to whitespace, digits, contractions, accents).
_PROBE = ("The year 2024 wasn't   bad.\n    def f(x):\n        return x ** 2  # done\n"
          "这些\n        命令 Portable\n    Document Format, café naïve 12345!")


@dataclass(frozen=True)
class ModelSource:
    """A model checked before loading.

    Attributes:
        name: the id or path as given.
        local: whether it is a local folder (else a Hub model id).
        model_type: the ``model_type`` of its ``config.json``.
        config: the ``config.json`` it holds (as a dict).
    """

    name: str
    local: bool
    model_type: str
    config: dict[str, Any] = field(repr=False)

    @property
    def folder(self) -> Path | None:
        return Path(self.name).expanduser() if self.local else None


def _looks_like_a_path(name: str) -> bool:
    # Hub ids are "name" or "namespace/name": anything else with a separator, or whose first part is an existing
    # local folder, was meant as a path.
    first = name.split("/", 1)[0]
    return (name.startswith(("/", "./", "../", "~", "\\")) or "\\" in name or name.count("/") > 1
            or (len(name) > 1 and name[1] == ":") or ("/" in name and Path(first).is_dir()))


def _check_model_type(name: str, model_type: Any) -> str:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedModelError(
            f"{name} is a {model_type!r} model; hf-prune prunes Qwen2- and Qwen3-family causal LMs "
            f"(model_type {', '.join(SUPPORTED_MODEL_TYPES[:-1])}; llama is converted exactly)."
        )
    return model_type


def check_model_source(name_or_path: str | os.PathLike, *, revision: str | None = None,
                       token: str | None = None) -> ModelSource:
    """Check that ``name_or_path`` is a model hf-prune can prune, reading only its ``config.json``.

    Raises:
        ModelLoadError: no such folder, a folder without ``config.json``, an invalid or unknown Hub id, the Hub
            unreachable (with the local alternatives named).
        UnsupportedModelError: the config names an architecture hf-prune does not prune.
    """
    name = os.fspath(name_or_path)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{name} is a file; give the model folder (the one holding config.json).")
        config_file = path / "config.json"
        if not config_file.is_file():
            raise ModelLoadError(f"{name} is not a model folder: it has no config.json.")
        try:
            config = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"{config_file} is not readable JSON: {err}") from None
        return ModelSource(name, True, _check_model_type(name, config.get("model_type")), config)
    if _looks_like_a_path(name):
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise ModelLoadError(f"no such model folder: {name}{where}.")
    return _check_hub_model(name, revision, token)


def _check_hub_model(name: str, revision: str | None, token: str | None) -> ModelSource:
    from huggingface_hub import HfApi, constants, try_to_load_from_cache
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise ModelLoadError(f"{name!r} is neither a local folder nor a Hub model id: {err}") from None
    cached = try_to_load_from_cache(name, "config.json", revision=revision)
    if isinstance(cached, str):
        config = json.loads(Path(cached).read_text(encoding="utf-8"))
        return ModelSource(name, False, _check_model_type(name, config.get("model_type")), config)
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(f"no local folder {name!r}, and the Hub model {name!r} is not in the local cache "
                             "(HF_HUB_OFFLINE is set).")
    try:
        # One request, no retries: a mistyped folder name must fail at once, not after a minute of backoff.
        info = HfApi(token=token).model_info(name, revision=revision, timeout=10)
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no local folder {name!r}, and no Hub model of that name (or it is private: "
                             "pass a token).") from None
    except HfHubHTTPError as err:
        raise ModelLoadError(f"the Hub refused model {name!r}: {err}".splitlines()[0]) from None
    except Exception as err:  # connection errors of the HTTP stack
        raise ModelLoadError(f"no local folder {name!r}, and the Hub cannot be reached to find it "
                             f"({type(err).__name__}: {err}).") from None
    config = dict(info.config or {})
    return ModelSource(name, False, _check_model_type(name, config.get("model_type")), config)


def parse_dtype(dtype: Any) -> Any:
    """``"auto"``, a torch dtype, or a dtype name (``bf16``, ``float16``...) -> what ``from_pretrained`` takes.

    Names are checked and canonicalised (``"bf16"`` -> ``"bfloat16"``) without importing torch, so a typo fails
    before anything is loaded.
    """
    if dtype is None or not isinstance(dtype, str):
        return dtype  # None or a torch.dtype
    name = _DTYPES.get(dtype.replace("torch.", ""))
    if name is None:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16.")
    return name


_DEVICE_MAP_STRATEGIES = ("auto", "balanced", "balanced_low_0", "sequential")
_DEVICE = re.compile(r"(cpu|meta|mps|disk|(cuda|xpu|npu|hpu|mlu|musa)(:\d+)?)")


def check_device_map(device_map: Any) -> None:
    """Refuse, before anything is loaded, a ``device_map`` ``from_pretrained`` would refuse after reading the
    config, or one naming an accelerator this machine does not have (``cuda:7`` on a machine with two GPUs).

    Raises:
        ModelLoadError: naming the device.
    """
    if device_map is None or isinstance(device_map, int) or device_map in _DEVICE_MAP_STRATEGIES:
        return
    devices = device_map.values() if isinstance(device_map, Mapping) else [device_map]
    for device in devices:
        if isinstance(device, int) or not isinstance(device, str):
            continue  # a GPU index, or a torch.device: accelerate checks those itself
        match = _DEVICE.fullmatch(device)
        if match is None:
            raise ModelLoadError(f"device_map {device!r} is neither a device (cpu, cuda, cuda:0, mps...) nor one of "
                                 f"{', '.join(_DEVICE_MAP_STRATEGIES)}.")
        if match[2] in ("cuda", "xpu"):
            import torch

            backend = getattr(torch, match[2])
            count = backend.device_count() if backend.is_available() else 0
            index = int(match[3][1:]) if match[3] else 0
            if index >= count:
                raise ModelLoadError(f"device_map {device!r}: this machine has {count} {match[2]} device(s).")


def _vocabulary_file(name_or_path: str, kwargs: dict[str, Any]) -> str | None:
    from transformers.utils import cached_file

    hub = {k: kwargs[k] for k in ("revision", "token") if kwargs.get(k) is not None}
    return cached_file(name_or_path, "tokenizer.json", _raise_exceptions_for_missing_entries=False,
                       _raise_exceptions_for_connection_errors=False, **hub)


def _contradicts_vocabulary(tokenizer: Any, vocabulary_file: str) -> bool:
    """Whether ``tokenizer`` splits text differently from the rules saved with its vocabulary (tokenizer.json)."""
    from tokenizers import Tokenizer

    saved = Tokenizer.from_file(vocabulary_file)
    ids = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    return ids != saved.encode(_PROBE, add_special_tokens=False).ids


def load_tokenizer(name_or_path: str | os.PathLike, **kwargs: Any):
    """``AutoTokenizer.from_pretrained``, checked against the vocabulary it loads.

    - A tokenizer that turns text into no tokens is refused (transformers 5 builds an *empty* one for a folder
      without tokenizer files; every text would become zero tokens).
    - A tokenizer whose class splits text differently from its own ``tokenizer.json`` is replaced, with a
      warning, by that file as saved: transformers 5 gives a folder whose config says ``qwen2`` Qwen's
      pre-tokenizer even when the vocabulary is another model's (a Llama model converted to Qwen2), which
      changes the token ids and the perplexity.
    - A tokenizer that does not give back the text it encoded draws a warning.

    Raises:
        TokenizerError: the tokenizer produces no tokens.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    name = os.fspath(name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    if not tokenizer("The quick brown fox.", add_special_tokens=False)["input_ids"]:
        raise TokenizerError(f"the tokenizer loaded from {name} turns text into no tokens (no tokenizer files "
                             "there?); pass one with tokenizer=... (CLI: --tokenizer ID_OR_PATH).")
    vocabulary = _vocabulary_file(name, kwargs)
    if vocabulary is not None and _contradicts_vocabulary(tokenizer, vocabulary):
        logger.warning("%s: %s tokenises differently from the vocabulary's own tokenizer.json (a converted model?); "
                       "using tokenizer.json as saved.", name, type(tokenizer).__name__)
        tokenizer = PreTrainedTokenizerFast.from_pretrained(name, **kwargs)
    ids = tokenizer(_PROBE, add_special_tokens=False)["input_ids"]
    if tokenizer.decode(ids) != _PROBE:
        logger.warning("%s: the tokenizer does not give back the text it encodes (lossy normalisation); "
                       "perplexities are measured on the normalised text.", name)
    return tokenizer


def to_qwen2_family(model: Any):
    """``model`` as a model hf-prune prunes: a Llama model is converted exactly to Qwen2, others are checked."""
    from .format.convert import llama_to_qwen2
    from .format.geometry import check_supported

    if getattr(getattr(model, "config", None), "model_type", None) == "llama":
        logger.info("converting the Llama model to Qwen2 (exact)")
        model = llama_to_qwen2(model)
    check_supported(model)
    return model


def load_model(source: ModelSource, *, dtype: Any = "auto", device_map: Any = None, revision: str | None = None,
               token: str | None = None, max_memory: Any = None):
    """Load a checked :class:`ModelSource` as a (pruned) Qwen2 / Qwen3 causal LM, in eval mode.

    A Llama model is converted exactly to Qwen2 (:func:`hf_prune.format.llama_to_qwen2`).
    """
    from transformers import AutoModelForCausalLM

    from .registration import register

    register()
    kwargs: dict[str, Any] = {"revision": revision}
    if token is not None and not source.local:
        kwargs["token"] = token
    if max_memory:
        kwargs["max_memory"] = max_memory
    logger.info("loading %s", source.name)
    model = AutoModelForCausalLM.from_pretrained(source.name, dtype=parse_dtype(dtype), device_map=device_map,
                                                 **kwargs)
    return to_qwen2_family(model).eval()
