"""Taylor scoring with FSDP2 (``torch.distributed.fsdp.fully_shard``) for models whose weights and score buffers
do not fit one GPU (``PruneConfig(fsdp=True)`` under ``torchrun --nproc-per-node N``).

Each round, a scoring copy of the current model is sharded with ``fully_shard`` per decoder layer and at the root
(the copy shares the current model's weights until ``fully_shard`` replaces them by this rank's ``Shard(0)``
chunk on its device, ``cuda:LOCAL_RANK``, or the CPU under gloo). FSDP2 gathers a layer's weights for its forward
and backward and reduce-scatters its gradients (summed over the ranks, in fp32), so after each backward every rank
holds the whole calibration set's gradient for *its rows* of every weight. Then:

- the fp32 score buffers are shards too: each one has the shape of its weight's local chunk, and the gradient
  shard is added into it by a post-accumulate-grad hook and freed (4 bytes x prunable parameters / N per rank);
- the per-structure scores are sums over rows or columns of ``|W * mean g|``: each rank sums its rows, and one
  ``all_reduce`` per round adds the ranks' partial row and column sums (O(structures x head_dim) floats, not
  O(parameters)).

Ranks split the calibration batches as the data-parallel mode does (every N-th); a rank with one batch fewer runs
a zero-weighted extra batch, since every rank must take part in each batch's collectives. Only ``taylor`` scoring
is sharded; compensation and the other criteria are refused with ``fsdp=True`` (see :func:`check_config`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from ..errors import PruningError
from ..format.geometry import head_dim_of
from ..presets import is_auto
from .batches import batch_progress
from .distributed import all_reduce_sums, all_reduce_tensor, local_rank, world_size
from .structures import LayerScores

__all__ = ["check_config", "shard_model", "is_sharded", "local_rows", "sharded_taylor", "ShardedBuffers"]

Batch = Mapping[str, Any]


def check_config(config: Any) -> None:
    """Refuse what FSDP2 scoring does not do, in one line (``config`` resolved; called before any scoring)."""
    if not config.fsdp:
        return
    if world_size() < 2:
        raise PruningError("fsdp=True shards the model over processes: launch with torchrun --nproc-per-node N "
                           "(N >= 2) -m hf_prune prune ... --fsdp.")
    if config.importance != "taylor":
        raise PruningError(f"fsdp=True shards taylor scoring only, not importance={config.importance!r}: use "
                           "importance='taylor' (or a method whose criterion is taylor: gisp, llm-pruner).")
    if is_auto(config):
        raise PruningError("fsdp=True does not choose priors per model (each candidate would need the whole model "
                           "on one device): give attention_weight and layer_balance as numbers.")
    if config.compensation:
        raise PruningError("fsdp=True does not refit weights (compensation is not sharded yet): set compensation=None "
                           "(--compensation none).")


def device() -> torch.device:
    """Where this rank's shards live: ``cuda:LOCAL_RANK`` on GPUs, else the CPU (gloo)."""
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank())
    return torch.device("cpu")


def shard_model(model):
    """A copy of ``model`` with every decoder layer and the root wrapped by ``fully_shard`` over all ranks.

    ``model`` is left as it is: the copy starts with the same weight tensors (no second full copy in memory) and
    ``fully_shard`` swaps each for this rank's chunk. Gradients are summed over the ranks (divide factor 1, fp32
    reduction) so that the buffers add up what one process would.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    # deepcopy with the parameters pre-filled in its memo: the copy's parameters are new Parameter objects (FSDP2
    # replaces them in the copy only) around the same storage; buffers and configs are copied.
    memo: dict[int, Any] = {id(p): torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad)
                            for p in model.parameters()}
    scored = copy.deepcopy(model, memo)
    mesh = init_device_mesh(device().type, (world_size(),))
    policy = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    for layer in scored.model.layers:
        fully_shard(layer, mesh=mesh, mp_policy=policy)
    fully_shard(scored, mesh=mesh, mp_policy=policy)
    for module in scored.modules():
        if isinstance(module, FSDPModule):
            # a plain sum over the ranks, not FSDP's default mean; forcing SUM collectives avoids PREMUL_SUM,
            # which gloo lacks
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    return scored


def is_sharded(model) -> bool:
    """Whether ``model``'s weights are FSDP2 shards (DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def local_rows(param) -> tuple[int, torch.Tensor]:
    """``(first row, local chunk)`` of a ``Shard(0)`` DTensor parameter.

    FSDP2 chunks dim 0 as ``torch.chunk`` does (``ceil(rows / N)`` rows per rank, the last ranks fewer or none);
    the offset is computed from that rule and checked against the local shape, so a change of layout fails loudly
    instead of misplacing rows.
    """
    from torch.distributed.tensor import Shard

    local = param.to_local()
    if tuple(param.placements) != (Shard(0),):
        raise PruningError(f"fsdp scoring expects weights sharded on dim 0, got placements {param.placements}.")
    rows, ranks, rank = param.shape[0], param.device_mesh.size(), param.device_mesh.get_local_rank()
    chunk = math.ceil(rows / ranks)
    start = min(rank * chunk, rows)
    if local.shape[0] != max(0, min(chunk, rows - start)):
        raise PruningError(f"unexpected FSDP2 shard: {tuple(local.shape)} rows of {rows} on rank {rank} of {ranks}.")
    return start, local


