"""PrunedQwen2Config: per-layer sizes through transformers' per_layer_config, validation, JSON round trip."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT
from transformers import AutoConfig
from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError

import hf_prune  # noqa: F401  (registers pruned_qwen2)
from hf_prune.modeling import PrunedQwen2Config

# The modeling files ship in every checkpoint and run on the user's transformers: a deprecation is a failure.
pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

BASE = dict(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2)


def test_per_layer_sizes_resolve_and_round_trip(tmp_path):
    cfg = PrunedQwen2Config(
        **BASE,
        per_layer_config={0: {"skip": ["attention"]}, 1: {"num_attention_heads": 2, "num_key_value_heads": 1,
                                                          "intermediate_size": 20}, 2: {"skip": ["mlp"]}},
    )
    assert cfg.head_dim == 8  # explicit, from the base sizes
    assert cfg.per_layer_config[1].num_attention_heads == 2
    assert cfg.per_layer_config[1].intermediate_size == 20
    assert cfg.per_layer_config[2].intermediate_size == 48
    assert cfg.layer_sizes() == [
        {"num_attention_heads": None, "num_key_value_heads": None, "intermediate_size": 48},
        {"num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 20},
        {"num_attention_heads": 4, "num_key_value_heads": 2, "intermediate_size": None},
    ]
    with pytest.raises(AmbiguousGlobalPerLayerAttributeError):
        cfg.intermediate_size  # varies across layers: transformers refuses the global read

    cfg.save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["model_type"] == "pruned_qwen2"
    assert stored["pruned_format_version"] == 1
    assert stored["per_layer_config"]["1"] == {"intermediate_size": 20, "num_attention_heads": 2, "num_key_value_heads": 1}
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, PrunedQwen2Config)
    assert loaded.layer_sizes() == cfg.layer_sizes()


@pytest.mark.parametrize(
    "per_layer, message",
    [
        ({1: {"num_attention_heads": 3}}, "Layer 1: 3 attention heads are not divisible by 2"),
        ({0: {"num_attention_heads": 0}}, "never as 0 heads"),
        ({2: {"intermediate_size": 0}}, "Layer 2: intermediate_size 0"),
        ({0: {"skip": ["moe"]}}, "Layer 0: unknown `skip`"),
        ({3: {"intermediate_size": 8}}, "range"),
    ],
)
def test_invalid_layer_sizes_are_refused(per_layer, message):
    with pytest.raises(ValueError, match=message):
        PrunedQwen2Config(**BASE, per_layer_config=per_layer)


def test_newer_format_version_is_refused():
    with pytest.raises(ValueError, match="format version 99"):
        PrunedQwen2Config(**BASE, pruned_format_version=99)


@pytest.mark.parametrize("version", ["5.16.0", "5.15.1", "4.57.6", "6.0.0", "6.1.0.dev0", "garbage"])
def test_transformers_outside_the_supported_range_is_refused(version):
    from hf_prune.modeling.configuration_pruned_qwen2 import check_transformers_version

    with pytest.raises(ImportError, match=r"need transformers >=5\.16\.1,<6; transformers " + re.escape(version)):
        check_transformers_version(version)


@pytest.mark.parametrize("version", ["5.16.1", "5.17", "5.22.2", "5.25.0", "5.40.1", "5.99.0rc1"])
def test_transformers_in_the_supported_range_is_accepted(version):
    from hf_prune.modeling.configuration_pruned_qwen2 import check_transformers_version

    check_transformers_version(version)


def test_the_guard_claims_what_the_package_requires():
    # The shipped file cannot read pyproject.toml: its copy of the range must agree with the dependency.
    from hf_prune.modeling.configuration_pruned_qwen2 import SUPPORTED_TRANSFORMERS_SPEC

    pyproject = (REPO_ROOT / "pyproject.toml").read_text()
    requirement = re.search(r'"transformers([^"]+)"', pyproject).group(1)
    assert requirement == SUPPORTED_TRANSFORMERS_SPEC
