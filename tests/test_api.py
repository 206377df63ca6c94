"""The public API: the entry points at the top of ``hf_prune``; every other former top-level name still resolves,
for one release, with a DeprecationWarning that names where it lives now."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

import hf_prune

ENTRY_POINTS = {"prune_and_push", "PruneConfig", "prune", "Pruner", "PruneResult", "compensate", "apply_plan",
                "recover", "RecoveryConfig", "export", "memory_plan", "PruningPlan", "CalibrationMix",
                "evaluate_perplexity", "evaluate_tasks", "HfPruneError"}

#: Every name the package exported before, with the module that offers it now.
MOVED = {
    "PrunedQwen2Config": "hf_prune.modeling", "PrunedQwen2Model": "hf_prune.modeling",
    "PrunedQwen2ForCausalLM": "hf_prune.modeling", "PrunedQwen3Config": "hf_prune.modeling",
    "PrunedQwen3Model": "hf_prune.modeling", "PrunedQwen3ForCausalLM": "hf_prune.modeling",
    "LayerPlan": "hf_prune.format", "to_qwen2": "hf_prune.format", "llama_to_qwen2": "hf_prune.format",
    "CalibrationWindows": "hf_prune.data", "MemoryPlan": "hf_prune.engine.memory",
    "PerplexityReport": "hf_prune.evaluation", "AccuracyReport": "hf_prune.accuracy",
    "PruneAndPushResult": "hf_prune.job",
    **{name: "hf_prune.errors" for name in ("ModelLoadError", "UnsupportedModelError", "TokenizerError",
                                            "InvalidPlanError", "ConfigMismatchError", "ExportError", "NotUniformError",
                                            "CalibrationError", "DataOverlapWarning", "PruningError", "EvaluationError",
                                            "RecoveryError", "RecoveryDivergedError", "OutputExistsError",
                                            "AssetNotFoundError", "DataFetchError", "ModelCardError", "HubError",
                                            "PushArgumentError", "HubAuthError", "RepoExistsError",
                                            "PushIncompleteError", "InsufficientMemoryError")},
}


def test_the_top_level_offers_the_entry_points_only():
    assert set(hf_prune.__all__) == ENTRY_POINTS
    assert not set(MOVED) & set(dir(hf_prune))  # the old names are not advertised
    for name in ENTRY_POINTS:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)
            assert getattr(hf_prune, name) is not None


@pytest.mark.parametrize("name", sorted(MOVED))
def test_an_old_name_warns_once_naming_its_home_and_still_resolves(name):
    home = MOVED[name]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = getattr(hf_prune, name)
    assert value is getattr(importlib.import_module(home), name)
    assert [w.category for w in caught] == [DeprecationWarning]
    assert f"import it from {home}" in str(caught[0].message) and caught[0].filename == __file__


def test_from_import_of_an_old_name_warns_once_at_the_import():
    code = ("import warnings; warnings.simplefilter('always')\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    from hf_prune import PruningError, LayerPlan\n"
            "print(len(w), sorted({x.filename for x in w}), PruningError.__module__, LayerPlan.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "2" and out[1] == "['<string>']" and out[2:] == ["hf_prune.errors", "hf_prune.format.plan"]


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'prune_and_pull'"):
        hf_prune.prune_and_pull  # noqa: B018
