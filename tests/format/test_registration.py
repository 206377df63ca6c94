"""``import hf_prune`` registers pruned_qwen2 and pruned_qwen3 with the Auto classes, whatever is imported first, without torch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

_CHECK = """
import sys
{first}
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING
for family in ("Qwen2", "Qwen3"):
    config = CONFIG_MAPPING["pruned_" + family.lower()]
    assert MODEL_FOR_CAUSAL_LM_MAPPING[config].__name__ == "Pruned" + family + "ForCausalLM"
print("REGISTERED")
"""


@pytest.mark.parametrize("first", [
    "import hf_prune",                                                    # then transformers, by the check
    "import transformers; import hf_prune",                               # transformers already there
    "import hf_prune; from hf_prune.modeling import PrunedQwen2Config",   # the config file imports transformers
    "import hf_prune.modeling.modeling_pruned_qwen2",                      # the modeling file imports transformers
    "import hf_prune.modeling.modeling_pruned_qwen3",                      # ... and the qwen3 one imports qwen2's
    "import hf_prune; hf_prune.apply_plan",                               # a lazy attribute pulls them in
])
def test_registration_in_every_import_order(first):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-W", "error", "-c", _CHECK.format(first=first)], capture_output=True,
                          text=True, timeout=120, env=env)
    assert "REGISTERED" in proc.stdout, proc.stderr[-3000:]


def test_import_hf_prune_is_light():
    code = "import sys, hf_prune; print(sorted(m for m in ('torch', 'transformers', 'datasets') if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(
                              p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)})
    assert proc.stdout.strip() == "[]", proc.stderr


def test_every_subpackage_is_in_the_wheel():
    """An editable install finds any folder; a wheel only ships the packages pyproject.toml lists."""
    import tomllib
    from pathlib import Path

    root = REPO_ROOT
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(("hf_prune", *p.parent.relative_to(root / "hf_prune").parts))
             for p in (root / "hf_prune").rglob("__init__.py")}
    assert found - listed == set(), f"add to [tool.setuptools] packages: {sorted(found - listed)}"
