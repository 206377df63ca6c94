"""Shared test helpers: tiny random Qwen2 / Qwen3 models for format tests (and the model family as a parameter),
the real SmolLM2 for quality tests, a tiny saved base model with a tokenizer and text, and a local Hub server."""

from __future__ import annotations

import inspect
import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

REPO_ROOT = Path(__file__).resolve().parents[1]

# The cache argument (and output field) of the installed transformers: `past_key_values` up to 5.23, `cache` from
# 5.24 (the old name warns until 5.40). Read from stock Qwen2, independently of hf_prune's own detection.
CACHE_KWARG = "cache" if "cache" in inspect.signature(Qwen2ForCausalLM.forward).parameters else "past_key_values"

# Set by .ci/run: a missing real-model asset is then a failure, not a skip.
REQUIRE_ASSETS = os.environ.get("HF_PRUNE_REQUIRE_ASSETS") == "1"


def tiny_qwen2_config(**overrides) -> Qwen2Config:
    """A Qwen2 config small enough for format tests (8 heads in 2 KV groups, 4 layers)."""
    values = dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False, use_sliding_window=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, pad_token_id=0, eos_token_id=1,
        bos_token_id=2,
    )
    values.update(overrides)
    return Qwen2Config(**values)


def tiny_qwen2(seed: int = 0, **overrides) -> Qwen2ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_qwen2_config(**overrides)).eval()
    # Random init leaves q/k/v biases at 0; make them non-zero so slicing them is actually tested.
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.1)
    return model


def tiny_qwen3_config(**overrides) -> Qwen3Config:
    """8 heads in 2 KV groups, head_dim 16 != hidden 64 / 8 heads, 4 layers (Qwen3: q_norm / k_norm, no biases)."""
    values = dict(
        vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, head_dim=16, max_position_embeddings=256, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, pad_token_id=0, eos_token_id=1,
        bos_token_id=2,
    )
    values.update(overrides)
    return Qwen3Config(**values)


def tiny_qwen3(seed: int = 0, **overrides) -> Qwen3ForCausalLM:
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_qwen3_config(**overrides)).eval()
    # Random init leaves q_norm / k_norm at 1; make them differ per dimension so keeping them whole is tested.
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_norm.weight.normal_(1, 0.3)
            layer.self_attn.k_norm.weight.normal_(1, 0.3)
    return model


#: A plan of the tiny models with every kind of layer (layer 0 without attention, layer 2 without MLP, the others
#: pruned unevenly), and input ids for it: for save / load and shipped-code tests.
MIXED_PLAN = {"layers": [
    {"query_heads": [], "mlp_channels": list(range(0, 96, 3))},
    {"query_heads": [0, 1, 2, 3]},
    {"mlp_channels": []},
    {"query_heads": [2, 7], "mlp_channels": list(range(50))},
]}
MIXED_INPUT = [[5, 9, 17, 33, 65, 100, 3, 4]]

#: The model families hf-prune supports; tests that hold for every family take the ``family`` fixture.
FAMILIES = ("qwen2", "qwen3")
_TINY = {"qwen2": (tiny_qwen2_config, tiny_qwen2), "qwen3": (tiny_qwen3_config, tiny_qwen3)}


def tiny_config(family: str, **overrides):
    return _TINY[family][0](**overrides)


