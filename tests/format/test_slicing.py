"""apply_plan: sliced models compute what the original computes with the removed structures masked out."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from conftest import head_dim, pruned_classes, tiny_causal_lm, tiny_qwen2
from transformers import LlamaConfig, LlamaForCausalLM

from hf_prune import PruningPlan, apply_plan
from hf_prune.errors import ConfigMismatchError, InvalidPlanError, NotUniformError, UnsupportedModelError
from hf_prune.format import to_qwen2
from hf_prune.modeling import PrunedQwen2ForCausalLM

# The modeling files ship in every checkpoint and run on the user's transformers: a deprecation is a failure.
pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

INPUT = torch.randint(3, 128, (2, 11), generator=torch.Generator().manual_seed(1))


def masked_reference(model, plan_dict):
    """The original model with removed heads and channels zeroed in the output projections.

    Built independently of the slicing code: a removed query head's o_proj columns and a removed channel's
    down_proj column are set to 0, so the structure contributes nothing; KV heads and biases are left alone.
    """
    ref = copy.deepcopy(model)
    dim = head_dim(model.config)  # read from the config (Qwen3: not hidden_size / heads)
    with torch.no_grad():
        for layer, keep in zip(ref.model.layers, plan_dict["layers"]):
            heads = keep.get("query_heads")
            if heads is not None:
                for h in range(model.config.num_attention_heads):
                    if h not in heads:
                        layer.self_attn.o_proj.weight[:, h * dim:(h + 1) * dim] = 0
            channels = keep.get("mlp_channels")
            if channels is not None:
                for c in range(model.config.intermediate_size):
                    if c not in channels:
                        layer.mlp.down_proj.weight[:, c] = 0
    return ref


def random_plan(seed, num_layers=4, heads=8, groups=2, width=96):
    rng = random.Random(seed)
    layers = []
    for _ in range(num_layers):
        per_group = rng.choice([0, 1, 2, 4])
        kept_groups = rng.sample(range(groups), rng.randint(1, groups)) if per_group else []
        q = [g * (heads // groups) + i for g in kept_groups for i in rng.sample(range(heads // groups), per_group)]
        c = rng.sample(range(width), rng.choice([0, 1, 17, 64, width]))
        layers.append({"query_heads": q, "mlp_channels": c})
    return {"layers": layers}


def test_keep_everything_matches_the_stock_model(family):
    model = tiny_causal_lm(family)
    pruned = apply_plan(model, PruningPlan.from_dict({"layers": [{}] * 4}))
    assert type(pruned) is pruned_classes(family)[0] and pruned.config.model_type == f"pruned_{family}"
    assert head_dim(pruned.config) == head_dim(model.config)
    with torch.no_grad():
        diff = (pruned(INPUT).logits - model(INPUT).logits).abs().max().item()
    assert diff <= 1e-5


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("tied", [False, True])
def test_any_plan_matches_masked_original(family, seed, tied):
    model = tiny_causal_lm(family, seed=seed, tie_word_embeddings=tied)
    plan_dict = random_plan(seed)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned = apply_plan(model, PruningPlan.from_dict(plan_dict))
    ref = masked_reference(model, plan_dict)
    with torch.no_grad():
        diff = (pruned(INPUT).logits - ref(INPUT).logits).abs().max().item()
    assert diff <= 1e-4, plan_dict
    # The original is untouched, and shares no storage with the result.
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert not any(p.data_ptr() in ptrs for p in pruned.parameters())


def test_slicing_shrinks_weights_and_kv_heads(tiny_model):
    plan = PruningPlan.from_dict({"layers": [
        {"query_heads": [], "mlp_channels": [0, 1]},          # attention removed
        {"query_heads": [5, 4, 7, 6]},                        # KV group 0 removed
        {"mlp_channels": []},                                 # MLP removed
        {"query_heads": [0, 4]},                              # one query head per KV head
    ]})
    pruned = apply_plan(tiny_model, plan)
    layers = pruned.model.layers
    assert layers[0].self_attn is None and layers[0].input_layernorm is None
    assert layers[0].mlp.down_proj.weight.shape == (64, 2)
    assert layers[1].self_attn.k_proj.weight.shape == (8, 64)  # one KV head of head_dim 8
    assert layers[1].self_attn.num_key_value_groups == 4
    assert layers[2].mlp is None and layers[2].post_attention_layernorm is None
    assert layers[3].self_attn.q_proj.weight.shape == (16, 64)
    assert layers[3].self_attn.num_key_value_groups == 1
    state = pruned.state_dict()
    assert not any(k.startswith(("model.layers.0.self_attn", "model.layers.0.input_layernorm")) for k in state)
    assert not any(k.startswith(("model.layers.2.mlp", "model.layers.2.post_attention")) for k in state)
    # Query heads 5, 4 re-grouped under their KV head (1): the sliced k_proj is the original KV head 1.
    head_dim = 8
    torch.testing.assert_close(layers[1].self_attn.k_proj.weight,
                               tiny_model.model.layers[1].self_attn.k_proj.weight[head_dim:2 * head_dim])


def test_pruning_a_pruned_model_equals_composed_plan(tiny_model):
    shapes_plan = PruningPlan.from_dict({"layers": [{"query_heads": [0, 1, 4, 5], "mlp_channels": list(range(0, 96, 3))}] * 4})
    first = apply_plan(tiny_model, shapes_plan)
    second_plan = PruningPlan.from_dict({"layers": [{"query_heads": [1, 3], "mlp_channels": [0, 5, 9]}] * 4})
    twice = apply_plan(first, second_plan)
    from hf_prune.format.geometry import layer_shapes

    composed = shapes_plan.explicit(layer_shapes(tiny_model)).compose(second_plan.explicit(layer_shapes(first)))
    once = apply_plan(tiny_model, composed)
    with torch.no_grad():
        torch.testing.assert_close(twice(INPUT).logits, once(INPUT).logits, rtol=0, atol=1e-6)


def test_uniform_plan_exports_as_stock_qwen2(tiny_model):
    plan = PruningPlan.from_dict({"layers": [{"query_heads": [2, 3, 6, 7], "mlp_channels": list(range(40))}] * 4})
    pruned = apply_plan(tiny_model, plan)
    stock = to_qwen2(pruned)
    assert type(stock).__name__ == "Qwen2ForCausalLM"
    assert stock.config.model_type == "qwen2" and stock.config.head_dim == 8
    assert stock.config.num_attention_heads == 4 and stock.config.intermediate_size == 40
    with torch.no_grad():
        torch.testing.assert_close(stock(INPUT).logits, pruned(INPUT).logits, rtol=0, atol=1e-6)
    with pytest.raises(NotUniformError, match="one shape"):
        to_qwen2(apply_plan(tiny_model, PruningPlan.from_dict({"layers": [{"mlp_channels": [1]}, {}, {}, {}]})))


def test_bad_inputs_raise_specific_errors(tiny_model):
    with pytest.raises(InvalidPlanError, match="Layer 2: query_heads"):
        apply_plan(tiny_model, PruningPlan.from_dict({"layers": [{}, {}, {"query_heads": [9]}, {}]}))
    with pytest.raises(InvalidPlanError, match="Layer 1: every kept KV head"):
        apply_plan(tiny_model, PruningPlan.from_dict({"layers": [{}, {"query_heads": [0, 4, 5]}, {}, {}]}))
    with pytest.raises(InvalidPlanError, match="2 layers but the model has 4"):
        apply_plan(tiny_model, PruningPlan.from_dict({"layers": [{}, {}]}))
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1))
    with pytest.raises(UnsupportedModelError, match="llama_to_qwen2"):
        apply_plan(llama, PruningPlan.from_dict({"layers": [{}]}))
    with pytest.raises(UnsupportedModelError):
        apply_plan(torch.nn.Linear(2, 2), PruningPlan.from_dict({"layers": [{}]}))
    broken = tiny_qwen2()
    broken.model.layers[3].mlp.gate_proj = torch.nn.Linear(64, 50, bias=False)
    with pytest.raises(ConfigMismatchError, match="Layer 3"):
        apply_plan(broken, PruningPlan.from_dict({"layers": [{}] * 4}))


def test_llama_conversion_is_exact():
    from hf_prune.format import llama_to_qwen2

    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).eval()
    qwen = llama_to_qwen2(llama)
    x = torch.randint(0, 64, (1, 9))
    with torch.no_grad():
        assert (qwen(x).logits - llama(x).logits).abs().max().item() == 0.0
