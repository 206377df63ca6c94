"""Pruned Qwen2 / Qwen3 models behave like the stock ones: caching, generate, attention backends, training, dtypes.

Every test runs on both families (the ``family`` fixture)."""

from __future__ import annotations

import pytest
import torch
from conftest import CACHE_KWARG, pruned_classes, tiny_causal_lm
from transformers import DynamicCache

from hf_prune import PruningPlan, apply_plan
from hf_prune.compat import enable_activation_checkpointing

# The modeling files ship in every checkpoint and run on the user's transformers: a deprecation is a failure.
pytestmark = pytest.mark.filterwarnings("error::FutureWarning", "error::DeprecationWarning")

# Layer 0 attention-free (the cache trap), layer 2 MLP-free, the rest pruned unevenly.
PLAN = {"layers": [
    {"query_heads": [], "mlp_channels": list(range(0, 96, 2))},
    {"query_heads": [4, 5, 6, 7]},
    {"query_heads": [0, 3, 5, 6], "mlp_channels": []},
    {"query_heads": [1, 6], "mlp_channels": list(range(30))},
]}


@pytest.fixture
def pruned(family):
    return apply_plan(tiny_causal_lm(family, seed=3), PruningPlan.from_dict(PLAN))


def left_padded_batch():
    ids = torch.tensor([[0, 0, 0, 17, 23, 44, 9], [5, 81, 33, 12, 64, 70, 101]])
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]])
    return ids, mask


def uncached_greedy(model, ids, mask, steps):
    """Reference decoding: the full sequence through the model at every step, no cache."""
    for _ in range(steps):
        position_ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False).logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
    return ids


# Where the attention-free layers sit (4 layers): the cache must not depend on which layer comes first.
ATTENTION_FREE = {"first": [0], "middle": [1, 2], "last": [3], "all_but_one": [0, 1, 3]}


def attention_free_plan(layers: list[int]) -> PruningPlan:
    return PruningPlan.from_dict({"layers": [
        {"query_heads": [] if i in layers else [0, 1, 4, 6], "mlp_channels": list(range(0, 96, 3))} for i in range(4)
    ]})


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("where", ["plan", *ATTENTION_FREE])
def test_cached_generate_equals_uncached_decoding(family, pruned, attn, where):
    model = pruned if where == "plan" else apply_plan(tiny_causal_lm(family, seed=3),
                                                      attention_free_plan(ATTENTION_FREE[where]))
    model.set_attn_implementation(attn)
    ids, mask = left_padded_batch()
    generated = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                               pad_token_id=0, eos_token_id=None)
    assert torch.equal(generated, uncached_greedy(model, ids, mask, 12))


