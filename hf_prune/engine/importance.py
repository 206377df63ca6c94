"""Importance criteria: each scores every query head, KV head and MLP channel of a model.

Swappable pieces in the torch-pruning style: a criterion is any callable
``criterion(model, batches, objective) -> list[LayerScores]``; the classes here are the built-in ones, looked up by
name with :func:`get_importance`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch

from ..errors import PruningError
from ..format.geometry import head_dim_of
from .batches import LossRecorder, batch_progress
from .distributed import all_reduce_sums
from .objectives import Objective
from .structures import LayerScores

__all__ = [
    "Importance",
    "TaylorImportance",
    "ActivationTaylorImportance",
    "FisherImportance",
    "WandaSPImportance",
    "FlapImportance",
    "MagnitudeImportance",
    "RandomImportance",
    "get_importance",
]

Batch = Mapping[str, torch.Tensor]
_PROJ = ("q_proj", "k_proj", "v_proj", "o_proj")
_MLP = ("gate_proj", "up_proj", "down_proj")


def _acc(t: torch.Tensor) -> torch.Tensor:
    """At least fp32 for sums (bf16/fp16 would lose the small terms); float64 stays float64."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _structure_sums(model, elementwise: Callable[[torch.nn.Module, str, torch.Tensor], torch.Tensor]) -> list[LayerScores]:
    """Sum ``elementwise(module, "weight"|"bias", tensor)`` over the weights of every structure."""
    d = head_dim_of(model.config)
    scores = []
    for layer in model.model.layers:
        heads = kv = channels = None
        attn, mlp = layer.self_attn, layer.mlp
        if attn is not None:
            def rows(proj):
                s = _acc(elementwise(proj, "weight", proj.weight))
                s = s.view(-1, d, s.shape[1]).sum((1, 2))
                if proj.bias is not None:
                    s = s + _acc(elementwise(proj, "bias", proj.bias)).view(-1, d).sum(1)
                return s

            o = _acc(elementwise(attn.o_proj, "weight", attn.o_proj.weight))
            heads = rows(attn.q_proj) + o.view(o.shape[0], -1, d).sum((0, 2))
            kv = rows(attn.k_proj) + rows(attn.v_proj)
        if mlp is not None:
            channels = (
                _acc(elementwise(mlp.gate_proj, "weight", mlp.gate_proj.weight)).sum(1)
                + _acc(elementwise(mlp.up_proj, "weight", mlp.up_proj.weight)).sum(1)
                + _acc(elementwise(mlp.down_proj, "weight", mlp.down_proj.weight)).sum(0)
            )
        scores.append(LayerScores(heads, kv, channels).to(torch.float32))
    return scores


class Importance:
    """Base class: ``needs_data`` says whether calibration batches are read, ``needs_grad`` whether backward runs."""

    name = "base"
    needs_data = True
    needs_grad = False

    def __call__(self, model, batches: Iterable[Batch], objective: Objective | None = None, *,
                 show_progress: bool = True) -> list[LayerScores]:
        raise NotImplementedError


def _keep_checkpointing(model) -> None:
    """Layers with gradient checkpointing on go back to training mode: transformers checkpoints a layer only while
    it trains. Their attention dropout is 0 (checked), so the forward is the same as in eval mode."""
    if getattr(model.config, "attention_dropout", 0.0):
        return
    for layer in model.model.layers:
        if getattr(layer, "gradient_checkpointing", False):
            layer.train()


@contextlib.contextmanager
def _only_structured_grads(model) -> Iterator[list[torch.nn.Parameter]]:
    """Gradients only for the prunable projections; flags, grads and train/eval mode restored afterwards."""
    flags = {p: p.requires_grad for p in model.parameters()}
    grads = {p: p.grad for p in model.parameters()}
    was_training = model.training
    params = []
    for layer in model.model.layers:
        for block, names in ((layer.self_attn, _PROJ), (layer.mlp, _MLP)):
            if block is not None:
                for name in names:
                    params.extend(getattr(block, name).parameters())
    chosen = set(params)
    try:
        for p in model.parameters():
            p.requires_grad_(p in chosen)
            p.grad = None
        model.eval()  # Qwen2 has no dropout; eval keeps scoring deterministic
        _keep_checkpointing(model)
        yield params
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = grads[p]
        model.train(was_training)


