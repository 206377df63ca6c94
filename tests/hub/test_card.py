"""Model card rendering (hf_prune.hub.card, Jinja2 through huggingface_hub) and its per-layer chart (matplotlib)."""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
import struct
from pathlib import Path

import pytest
import yaml
from huggingface_hub import ModelCard, ModelCardData

from hub_server import validate_card_yaml

from hf_prune.errors import ModelCardError
from hf_prune.hub.card import CARD_TAGS, CHART_FILENAME, CardInfo, check_card_metadata, render_model_card, write_model_card
from hf_prune.hub.chart import layer_figure

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

SECTIONS = (
    "## How to load it",
    "## Method",
    "### Calibration data",
    "## Sparsity and size",
    "## Per-layer sizes",
    "## Evaluation",
    "## Inference speed",
    "## Other sparsity levels",
    "## Limitations",
)


def make_info(**overrides) -> CardInfo:
    values = dict(
        base_model="Qwen/Qwen2.5-0.5B",
        base_model_revision="060db6499f32faf8b98477b0a26969ef7d8b9987",
        license="apache-2.0",
        repo_id="someone/Qwen2.5-0.5B-pruned",
        method="Attention heads and MLP channels ranked by calibration activations; no fine-tuning.",
        calibration={"domains": {"code": 64, "web": 64, "math": 32}, "seq_len": 512, "datasets": ["org/mix"]},
        target_sparsity=0.3,
        achieved_sparsity=0.298,
        params_before=494_032_768,
        params_after=346_800_000,
        kv_cache_reduction=0.25,
        layers=[
            {"num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864},
            {"num_attention_heads": 10, "num_key_value_heads": 2, "intermediate_size": 3200},
            {"num_attention_heads": 0, "num_key_value_heads": 0, "intermediate_size": 2048},  # attention removed
            {"num_attention_heads": 7, "num_key_value_heads": 1, "intermediate_size": 0},  # MLP removed
        ],
        eval_before={"code": 4.21, "web": 13.5, "math": 6.0},
        eval_after={"code": 5.02, "web": 15.9, "math": 7.7},
        eval_seq_len=512,
        speed={"device": "cpu", "batch_size": 1, "dense_tokens_per_s": 20.0, "pruned_tokens_per_s": 27.0},
        other_levels=[(0.3, "sparsity-30"), (0.5, "sparsity-50"), (0.7, "sparsity-70")],
        branch="sparsity-30",
    )
    values.update(overrides)
    return CardInfo(**values)


def front_matter(text: str) -> dict:
    match = re.match(r"\A---\n(.*?)\n---\n", text, re.S)
    assert match, "card must start with a YAML front matter block"
    return yaml.safe_load(match.group(1))


def test_card_has_every_section_and_the_numbers():
    text = render_model_card(make_info())
    positions = [text.index(section) for section in SECTIONS]
    assert positions == sorted(positions)
    # Loading with and without the plugin.
    assert "import hf_prune" in text
    assert 'from_pretrained("someone/Qwen2.5-0.5B-pruned", revision="sparsity-30")' in text
    assert "trust_remote_code=True" in text and "revision=" in text
    # Method, calibration, sizes.
    assert "060db6499f32faf8b98477b0a26969ef7d8b9987" in text
    assert "| code | 64 |" in text and "seq len: 512" in text
    assert "| achieved sparsity | 29.8% |" in text and "494,032,768" in text and "| KV-cache reduction | 25.0% |" in text
    # Per-layer table and chart, skipped blocks.
    assert f"]({CHART_FILENAME})" in text
    assert "| 2 | skipped | skipped | 2048 |" in text and "| 3 | 7 | 1 | skipped |" in text
    # Evaluation before/after per domain.
    assert "| code | 4.21 | 5.02 | +19.2% |" in text and "| math | 6.00 | 7.70 | +28.3% |" in text
    # Speed and the other levels.
    assert "1.35x" in text
    assert '`sparsity-30` (this card)' in text and '`revision="sparsity-70"`' in text
    assert "$" not in text.replace("$ ", "")  # no placeholder left


def test_evaluation_table_summarises_the_domains_by_mean_and_geometric_mean_of_ratios():
    before, after = {"code": 4.21, "web": 13.5, "math": 6.0}, {"code": 5.02, "web": 15.9, "math": 7.7}
    text = render_model_card(make_info(eval_before=before, eval_after=after))
    mean_before, mean_after = statistics.mean(before.values()), statistics.mean(after.values())
    ratio = statistics.geometric_mean([after[d] / before[d] for d in before])
    assert f"| **mean** | {mean_before:.2f} | {mean_after:.2f} | +{100 * (mean_after / mean_before - 1):.1f}% |" in text
    assert f"| **geometric mean, ratio to dense** | 1.000x | {ratio:.3f}x | +{100 * (ratio - 1):.1f}% |" in text
    assert "weighs every domain's change alike" in text
    # One domain: nothing to summarise.
    text = render_model_card(make_info(eval_before={"code": 4.21}, eval_after={"code": 5.02}))
    assert "**mean**" not in text and "weighs every domain" not in text and "| code | 4.21 | 5.02 | +19.2% |" in text


def test_card_metadata_is_valid_hub_metadata():
    text = render_model_card(make_info())
    data = front_matter(text)
    assert data["base_model"] == "Qwen/Qwen2.5-0.5B"
    assert data["library_name"] == "transformers"
    assert data["pipeline_tag"] == "text-generation"
    assert data["license"] == "apache-2.0"
    assert set(CARD_TAGS) <= set(data["tags"]) and {"pruned", "structured-pruning", "hf-prune"} <= set(data["tags"])
    assert data["datasets"] == ["org/mix"]
    assert "base_model_relation" not in data
    # huggingface_hub accepts it (constructor validation and the parser of a full card).
    card_data = ModelCardData(**data)
    assert card_data.to_dict() == data
    assert ModelCard(text).data.base_model == "Qwen/Qwen2.5-0.5B"
    assert check_card_metadata(text) == data
    # And the local Hub's validate-yaml rules (what the upload test server enforces).
    assert validate_card_yaml(text) == []


def test_optional_fields_and_unknown_license():
    text = render_model_card(make_info(speed=None, repo_id=None, other_levels=[], base_model_revision=None,
                                       license="Qwen Research License"))
    data = front_matter(text)
    assert data["license"] == "other" and data["license_name"] == "qwen-research-license"
    assert data["license_link"].startswith("https://huggingface.co/Qwen/Qwen2.5-0.5B")
    assert "Not measured" in text
    assert "<namespace>/<repo-name>" in text
    assert "`sparsity-30` (this card)" in text
    check_card_metadata(text)


def test_check_card_metadata_rejects_what_the_hub_rejects():
    good = render_model_card(make_info())
    with pytest.raises(ModelCardError, match="base_model_relation"):
        check_card_metadata(good.replace("library_name:", "base_model_relation: pruned\nlibrary_name:", 1))
    with pytest.raises(ModelCardError, match="front matter"):
        check_card_metadata("# no metadata\n")
    with pytest.raises(ModelCardError, match="does not parse"):
        check_card_metadata("---\ntags: [unclosed\n---\n")


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("achieved_sparsity", 1.2, "achieved_sparsity"),
        ("params_after", 10**12, "params_after"),
        ("eval_after", {"code": float("nan")}, "eval_after"),
        ("layers", [], "layers"),
        ("base_model", "not a model id!", "base_model"),
        ("other_levels", [(0.5,)], "other_levels"),
    ],
)
def test_invalid_info_is_refused_with_the_field_named(field, value, match):
    with pytest.raises(ModelCardError, match=match):
        render_model_card(make_info(**{field: value}))