@pytest.mark.parametrize("where", list(ATTENTION_FREE))
def test_continuing_from_a_cache_equals_the_uncached_forward(family, where):
    # Prefill, then feed the next tokens with the cache and no positions: positions and masks come from the cache.
    model = apply_plan(tiny_causal_lm(family, seed=5), attention_free_plan(ATTENTION_FREE[where]))
    ids, mask = left_padded_batch()
    more = torch.tensor([[7, 8, 9], [10, 11, 12]])
    full_ids, full_mask = torch.cat([ids, more], 1), torch.cat([mask, torch.ones_like(more)], 1)
    positions = (full_mask.cumsum(-1) - 1).masked_fill(full_mask == 0, 0)
    with torch.no_grad():
        reference = model(input_ids=full_ids, attention_mask=full_mask, position_ids=positions, use_cache=False).logits
        first = model(input_ids=ids, attention_mask=mask, position_ids=positions[:, :7], use_cache=True)
        cache = getattr(first, CACHE_KWARG)
        # Unpadded rows need no positions: the cache's length gives them.
        rest = model(input_ids=more[1:], attention_mask=full_mask[1:], **{CACHE_KWARG: _row(cache, 1)}).logits
        padded = model(input_ids=more[:1], attention_mask=full_mask[:1], position_ids=positions[:1, 7:],
                       **{CACHE_KWARG: _row(cache, 0)}).logits
    torch.testing.assert_close(rest[0], reference[1, 7:], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(padded[0], reference[0, 7:], rtol=1e-4, atol=1e-5)


def _row(cache: DynamicCache, row: int) -> DynamicCache:
    """A one-row copy of a cache (the documented `batch_select_indices`)."""
    import copy

    single = copy.deepcopy(cache)
    single.batch_select_indices(torch.tensor([row]))
    return single


def test_attention_modules_keep_their_position_in_the_stack(pruned):
    # Serving stacks (vLLM's and SGLang's Transformers backends) find a layer's KV cache by `self_attn.layer_idx`, as
    # in stock Qwen2 where it is the layer's position; the compact cache numbering must not leak into it.
    assert [(i, layer.self_attn.layer_idx) for i, layer in enumerate(pruned.model.layers) if layer.self_attn] == [
        (1, 1), (2, 2), (3, 3)]
    assert [layer.cache_index for layer in pruned.model.layers] == [None, 0, 1, 2]


def test_the_cache_holds_exactly_the_layers_with_attention(pruned):
    # PLAN: layer 0 has no attention; layers 1, 2, 3 keep 1, 2 and 2 KV heads (of 2).
    ids, mask = left_padded_batch()
    for given in (None, DynamicCache(), DynamicCache(config=pruned.config)):
        out = pruned(input_ids=ids, attention_mask=mask, use_cache=True, **{CACHE_KWARG: given})
        cache = getattr(out, CACHE_KWARG)
        assert given is None or cache is given
        filled = [layer for layer in cache.layers if getattr(layer, "keys", None) is not None and layer.keys.numel()]
        assert [layer.keys.shape[1] for layer in filled] == [1, 2, 2]
        assert cache.get_seq_length() == ids.shape[1]


def test_switching_attention_implementation_reaches_every_layer(pruned):
    ids, mask = left_padded_batch()
    pruned.set_attn_implementation("eager")
    with torch.no_grad():
        eager = pruned(input_ids=ids, attention_mask=mask, output_attentions=True)
    # output_attentions is only filled by the eager kernel: every attention layer must report weights.
    assert len(eager.attentions) == 3
    pruned.set_attn_implementation("sdpa")
    assert all(l.self_attn.config._attn_implementation == "sdpa" for l in pruned.model.layers if l.self_attn)
    with torch.no_grad():
        sdpa = pruned(input_ids=ids, attention_mask=mask)
    valid = mask.bool()
    torch.testing.assert_close(sdpa.logits[valid], eager.logits[valid], rtol=1e-4, atol=1e-4)


def test_hidden_states_are_returned_for_every_layer(pruned):
    ids, _ = left_padded_batch()
    out = pruned(input_ids=ids, output_hidden_states=True)
    assert len(out.hidden_states) == 5  # embeddings + 4 layers


@pytest.mark.parametrize("return_dict", [True, False])
def test_outputs_equal_the_stock_model_for_a_keep_everything_plan(family, return_dict):
    # hidden_states, attentions, logits and the returned cache, as transformers' own Qwen2/3ForCausalLM gives them.
    stock = tiny_causal_lm(family, seed=7)
    ours = apply_plan(stock, PruningPlan.from_dict({"layers": [{}] * 4}))
    for model in (stock, ours):
        model.set_attn_implementation("eager")
    ids, mask = left_padded_batch()
    with torch.no_grad():
        ref, out = (m(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True,
                      use_cache=True, return_dict=return_dict) for m in (stock, ours))
    if not return_dict:
        assert isinstance(out, tuple) and len(out) == len(ref)
        ref, out = dict(zip(("logits", "cache", "hidden_states", "attentions"), ref)), \
            dict(zip(("logits", "cache", "hidden_states", "attentions"), out))
    else:
        ref, out = {**ref, "cache": getattr(ref, CACHE_KWARG)}, {**out, "cache": getattr(out, CACHE_KWARG)}
    torch.testing.assert_close(out["logits"], ref["logits"], rtol=1e-5, atol=1e-5)
    for name in ("hidden_states", "attentions"):
        assert len(out[name]) == len(ref[name]) == (5 if name == "hidden_states" else 4)
        for a, b in zip(out[name], ref[name]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert out["cache"].get_seq_length() == ref["cache"].get_seq_length() == ids.shape[1]


def test_gradient_checkpointing_and_backward(pruned):
    ids, _ = left_padded_batch()
    pruned.train()
    loss_plain = pruned(input_ids=ids, labels=ids, use_cache=False).loss
    loss_plain.backward()
    grads = {n: p.grad.clone() for n, p in pruned.named_parameters()}
    pruned.zero_grad()
    enable_activation_checkpointing(pruned)  # under the installed transformers' name
    loss_ckpt = pruned(input_ids=ids, labels=ids, use_cache=False).loss
    loss_ckpt.backward()
    assert torch.allclose(loss_plain, loss_ckpt)
    for name, param in pruned.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, grads[name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_tracks_fp32(pruned, dtype):
    ids, _ = left_padded_batch()
    with torch.no_grad():
        ref = pruned(input_ids=ids).logits
        half = pruned.to(dtype)(input_ids=ids).logits
    assert half.dtype == dtype
    assert (half.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_model_sets_every_attribute_the_stock_model_sets(family):
    # PrunedXModel cannot run XModel.__init__ (it builds layers from global sizes); it must still set everything
    # that __init__ sets in the installed transformers, or inherited methods could miss an attribute.
    stock = tiny_causal_lm(family)  # Qwen2ForCausalLM / Qwen3ForCausalLM
    causal_lm, model, pruned_config = pruned_classes(family)
    data = {k: v for k, v in stock.config.to_dict().items() if k not in ("model_type", "transformers_version")}
    pruned = causal_lm(pruned_config(**data))  # built the same way as the stock ones
    for stock, ours in ((stock.model, pruned.model), (stock, pruned)):
        missing = set(vars(stock)) - set(vars(ours))
        assert not missing, f"{type(ours).__name__} lacks {sorted(missing)}"
        assert set(stock._modules) <= set(ours._modules)
    assert type(pruned.model) is model
    assert set(pruned._no_split_modules) == {f"{model.__name__.removesuffix('Model')}DecoderLayer"}