class ShardedBuffers:
    """fp32 gradient sums with the shape of each parameter's local shard, filled by post-accumulate-grad hooks."""

    def __init__(self, params: Sequence[torch.nn.Parameter]) -> None:
        self.sums = {p: torch.zeros_like(p.to_local(), dtype=torch.float32) for p in params}
        self.handles = [p.register_post_accumulate_grad_hook(self._add(buf)) for p, buf in self.sums.items()]

    @staticmethod
    def _add(buffer: torch.Tensor) -> Callable[[torch.Tensor], None]:
        def hook(param: torch.Tensor) -> None:
            buffer.add_(param.grad.to_local())
            param.grad = None  # the sharded gradient is freed as soon as it is added in

        return hook

    def numel(self) -> int:
        """Elements this rank holds (the memory test checks it is a shard of the whole)."""
        return sum(b.numel() for b in self.sums.values())

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _run_batches(model, batches: Sequence[Batch], objective, raw_objective, show_progress: bool) -> int:
    """Forward and backward of this rank's batches, padded to the most any rank has; returns the sample count."""
    most = _most(len(batches))
    dev, count = device(), 0
    for i, batch in enumerate(batch_progress(list(range(most)), "taylor scores (fsdp)", not show_progress)):
        real = i < len(batches)
        batch = {k: v.to(dev) if torch.is_tensor(v) else v for k, v in (batches[i] if real else batches[0]).items()}
        size = batch["input_ids"].shape[0] if real else 0
        loss = (objective if real else raw_objective)(model, batch)  # the padding batch is not logged
        (loss * size).backward()  # size 0: zero gradients, but the rank takes part in the collectives
        count += size
    return count


def _most(n: int) -> int:
    """The largest ``n`` over the ranks (gloo and NCCL both have MAX)."""
    import torch.distributed as dist

    t = torch.tensor([n], dtype=torch.int64, device=device() if dist.get_backend() == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def sharded_taylor(model, batches: Sequence[Batch], objective, *, raw_objective=None, show_progress: bool = True,
                   params: Sequence[torch.nn.Parameter]) -> tuple[list[LayerScores], int]:
    """Taylor scores of a :func:`shard_model` copy; returns the scores and this rank's buffer elements.

    ``params`` are the prunable weights (gradients enabled by the caller); ``raw_objective`` is the objective
    without loss logging, for padding batches.
    """
    buffers = ShardedBuffers(params)
    try:
        count = _run_batches(model, batches, objective, raw_objective or objective, show_progress)
    finally:
        buffers.remove()
    count = all_reduce_sums([], count)
    if count == 0:
        raise PruningError("The calibration set produced no batches.")
    for t in buffers.sums.values():
        t.div_(count)  # the mean gradient, on this rank's rows
    return _structure_scores(model, buffers.sums), buffers.numel()


def _structure_scores(model, mean_grad: dict) -> list[LayerScores]:
    """Per-structure sums of ``|W * mean g|`` from local rows, added over the ranks in one ``all_reduce``."""
    parts: list[torch.Tensor] = []  # every rank appends the same vectors in the same order

    def partial(module, kind: str, axis: int) -> int:
        """Index into ``parts`` of the module's full-length row (axis 1) or column (axis 0) sums from local rows."""
        param = getattr(module, kind)
        start, local = local_rows(param)
        scores = (local.detach().to(torch.float32) * mean_grad[param]).abs()
        if axis == 0:  # column sums: every rank's rows contribute to every column
            vec = scores.sum(0)
        else:  # row sums: this rank's rows, zeros elsewhere
            vec = torch.zeros(param.shape[0], dtype=torch.float32, device=local.device)
            vec[start:start + local.shape[0]] = scores.sum(1) if scores.dim() > 1 else scores
        parts.append(vec)
        return len(parts) - 1

    wanted = []
    for layer in model.model.layers:
        attn, mlp, entry = layer.self_attn, layer.mlp, {}
        if attn is not None:
            for name in ("q_proj", "k_proj", "v_proj"):
                proj = getattr(attn, name)
                entry[name] = [partial(proj, "weight", 1)] + ([partial(proj, "bias", 1)] if proj.bias is not None else [])
            entry["o_proj"] = [partial(attn.o_proj, "weight", 0)]
        if mlp is not None:
            entry["gate_proj"] = [partial(mlp.gate_proj, "weight", 1)]
            entry["up_proj"] = [partial(mlp.up_proj, "weight", 1)]
            entry["down_proj"] = [partial(mlp.down_proj, "weight", 0)]
        wanted.append(entry)
    if parts:
        flat = all_reduce_tensor(torch.cat(parts))  # one collective per round
        parts = list(flat.split([p.numel() for p in parts]))
    d = head_dim_of(model.config)
    total = lambda indices: sum(parts[i] for i in indices)  # noqa: E731 - weight (+ bias) sums of one projection
    out = []
    for layer, entry in zip(model.model.layers, wanted):
        heads = kv = channels = None
        if layer.self_attn is not None:
            heads = total(entry["q_proj"]).view(-1, d).sum(1) + parts[entry["o_proj"][0]].view(-1, d).sum(1)
            kv = (total(entry["k_proj"]) + total(entry["v_proj"])).view(-1, d).sum(1)
        if layer.mlp is not None:
            channels = total(entry["gate_proj"]) + total(entry["up_proj"]) + parts[entry["down_proj"][0]]
        out.append(LayerScores(heads, kv, channels).to(torch.float32))
    return out