class TaylorImportance(Importance):
    """First-order Taylor importance of the objective: ``sum over the structure of |W * g|``.

    ``g`` is the gradient of the objective averaged over the whole calibration set *before* the absolute value
    (GISP), accumulated batch by batch into fp32 buffers: no per-sample gradients are kept.
    """

    name = "taylor"
    needs_grad = True

    def __call__(self, model, batches, objective=None, *, show_progress=True):
        if objective is None:
            raise PruningError("taylor importance needs an objective")
        from .fsdp import is_sharded

        if is_sharded(model):  # FSDP2: buffers are shards of the weights (hf_prune/engine/fsdp.py)
            return self._sharded(model, batches, objective, show_progress)
        with _only_structured_grads(model) as params:
            # fp32/fp64 models accumulate in .grad directly; half precision gets fp32 buffers (bf16 sums lose the
            # small terms), each weight's gradient added in as soon as backward has produced it and then freed, so
            # the half-precision gradients of the whole model never exist at once. Buffers sit on their weight's
            # device (a model dispatched over several devices keeps each layer's on its own).
            buffers = {p: torch.zeros_like(p, dtype=torch.float32) for p in params if p.dtype in (torch.bfloat16, torch.float16)}
            handles = [p.register_post_accumulate_grad_hook(_add_into(buf)) for p, buf in buffers.items()]
            count = 0
            try:
                for batch in batch_progress(batches, "taylor scores", not show_progress):
                    size = batch["input_ids"].shape[0]
                    loss = objective(model, batch)
                    (loss * size).backward()  # loss x batch size: the gradient of the summed per-sample losses
                    count += size
            finally:
                for handle in handles:
                    handle.remove()
            sums = {p: buffers[p] if p in buffers else p.grad if p.grad is not None else torch.zeros_like(p)
                    for p in params}
            # Data parallel: every rank scored its own windows; the sums and the count are added up once here.
            count = all_reduce_sums(list(sums.values()), count)
            if count == 0:
                raise PruningError("The calibration set produced no batches.")
            for t in sums.values():
                t.div_(count)  # in place: no second copy of the buffers
            mean_grad = sums

            def elementwise(module, kind, tensor):
                return (_acc(tensor.detach()) * mean_grad[getattr(module, kind)]).abs()

            return _structure_sums(model, elementwise)

    def _sharded(self, model, batches, objective, show_progress: bool) -> list[LayerScores]:
        from .fsdp import sharded_taylor

        raw = objective.objective if isinstance(objective, LossRecorder) else objective
        with _only_structured_grads(model) as params:
            scores, self.buffer_elements = sharded_taylor(model, list(batches), objective, raw_objective=raw,
                                                          show_progress=show_progress, params=params)
        return scores


def _add_into(buffer: torch.Tensor) -> Callable[[torch.Tensor], None]:
    """A post-accumulate-grad hook that adds the weight's gradient into ``buffer`` (fp32) and frees it."""

    def hook(param: torch.Tensor) -> None:
        buffer.add_(param.grad)
        param.grad = None

    return hook


