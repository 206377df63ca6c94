"""PrunedQwen2ForCausalLM behaves like any Qwen2 model: caching, generate, attention backends, training, dtypes."""

from __future__ import annotations

import pytest
import torch
from conftest import CACHE_KWARG, tiny_qwen2
from transformers import DynamicCache

from hf_prune import PruningPlan, apply_plan

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
def pruned():
    return apply_plan(tiny_qwen2(seed=3), PruningPlan.from_dict(PLAN))


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


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_cached_generate_equals_uncached_decoding(pruned, attn):
    pruned.set_attn_implementation(attn)
    ids, mask = left_padded_batch()
    generated = pruned.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False,
                                pad_token_id=0, eos_token_id=None)
    assert torch.equal(generated, uncached_greedy(pruned, ids, mask, 12))


def test_cache_gives_attention_free_layers_a_dummy_layer(pruned):
    ids, mask = left_padded_batch()
    for cache in (None, DynamicCache(), DynamicCache(config=pruned.config)):
        out = pruned(input_ids=ids, attention_mask=mask, use_cache=True, **{CACHE_KWARG: cache})
        cache = getattr(out, CACHE_KWARG)
        assert type(cache.layers[0]).__name__ == "DummyLayer"
        assert cache.get_seq_length() == ids.shape[1]
        # The KV cache of layer 3 holds only its 2 kept KV heads.
        assert cache.layers[3].keys.shape[1] == 2


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


def test_gradient_checkpointing_and_backward(pruned):
    ids, _ = left_padded_batch()
    pruned.train()
    loss_plain = pruned(input_ids=ids, labels=ids, use_cache=False).loss
    loss_plain.backward()
    grads = {n: p.grad.clone() for n, p in pruned.named_parameters()}
    pruned.zero_grad()
    pruned.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
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


def test_model_sets_every_attribute_the_stock_qwen2_model_sets():
    # PrunedQwen2Model cannot run Qwen2Model.__init__ (it builds layers from global sizes); it must still set
    # everything that __init__ sets in the installed transformers, or inherited methods could miss an attribute.
    from conftest import tiny_qwen2_config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2ForCausalLM, Qwen2Model

    from hf_prune import PrunedQwen2Config, PrunedQwen2ForCausalLM, PrunedQwen2Model

    config = tiny_qwen2_config()
    data = {k: v for k, v in config.to_dict().items() if k not in ("model_type", "transformers_version")}
    pruned = PrunedQwen2ForCausalLM(PrunedQwen2Config(**data))  # built the same way as the stock ones
    for stock, ours in ((Qwen2Model(config), pruned.model), (Qwen2ForCausalLM(config), pruned)):
        missing = set(vars(stock)) - set(vars(ours))
        assert not missing, f"{type(ours).__name__} lacks {sorted(missing)}"
        assert set(stock._modules) <= set(ours._modules)
    assert isinstance(pruned, PrunedQwen2ForCausalLM) and isinstance(pruned.model, PrunedQwen2Model)
