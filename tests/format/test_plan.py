"""PruningPlan: JSON shape, validation against a model, composition."""

from __future__ import annotations

import json

import pytest

from hf_prune import PruningPlan
from hf_prune.errors import InvalidPlanError
from hf_prune.format.plan import LayerShape

# The modeling files ship in every checkpoint and run on the user's transformers: a deprecation is a failure.
pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

SHAPES = [LayerShape(8, 2, 16)] * 2  # 8 query heads in 2 KV groups of 4, MLP width 16


def test_dict_and_file_round_trip(tmp_path):
    data = {"base_model": "some/model", "layers": [{"query_heads": [0, 1, 4, 5], "mlp_channels": [3, 1]},
                                                    {"query_heads": [], "mlp_channels": [], "note": "x"}]}
    plan = PruningPlan.from_dict(data)
    assert plan.to_dict() == data
    plan.save(tmp_path / "plan.json")
    assert json.loads((tmp_path / "plan.json").read_text()) == data
    assert PruningPlan.load(tmp_path / "plan.json").to_dict() == data


def test_resolve_derives_kv_heads_and_sorts():
    plan = PruningPlan.from_dict({"layers": [{"query_heads": [7, 1, 0, 6], "mlp_channels": [5, 2]}, {}]})
    first, second = plan.resolve(SHAPES)
    assert first.query_heads == [0, 1, 6, 7]
    assert first.kv_heads == [0, 1]
    assert first.mlp_channels == [2, 5]
    assert second.query_heads == list(range(8)) and second.kv_heads == [0, 1] and len(second.mlp_channels) == 16
    # A KV group disappears when all its query heads go.
    only_second_group = PruningPlan.from_dict({"layers": [{"query_heads": [4, 6]}, {}]}).resolve(SHAPES)[0]
    assert only_second_group.kv_heads == [1]


@pytest.mark.parametrize(
    "layer0, message",
    [
        ({"query_heads": [8]}, r"Layer 0: query_heads \[8\] out of range \[0, 8\)"),
        ({"query_heads": [-1]}, "Layer 0: query_heads"),
        ({"mlp_channels": [3, 3]}, r"Layer 0: mlp_channels lists \[3\] more than once"),
        ({"query_heads": [0, 1, 4]}, "Layer 0: every kept KV head must keep the same number of query heads"),
        ({"query_heads": [0, 1], "kv_heads": [0, 1]}, "Layer 0: kv_heads"),
        ({"query_heads": ["0"]}, "Layer 0: query_heads must contain only integers"),
        ({"mlp_channels": 3}, "Layer 0: mlp_channels must be a list"),
    ],
)
def test_bad_plans_name_the_layer(layer0, message):
    with pytest.raises(InvalidPlanError, match=message):
        PruningPlan.from_dict({"layers": [layer0, {}]}).resolve(SHAPES)


def test_wrong_layer_count():
    with pytest.raises(InvalidPlanError, match="3 layers but the model has 2"):
        PruningPlan.from_dict({"layers": [{}, {}, {}]}).resolve(SHAPES)
    with pytest.raises(InvalidPlanError, match="layers"):
        PruningPlan.from_dict({"heads": []})


def test_compose_maps_back_to_original_indices():
    first = PruningPlan.from_dict({"layers": [{"query_heads": [0, 1, 2, 4, 5, 6], "mlp_channels": [1, 3, 5, 7, 9]}, {}]})
    first = first.explicit(SHAPES)
    after_first = [LayerShape(6, 2, 5), SHAPES[1]]
    second = PruningPlan.from_dict({"layers": [{"query_heads": [3, 4], "mlp_channels": [0, 4]}, {"mlp_channels": []}]})
    second = second.explicit(after_first)
    combined = first.compose(second).resolve(SHAPES)
    assert combined[0].query_heads == [4, 5] and combined[0].kv_heads == [1]
    assert combined[0].mlp_channels == [1, 9]
    assert combined[1].mlp_channels == [] and combined[1].query_heads == list(range(8))