class _OutputGradients:
    """Per-column sums over tokens of ``x * dL/dx``: ``x`` an o_proj / down_proj input or a k_proj / v_proj output.

    A forward hook registers a gradient hook on the tensor; the sum over the batch's tokens is added into an fp32
    vector of the tensor's width when backward reaches it. Only those vectors are kept across batches.
    """

    def __init__(self, model) -> None:
        self.sums: dict[torch.nn.Module, torch.Tensor] = {}
        self.handles = []
        for layer in model.model.layers:
            if layer.self_attn is not None:
                attn = layer.self_attn
                self.handles.append(attn.o_proj.register_forward_pre_hook(lambda m, args: self._watch(m, args[0])))
                for proj in (attn.k_proj, attn.v_proj):
                    self.handles.append(proj.register_forward_hook(lambda m, args, out: self._watch(m, out)))
            if layer.mlp is not None:
                self.handles.append(layer.mlp.down_proj.register_forward_pre_hook(lambda m, args: self._watch(m, args[0])))

    def _watch(self, module: torch.nn.Module, x: torch.Tensor) -> None:
        if not x.requires_grad:
            return
        kept = x.detach()

        def add(grad: torch.Tensor) -> None:
            column = (_acc(kept) * _acc(grad)).reshape(-1, kept.shape[-1]).sum(0)
            self.sums[module] = self.sums[module] + column if module in self.sums else column

        x.register_hook(add)

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class ActivationTaylorImportance(Importance):
    """First-order Taylor of removing each structure's *output*: ``|sum over tokens of x * dL/dx|``.

    ``x`` is what the structure contributes: a query head's slice of the o_proj input, an MLP channel's
    down_proj input, a KV head's k and v outputs (added to its query heads' when a whole group is priced).
    Collected with hooks during backward; no weight gets a gradient, so no score buffer per weight is kept (the
    memory plan drops the fp32 buffers: about 4 bytes per prunable parameter). Signed sums are averaged over
    the calibration set before the absolute value, as for ``taylor``.
    """

    name = "activation-taylor"
    needs_grad = True
    #: The gradient hooks sit on the forward's tensors; a checkpointed layer's recomputed ones would miss them.
    supports_checkpointing = False

    def __call__(self, model, batches, objective=None, *, show_progress=True):
        if objective is None:
            raise PruningError("activation-taylor importance needs an objective")
        flags = {p: p.requires_grad for p in model.parameters()}
        was_training = model.training
        # No weight needs a gradient: backward runs because the embeddings' output is made to require one.
        embed = model.get_input_embeddings().register_forward_hook(lambda m, args, out: out.requires_grad_(True))
        watch = _OutputGradients(model)
        count = 0
        try:
            for p in model.parameters():
                p.requires_grad_(False)
            model.eval()
            for batch in batch_progress(batches, "activation-taylor scores", not show_progress):
                size = batch["input_ids"].shape[0]
                (objective(model, batch) * size).backward()
                count += size
        finally:
            embed.remove()
            watch.remove()
            for p, flag in flags.items():
                p.requires_grad_(flag)
            model.train(was_training)
        return self._scores(model, watch.sums, count)

    def _scores(self, model, sums: dict, count: int) -> list[LayerScores]:
        d = head_dim_of(model.config)
        modules = [m for layer in model.model.layers for m in ((layer.self_attn.o_proj, layer.self_attn.k_proj,
                   layer.self_attn.v_proj) if layer.self_attn is not None else ()) + ((layer.mlp.down_proj,)
                   if layer.mlp is not None else ())]
        for layer in model.model.layers:  # a rank without batches still takes part in the reduction
            if layer.self_attn is not None:
                a = layer.self_attn
                for m, width in ((a.o_proj, a.o_proj.in_features), (a.k_proj, a.k_proj.out_features),
                                 (a.v_proj, a.v_proj.out_features)):
                    sums.setdefault(m, torch.zeros(width, device=m.weight.device))
            if layer.mlp is not None:
                sums.setdefault(layer.mlp.down_proj, torch.zeros(layer.mlp.down_proj.in_features,
                                                                 device=layer.mlp.down_proj.weight.device))
        count = all_reduce_sums([sums[m] for m in modules], count)
        if count == 0:
            raise PruningError("The calibration set produced no batches.")
        out = []
        for layer in model.model.layers:
            heads = kv = channels = None
            if layer.self_attn is not None:
                a = layer.self_attn
                heads = (sums[a.o_proj] / count).view(-1, d).sum(1).abs()
                kv = ((sums[a.k_proj] + sums[a.v_proj]) / count).view(-1, d).sum(1).abs()
            if layer.mlp is not None:
                channels = (sums[layer.mlp.down_proj] / count).abs()
            out.append(LayerScores(heads, kv, channels).to(torch.float32))
        return out