def tiny_causal_lm(family: str, seed: int = 0, **overrides):
    """A tiny random stock model of ``family`` (``qwen2``: head_dim 8 = hidden / heads; ``qwen3``: head_dim 16)."""
    return _TINY[family][1](seed, **overrides)


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def pruned_classes(family: str):
    """(PrunedXForCausalLM, PrunedXModel, PrunedXConfig) of ``family``."""
    import hf_prune.modeling as modeling

    name = {"qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    return tuple(getattr(modeling, f"Pruned{name}{suffix}") for suffix in ("ForCausalLM", "Model", "Config"))


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_model() -> Qwen2ForCausalLM:
    return tiny_qwen2()


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as a stock Qwen2ForCausalLM (fp32) and its tokenizer."""
    from hf_prune.demo.assets import load_smollm2
    from hf_prune.errors import AssetNotFoundError

    try:
        return load_smollm2()
    except AssetNotFoundError as err:
        if REQUIRE_ASSETS:
            raise
        pytest.skip(str(err))


BLOCK_HF_PRUNE = textwrap.dedent(
    """
    import sys
    class _Block:
        # Makes `import hf_prune` fail, as on a machine where hf-prune is not installed.
        def find_spec(self, name, path=None, target=None):
            if name == "hf_prune" or name.startswith("hf_prune."):
                raise ModuleNotFoundError(f"No module named {name!r}")
            return None
    sys.meta_path.insert(0, _Block())
    """
)


def run_without_hf_prune(code: str, cwd: Path, timeout: int = 300) -> str:
    """Run ``code`` in a fresh interpreter where ``import hf_prune`` fails; return its stdout."""
    script = BLOCK_HF_PRUNE + textwrap.dedent(code) + "\nassert 'hf_prune' not in sys.modules\n"
    env = dict(os.environ)
    # Keep PYTHONPATH (CI puts the oldest supported transformers there) but not the repo root: hf_prune must not
    # be importable (the meta-path block above refuses it too).
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != REPO_ROOT]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["HF_HUB_OFFLINE"] = "1"
    proc = subprocess.run(
        # Deprecations are errors: the shipped files must run cleanly on the transformers a user has.
        [sys.executable, "-W", "error::FutureWarning", "-W", "error::DeprecationWarning", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    return proc.stdout



def stdlib_corpus(root: Path) -> dict[str, dict[str, Path]]:
    """Real two-domain text every Python install carries, split into disjoint calibration/evaluation files.

    ``docs``: the documentation topics of ``pydoc_data`` (English technical prose); ``code``: standard-library
    modules. Returns ``{"calib": {domain: path}, "eval": {domain: path}}``.
    """
    from hf_prune.demo.text import local_domains, write_domains

    text = write_domains(root, local_domains())
    return {"calib": text.calibration, "eval": text.evaluation}


WORDS = "the cat sat on a mat and dog ran to big red house with green door while sun shone over hills".split()
#: The smallest run settings that exercise every step of a job (prune_and_push keyword arguments).
FAST = dict(num_samples=8, seq_len=32, steps=2, eval_seq_len=32, show_progress=False)


def _texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(30, 80))) for _ in range(n)]


def make_tiny_base(root: Path) -> dict[str, Path]:
    """A tiny random Qwen2 with a small byte-level BPE tokenizer in ``root/base``, and four jsonl files
    (``cal_a``, ``cal_b``, ``ev_a``, ``ev_b``; ``calibration`` and ``evaluation`` are the mix strings over them)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    root.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_texts(0, 50), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<eos>", "<bos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    tiny_qwen2(vocab_size=320).save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    paths = {"base": root / "base"}
    for name, seed in (("cal_a", 1), ("cal_b", 2), ("ev_a", 3), ("ev_b", 4)):
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps({"text": t}) + "\n" for t in _texts(seed, 40)))
    paths["calibration"] = f"a={paths['cal_a']}@0.5,b={paths['cal_b']}@0.5"
    paths["evaluation"] = f"a={paths['ev_a']},b={paths['ev_b']}"
    return paths


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A local Hub-compatible server (tests/hub_server.py) for the real huggingface_hub client; token ``HUB_TOKEN``."""
    import huggingface_hub.constants as hf_constants

    from hub_server import LocalHub

    # hf_xet is installed and the client picks Xet for every upload unless told not to (read at call time); the
    # local server speaks basic LFS only.
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)  # it is the network here
    monkeypatch.delenv("HF_TOKEN", raising=False)  # no stored login or env token may stand in for the test token
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    with LocalHub(tokens={HUB_TOKEN: HUB_USER}) as server:
        yield server


HUB_TOKEN = "hf_TESTSECRETdoNotLeak0123456789"
HUB_USER = "test-user"
