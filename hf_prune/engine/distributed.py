"""Data parallel scoring over processes with ``torch.distributed`` (``torchrun --nproc-per-node N -m hf_prune``).

Every rank holds the whole model and draws the same calibration windows (same seed); :func:`shard` gives each
rank its share of the batches. What the ranks accumulate is added up with ``all_reduce``:

- the score buffers (the summed gradients of every prunable weight, fp32) and the sample count, **once per
  scoring round**, after the rank's last batch: ``4 x prunable parameters`` bytes per round, whatever the
  number of batches;
- activation statistics (wanda-sp, flap) and Fisher sums, once per round (per structure or input column);
- compensation's Gram matrices ``X^T X``, once per refit projection (layer by layer: the next layer's inputs
  depend on this layer's refit, which every rank computes from the same reduced matrix).

Rank 0 alone writes, logs and pushes (see :func:`hf_prune.prune_and_push`). Outside a process group every
function here is the single-process identity, so the engine calls them unconditionally.

This is the one module that reads torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``). Those
readers run without torch: the command line and the checks before loading use them, and must stay instant, so
torch is imported by the collectives when they are first called.
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

__all__ = ["launched_world_size", "launched_rank", "local_rank", "rank_device_map", "init_from_env",
           "is_distributed", "rank", "world_size", "is_main", "shard", "all_reduce_sums", "all_reduce_tensor",
           "all_reduce_floats", "barrier", "TRAFFIC", "Traffic"]

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: How long ranks wait for each other (rank 0 evaluates and saves levels while the others wait).
TIMEOUT = datetime.timedelta(hours=3)


@dataclass
class Traffic:
    """Bytes and calls of the collectives since the last :meth:`reset` (what a round sends, per rank)."""

    bytes: int = 0
    calls: int = 0

    def reset(self) -> tuple[int, int]:
        out = (self.bytes, self.calls)
        self.bytes = self.calls = 0
        return out


TRAFFIC = Traffic()


# ---- torchrun's environment (no torch) ----------------------------------------------------------------------
def launched_world_size() -> int:
    """Processes torchrun started for this run (``WORLD_SIZE``; 1 outside torchrun), before any process group."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched_rank() -> int:
    """This process's rank as torchrun numbered it (``RANK``; 0 outside torchrun)."""
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    """This process's GPU index on its machine (``LOCAL_RANK``; 0 outside torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def rank_device_map(device_map: Any) -> Any:
    """A data-parallel rank's device: ``cuda:LOCAL_RANK`` on GPUs when no ``device_map`` is given."""
    import torch

    if device_map is None and torch.cuda.is_available():
        return {"": local_rank()}
    return device_map


def _dist():
    import torch.distributed as dist

    return dist


# ---- the process group and its collectives ----------------------------------------------------------------
def init_from_env() -> bool:
    """Join the process group ``torchrun`` describes (``WORLD_SIZE`` > 1); ``nccl`` on GPUs, else ``gloo``.

    Returns whether this process is one rank of several. A group the caller initialised is used as it is.
    """
    import torch

    dist = _dist()
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size() > 1
    if launched_world_size() <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(backend=backend, timeout=TIMEOUT)
    logger.debug("rank %d of %d joined the %s process group", dist.get_rank(), dist.get_world_size(), backend)
    return True


def is_distributed() -> bool:
    dist = _dist()
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return _dist().get_rank() if is_distributed() else 0


def world_size() -> int:
    return _dist().get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Whether this process writes, logs and pushes (rank 0, or the only process)."""
    return rank() == 0


def shard(batches: Sequence[T]) -> list[T]:
    """This rank's batches: every ``world_size``-th one, starting at its rank (all of them in one process)."""
    return list(batches[rank()::world_size()])


def all_reduce_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` summed over the ranks, in place (unchanged in one process)."""
    if is_distributed():
        import torch

        dist = _dist()
        if dist.get_backend() == "nccl" and tensor.device.type != "cuda":  # NCCL reduces GPU tensors only
            on_gpu = tensor.to(f"cuda:{torch.cuda.current_device()}")
            dist.all_reduce(on_gpu)
            tensor.copy_(on_gpu)
        else:
            dist.all_reduce(tensor)
        TRAFFIC.bytes += tensor.numel() * tensor.element_size()
        TRAFFIC.calls += 1
    return tensor


def all_reduce_sums(tensors: Sequence[torch.Tensor], count: int) -> int:
    """Sum every tensor over the ranks in place; returns the total ``count`` (one process: unchanged)."""
    if not is_distributed():
        return count
    import torch

    for t in tensors:
        all_reduce_tensor(t)
    device = tensors[0].device if tensors else torch.device("cpu")
    return int(all_reduce_tensor(torch.tensor([count], dtype=torch.float64, device=device)).item())


def all_reduce_floats(values: dict[str, float], device: Any = "cpu") -> dict[str, float]:
    """``{key: value}`` summed over the ranks (keys may differ between ranks; a missing key counts 0)."""
    if not is_distributed():
        return values
    gathered: list[Any] = [None] * world_size()
    _dist().all_gather_object(gathered, values)
    keys = sorted({k for part in gathered for k in part})
    return {k: float(sum(part.get(k, 0.0) for part in gathered)) for k in keys}


def barrier() -> None:
    if is_distributed():
        _dist().barrier()
