"""The offline end-to-end demo behind ``hf-prune demo``."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import torch

from .checkpoint import check_output_dir, save_pruned_model
from .plan import PruningPlan
from .slicing import apply_plan

PROMPT = "The three most important things to know about Python lists are"


def _builtin_text() -> str:
    # Real English technical prose that every Python install carries.
    import argparse
    import collections
    import json
    import random

    return "\n\n".join(inspect.getdoc(m) for m in (argparse, json, collections.OrderedDict, random.Random))


def _perplexity(model, tokenizer, text: str, seq_len: int = 128) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    windows = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)
    with torch.no_grad():
        losses = [model(w[None], labels=w[None]).loss.item() for w in windows]
    return math.exp(sum(losses) / len(losses))


def run_demo(output_dir: str | Path, overwrite: bool = False) -> Path:
    """Prune SmolLM2 by a fixed plan, save it, reload it with ``AutoModelForCausalLM`` and generate."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .assets import load_smollm2

    out = check_output_dir(output_dir, overwrite)  # before any expensive work
    model, tokenizer = load_smollm2()
    n = model.config.num_hidden_layers
    # Fixed plan: the last third of the layers keep 2 of 3 query heads per KV group.
    plan = PruningPlan.from_dict(
        {"layers": [{} if i < 2 * n // 3 else {"query_heads": [0, 1, 3, 4, 6, 7]} for i in range(n)]}
    )
    pruned = apply_plan(model, plan)
    save_pruned_model(pruned, out / "pruned", tokenizer=tokenizer, plan=plan, overwrite=overwrite)

    reloaded = AutoModelForCausalLM.from_pretrained(out / "pruned")
    tok = AutoTokenizer.from_pretrained(out / "pruned")
    text = _builtin_text()
    dense_ppl, pruned_ppl = _perplexity(model, tokenizer, text), _perplexity(reloaded, tok, text)
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    inputs = tok(PROMPT, return_tensors="pt")
    generated = tok.decode(reloaded.generate(**inputs, max_new_tokens=30, do_sample=False)[0], skip_special_tokens=True)
    print(f"\n| model | parameters | perplexity |\n|---|---|---|")
    print(f"| dense | {params(model) / 1e6:.1f} M | {dense_ppl:.2f} |")
    print(f"| pruned (reloaded from {out / 'pruned'}) | {params(reloaded) / 1e6:.1f} M | {pruned_ppl:.2f} |")
    print(f"\n{generated}\n")
    return out