def _split(batch: Batch, size: int) -> Iterator[Batch]:
    """Row chunks of ``batch``: tensors whose first dimension is the batch size are sliced, others passed whole."""
    rows = batch["input_ids"].shape[0]
    for start in range(0, rows, size):
        yield {k: v[start:start + size] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == rows else v
               for k, v in batch.items()}


class FisherImportance(Importance):
    """Second-order importance from the empirical Fisher: ``1/2 * mean over samples of (sum over the structure of
    W * g_i)^2``.

    ``sum W * g_i`` is sample ``i``'s derivative of its loss with respect to scaling the structure, so the score
    is the Fisher estimate of the loss increase when the structure is removed (Kwon et al. 2022), with no
    first-order term: it stays informative where the averaged gradient of a well-trained model cancels out.
    Samples are back-propagated in groups of ``group_size`` rows; only per-structure sums are kept, never
    per-sample gradients. Costs more than ``taylor`` (a backward per group instead of per batch).
    """

    name = "fisher"
    needs_grad = True

    def __init__(self, group_size: int = 1):
        if group_size < 1:
            raise PruningError(f"group_size must be >= 1, got {group_size}.")
        self.group_size = group_size

    def __call__(self, model, batches, objective=None, *, show_progress=True):
        if objective is None:
            raise PruningError("fisher importance needs an objective")

        def signed(module, kind, tensor):
            return _acc(tensor.detach()) * _acc(getattr(module, kind).grad)

        with _only_structured_grads(model) as params:
            totals: list[LayerScores] | None = None
            count = 0
            for batch in batch_progress(batches, "fisher scores", not show_progress):
                for group in _split(batch, self.group_size):
                    objective(model, group).backward()
                    squares = [s.map(torch.square) for s in _structure_sums(model, signed)]
                    totals = squares if totals is None else [t.map(torch.add, q) for t, q in zip(totals, squares)]
                    count += 1
                    for p in params:
                        p.grad = None
            if totals is None:  # a rank without batches still takes part in the reduction
                totals = [s.map(torch.zeros_like) for s in _structure_sums(model, lambda m, k, t: torch.zeros_like(t))]
            count = all_reduce_sums([t for s in totals for t in (s.query_heads, s.kv_heads, s.mlp_channels)
                                     if t is not None], count)
            if count == 0:
                raise PruningError("The calibration set produced no batches.")
            return [t.map(lambda x: x / (2 * count)) for t in totals]


class _ActivationStats:
    """Per-input-column statistics of o_proj and down_proj inputs (sum, sum of squares, token count)."""

    def __init__(self, model):
        self.stats: dict[torch.nn.Module, list] = {}
        self.handles = []
        for layer in model.model.layers:
            for module in (getattr(layer.self_attn, "o_proj", None), getattr(layer.mlp, "down_proj", None)):
                if module is not None:
                    self.stats[module] = [0.0, 0.0, 0]
                    self.handles.append(module.register_forward_pre_hook(self._hook))

    def _hook(self, module, args):
        x = args[0].detach().float().reshape(-1, args[0].shape[-1])
        entry = self.stats[module]
        entry[0] = entry[0] + x.sum(0)
        entry[1] = entry[1] + x.pow(2).sum(0)
        entry[2] += x.shape[0]

    def reduce(self, batches: int) -> int:
        """Sums over the data-parallel ranks (once per round); returns the total batch count."""
        for module, entry in self.stats.items():
            width = module.in_features
            for j in (0, 1):
                if not isinstance(entry[j], torch.Tensor):  # this rank saw no batch
                    entry[j] = torch.zeros(width, device=module.weight.device)
            entry[2] = all_reduce_sums(entry[:2], entry[2])
        return all_reduce_sums([], batches)

    def remove(self):
        for handle in self.handles:
            handle.remove()

    def norm(self, module) -> torch.Tensor:
        return self.stats[module][1].sqrt()

    def variance(self, module) -> torch.Tensor:
        total, squares, n = self.stats[module]
        mean = total / n
        return (squares / n - mean.pow(2)).clamp(min=0) * n / max(n - 1, 1)


