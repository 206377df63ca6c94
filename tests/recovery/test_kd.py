"""Cheaper distillation: the chunked objective against a direct computation, the sparse (top-k) teacher against the
full one and against the KL of its k + 1 buckets, the teacher run once per window, and no fp32 vocabulary-sized
tensor kept for the backward pass."""

from __future__ import annotations

import pytest
import torch

from hf_prune.recovery import recover
from hf_prune.recovery.losses import SparseTeacher, kd_loss, token_losses
from test_recovery import SEQ, _kl, _options, _pair, _tokens
from test_recovery import one_thread  # noqa: F401 (autouse: one thread)

N, V = 37, 50


def _logits(seed: int) -> torch.Tensor:
    return 3 * torch.randn(N, V, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _grad(fn, x: torch.Tensor) -> tuple[float, torch.Tensor]:
    x = x.float().clone().requires_grad_()
    value = fn(x)
    value.backward()
    return float(value.detach()), x.grad


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_losses_equal_a_direct_double_precision_computation(temperature):
    s, t = _logits(0), _logits(1)
    targets = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(2))
    p, logq = torch.softmax(t / temperature, -1), torch.log_softmax(s / temperature, -1)
    kl = (p * (p.log() - logq)).sum(-1).mean() * temperature**2
    ce = torch.nn.functional.cross_entropy(s, targets)
    # several chunks of 5 rows (chunk_elements = 5 x vocabulary), through checkpointed chunks in the backward pass
    got_ce, got_kl = token_losses(s.float(), targets, t.float(), temperature, chunk_elements=5 * V)
    assert float(got_ce) == pytest.approx(float(ce), rel=1e-5) and float(got_kl) == pytest.approx(float(kl), rel=1e-5)
    # gradients: against autograd through the double-precision formula
    sd = s.clone().requires_grad_()
    (torch.nn.functional.cross_entropy(sd, targets) + (p * (p.log() - torch.log_softmax(sd / temperature, -1))).sum(
        -1).mean() * temperature**2).backward()
    _, grad = _grad(lambda x: sum(token_losses(x, targets, t.float(), temperature, chunk_elements=5 * V)), s)
    torch.testing.assert_close(grad.double(), sd.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_sparse_kd_with_k_the_vocabulary_is_full_kd(temperature):
    s, t = _logits(0), _logits(1)
    full = SparseTeacher.from_logits(t.float(), V, temperature)
    assert torch.equal(full.rest, torch.zeros(N))  # nothing outside: exactly
    dense_value, dense_grad = _grad(lambda x: kd_loss(x, t.float(), temperature, chunk_elements=7 * V), s)
    sparse_value, sparse_grad = _grad(lambda x: kd_loss(x, full, temperature, chunk_elements=7 * V), s)
    assert sparse_value == pytest.approx(dense_value, rel=1e-5)
    torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_sparse_kd_is_the_kl_of_the_top_k_and_the_rest(k):
    """Against the KL of the (k + 1)-bucket distributions, built here from the two softmaxes in double precision."""
    s, t = _logits(0), _logits(1)
    sparse = SparseTeacher.from_logits(t.float(), k)
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    top = p.topk(k, -1).indices
    assert torch.equal(sparse.indices.long().sort(-1).values, top.sort(-1).values)
    pk, qk = p.gather(-1, top), q.gather(-1, top)
    P = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
    Q = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
    buckets = float((P * (P.log() - Q.log())).sum(-1).mean())
    assert float(kd_loss(s.float(), sparse)) == pytest.approx(buckets, rel=1e-4)
    assert buckets <= float((p * (p.log() - q.log())).sum(-1).mean())  # coarser buckets: never above the full KL


def test_no_fp32_vocabulary_sized_tensor_is_kept_for_the_backward_pass():
    """bf16 logits: what autograd saves for the objective is the logits themselves, never an fp32 copy of them."""
    s = _logits(0).to(torch.bfloat16).requires_grad_()
    sparse = SparseTeacher.from_logits(_logits(1).float(), 8)
    saved = []

    def pack(x):
        saved.append((x.dtype, x.numel()))
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        ce, kl = token_losses(s, torch.zeros(N, dtype=torch.long), sparse, chunk_elements=5 * V)
    (ce + kl).backward()
    assert s.grad is not None and torch.isfinite(s.grad.float()).all()
    assert not [n for dtype, n in saved if dtype == torch.float32 and n >= 5 * V]  # not even one chunk's worth


class _Counter:
    """Counts the windows a model's forward pass sees."""

    def __init__(self, model):
        self.windows = 0
        self.handle = model.register_forward_pre_hook(self.count, with_kwargs=True)

    def count(self, module, args, kwargs):
        self.windows += kwargs["input_ids"].shape[0]


def test_teacher_runs_once_per_window_and_its_cache_serves_another_level():
    teacher, student = _pair()
    data = _tokens(16, seed=5)
    options = _options(tokens=32 * SEQ, kd_top_k=16)  # 4 steps over 16 windows: every window twice
    counter = _Counter(teacher)
    before = _kl(student, teacher, data)
    counter.windows = 0
    result = recover(student, teacher, None, data, options, show_progress=False)
    assert counter.windows == 16 and result.teacher_cache.teacher_passes == 16  # once per window, not per use
    assert _kl(student, teacher, data) < 0.9 * before
    # Another level on the same windows: no teacher needed, the same training as with it.
    _, again = _pair()
    counter.windows = 0
    reused = recover(again, None, None, data, options, show_progress=False, teacher_cache=result.teacher_cache)
    assert counter.windows == 0 and reused.teacher_cache is result.teacher_cache
    for name, value in again.state_dict().items():
        torch.testing.assert_close(value, student.state_dict()[name], msg=name)


def test_cached_top_k_at_the_vocabulary_trains_like_the_teacher_run_every_step():
    teacher, cached = _pair()
    _, live = _pair()
    data = _tokens(24, seed=5)
    recover(cached, teacher, None, data, _options(tokens=24 * SEQ, kd_top_k=128), show_progress=False)
    recover(live, teacher, None, data, _options(tokens=24 * SEQ, kd_top_k=0), show_progress=False)
    for name, value in cached.state_dict().items():
        torch.testing.assert_close(value, live.state_dict()[name], rtol=1e-4, atol=1e-5, msg=name)