def test_write_model_card_writes_readme_and_a_png_chart(tmp_path: Path):
    import matplotlib.image

    info = make_info(base_layers=[{"num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864}] * 4)
    readme = write_model_card(tmp_path, info)
    assert readme == tmp_path / "README.md"
    assert readme.read_text(encoding="utf-8") == render_model_card(info)
    png = (tmp_path / CHART_FILENAME).read_bytes()
    assert png[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", png[16:24])  # IHDR
    assert width >= 400 and height >= 300
    pixels = matplotlib.image.imread(tmp_path / CHART_FILENAME)
    assert pixels.shape[:2] == (height, width) and (pixels[..., :3] < 0.9).any()  # something was drawn


def test_chart_has_axes_labels_and_a_legend():
    layers = make_info().layers
    figure = layer_figure(layers, [{"num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864}] * 4,
                          title="sparsity-30: per-layer sizes")
    heads, mlp = figure.axes
    assert heads.get_ylabel() == "attention heads" and mlp.get_ylabel() == "MLP width"
    assert mlp.get_xlabel() == "decoder layer" and figure.get_suptitle() == "sparsity-30: per-layer sizes"
    head_labels = [t.get_text() for t in heads.get_legend().get_texts()]
    assert {"kept query heads", "kept KV heads", "dense model", "sublayer removed"} <= set(head_labels)
    assert {"kept MLP channels", "dense model", "sublayer removed"} <= {t.get_text() for t in mlp.get_legend().get_texts()}
    # The bars are the kept sizes of each layer (0 where a sublayer was removed).
    assert [p.get_height() for p in heads.containers[0]] == [14, 10, 0, 7]
    assert [p.get_height() for p in mlp.containers[0]] == [4864, 3200, 2048, 0]


def test_card_info_is_a_typed_dataclass():
    fields = {f.name for f in dataclasses.fields(CardInfo)}
    assert fields >= {
        "base_model", "base_model_revision", "license", "repo_id", "method", "calibration", "target_sparsity",
        "achieved_sparsity", "params_before", "params_after", "kv_cache_reduction", "layers", "eval_before",
        "eval_after", "eval_seq_len", "speed", "other_levels", "branch",
    }


# ---- accuracy (lm-eval results) ------------------------------------------------------------------------------
def _acc(acc: float, norm: float | None = None, n: int = 200, shots: int = 0) -> dict:
    out = {"acc": acc, "acc_stderr": (acc * (1 - acc) / (n - 1)) ** 0.5, "n": n, "num_fewshot": shots}
    if norm is not None:
        out["acc_norm"] = norm
    return out


def test_accuracy_table_and_model_index() -> None:
    """The card shows dense vs every level per task with the mean; model-index holds this level's own results in
    the Hub's format (parsed back by huggingface_hub into EvalResults)."""
    dense = {"hellaswag": _acc(0.40, 0.52), "nextpassage_code": _acc(0.80)}
    l20 = {"hellaswag": _acc(0.36, 0.47), "nextpassage_code": _acc(0.70)}
    l30 = {"hellaswag": _acc(0.31, 0.41), "nextpassage_code": _acc(0.55)}
    sources = {"hellaswag": {"dataset": "Rowan/hellaswag", "config": None, "split": "validation", "local": False},
               "nextpassage_code": {"dataset": "nextpassage_code.jsonl", "split": "test", "local": True}}
    info = make_info(branch="sparsity-30", accuracy=l30, accuracy_sources=sources,
                     accuracy_columns=[("dense", dense), ("sparsity-20", l20), ("sparsity-30", l30)])
    text = render_model_card(info)
    assert "### Accuracy" in text and "0-shot accuracy" in text
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert "| task | dense | sparsity-20 | **sparsity-30** (this card) |" in table
    # Each cell: accuracy ± its standard error (sqrt(p(1-p)/(n-1)) at n = 200: 3.5, 3.4, 3.3 points).
    assert "| hellaswag | 40.0 ± 3.5 | 36.0 ± 3.4 | 31.0 ± 3.3 |" in table
    means = [100 * sum(col[t]["acc"] for t in dense) / 2 for col in (dense, l20, l30)]
    mean_errors = [100 * math.hypot(*(col[t]["acc_stderr"] for t in dense)) / 2 for col in (dense, l20, l30)]
    assert "| **mean** | " + " | ".join(f"**{m:.1f}** ± {e:.1f}" for m, e in zip(means, mean_errors)) + " |" in table
    # The calibration mix the levels were pruned with (make_info's 64 / 64 / 32 windows).
    assert "calibrated on a mix of 3 domains (code 40%, web 40%, math 20%)" in " ".join(text.split())
    # The metadata as the Hub reads it.
    assert validate_card_yaml(text) == []
    check_card_metadata(text)
    data = ModelCard(text).data
    assert data.model_name == "Qwen2.5-0.5B-pruned"
    got = {(r.dataset_name, r.metric_type): r for r in data.eval_results}
    assert set(got) == {("hellaswag", "acc"), ("hellaswag", "acc_norm"), ("nextpassage_code", "acc")}
    for (task, metric), r in got.items():
        assert r.metric_value == pytest.approx(l30[task][metric]) and r.task_type == "text-generation"
        assert r.dataset_args == {"num_few_shot": 0}
        stderr = l30[task].get(f"{metric}_stderr")
        assert r.metric_args == ({"stderr": pytest.approx(stderr, abs=1e-6), "n": 200} if stderr else {"n": 200})
    assert got[("hellaswag", "acc")].dataset_type == "Rowan/hellaswag"
    assert got[("hellaswag", "acc")].dataset_split == "validation"
    assert got[("nextpassage_code", "acc")].dataset_type == "nextpassage_code"
    raw = yaml.safe_load(text.split("---")[1])
    entry = raw["model-index"][0]
    assert entry["name"] == "Qwen2.5-0.5B-pruned" and len(entry["results"]) == 2  # one per dataset
    # Round trip through huggingface_hub's own converters gives the same results.
    from huggingface_hub.repocard_data import eval_results_to_model_index, model_index_to_eval_results

    name, again = model_index_to_eval_results(raw["model-index"])
    assert name == entry["name"] and eval_results_to_model_index(name, again) == raw["model-index"]


def test_accuracy_only_and_invalid_accuracy() -> None:
    text = render_model_card(make_info(eval_before={}, eval_after={}, accuracy={"t": _acc(0.5)},
                                       accuracy_columns=[("dense", {"t": _acc(0.6)}), ("sparsity-30", {"t": _acc(0.5)})]))
    assert "### Accuracy" in text and "Not evaluated." not in text and "| t | 60.0 ± 3.5 | 50.0 ± 3.5 |" in text
    assert "model-index" not in render_model_card(make_info())  # no accuracy, no model-index
    no_errors = {"acc": 0.5, "n": 10}  # results without a standard error show the accuracy alone
    text = render_model_card(make_info(accuracy={"t": no_errors}, accuracy_columns=[("sparsity-30", {"t": no_errors})],
                                       calibration={"domains": {"code": 1.0}, "num_samples": 32, "seq_len": 128}))
    assert "| t | 50.0 |" in text and "| **mean** | **50.0** |" in text and "calibrated on one domain, code, 32 windows of 128 tokens" in " ".join(
        text.split())
    with pytest.raises(ModelCardError, match=r"accuracy\['t'\]"):
        render_model_card(make_info(accuracy={"t": {"acc": 1.5}}))