class _ActivationImportance(Importance):
    """Scores from input-activation statistics of each structure's output projection (forward passes only)."""

    def column_score(self, module: torch.nn.Module, stats: _ActivationStats) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, model, batches, objective=None, *, show_progress=True):
        stats = _ActivationStats(model)
        count = 0
        try:
            with torch.no_grad():
                for batch in batch_progress(batches, f"{self.name} statistics", not show_progress):
                    model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), use_cache=False)
                    count += 1
        finally:
            stats.remove()
        count = stats.reduce(count)
        if count == 0:
            raise PruningError("The calibration set produced no batches.")
        d = head_dim_of(model.config)
        scores = []
        for layer in model.model.layers:
            heads = channels = None
            if layer.self_attn is not None:
                heads = self.column_score(layer.self_attn.o_proj, stats).view(-1, d).sum(1)
            if layer.mlp is not None:
                channels = self.column_score(layer.mlp.down_proj, stats)
            scores.append(LayerScores(heads, None, channels).to(torch.float32))
        return scores


class WandaSPImportance(_ActivationImportance):
    """Wanda-sp: ``|W| * ||X||`` over the structure's output-projection columns (An et al. 2024; Sun et al. 2023)."""

    name = "wanda-sp"

    def column_score(self, module, stats):
        return module.weight.detach().float().abs().sum(0) * stats.norm(module)


class FlapImportance(_ActivationImportance):
    """FLAP fluctuation: variance of each input column across calibration tokens x squared weight-column norm."""

    name = "flap"

    def column_score(self, module, stats):
        return stats.variance(module) * module.weight.detach().float().pow(2).sum(0)


class MagnitudeImportance(Importance):
    """Data-free L2 norm of each structure's weights. Collapses on real models (benchmarks/README.md); a baseline."""

    name = "magnitude"
    needs_data = False

    def __call__(self, model, batches=None, objective=None, *, show_progress=True):
        with torch.no_grad():
            sums = _structure_sums(model, lambda module, kind, t: t.detach().float().pow(2))
        return [s.map(torch.sqrt) for s in sums]


class RandomImportance(Importance):
    """Seeded random scores: the floor every criterion must clear."""

    name = "random"
    needs_data = False

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, model, batches=None, objective=None, *, show_progress=True):
        gen = torch.Generator().manual_seed(self.seed)
        out = []
        d = head_dim_of(model.config)
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            heads = torch.rand(attn.q_proj.out_features // d, generator=gen) if attn else None
            kv = torch.rand(attn.k_proj.out_features // d, generator=gen) if attn else None
            channels = torch.rand(mlp.gate_proj.out_features, generator=gen) if mlp else None
            out.append(LayerScores(heads, kv, channels))
        return out


class CallableImportance(Importance):
    """Wraps a user function ``fn(model, batches, objective) -> list[LayerScores]``."""

    name = "callable"
    needs_grad = True  # unknown: let it run backward if it wants

    def __init__(self, fn: Callable[..., list[LayerScores]]):
        self.fn = fn

    def __call__(self, model, batches, objective=None, *, show_progress=True):
        return self.fn(model, batches, objective)


_CRITERIA: dict[str, type[Importance]] = {
    c.name: c for c in (TaylorImportance, ActivationTaylorImportance, FisherImportance, WandaSPImportance, FlapImportance, MagnitudeImportance,
                        RandomImportance)
}


def get_importance(criterion: str | Importance | Callable[..., Any], seed: int = 0) -> Importance:
    """Resolve a criterion name, instance or callable."""
    if isinstance(criterion, Importance):
        return criterion
    if isinstance(criterion, str):
        if criterion not in _CRITERIA:
            raise PruningError(f"Unknown importance criterion {criterion!r}; choose one of {sorted(_CRITERIA)} or pass a callable.")
        cls = _CRITERIA[criterion]
        return cls(seed) if cls is RandomImportance else cls()
    if callable(criterion):
        return CallableImportance(criterion)
    raise PruningError(f"importance must be a name, an Importance or a callable, got {type(criterion).__name__}")
