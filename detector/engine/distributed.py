"""Process-group setup and the few collectives the engine needs (DDP via ``torchrun``).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them, picks NCCL on CUDA and gloo on CPU, and pins each process to
its local GPU. Without those variables everything here degrades to a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from data.ranks import rank_and_world_size


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, writes checkpoints and runs the COCO evaluation."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` → this process's local GPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"train.device={device} but CUDA is not available here")
        return torch.device("cuda", local_rank) if device == "cuda" else torch.device(device)
    return torch.device(device)


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group described by the ``torchrun`` environment (if any).

    A group that is already initialised (e.g. by a test that spawned the processes) is reused.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    resolved = resolve_device(device, local_rank)
    if world_size > 1:
        if resolved.type == "cuda":
            torch.cuda.set_device(resolved)
        if not dist.is_initialized():
            backend = "nccl" if resolved.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, resolved)


def _single_process() -> bool:
    """No other process to talk to: every collective below is then the identity."""
    return rank_and_world_size()[1] == 1


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if not _single_process():
        dist.barrier()


def all_gather_objects(obj: Any) -> list[Any]:
    """The ``obj`` of every rank, in rank order (``[obj]`` in a single process)."""
    if _single_process():
        return [obj]
    gathered: list[Any] = [None] * rank_and_world_size()[1]
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if _single_process():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def reduce_mean(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Average scalar tensors over ranks with one all-reduce (for logging losses)."""
    if _single_process() or not values:
        return values
    stacked = torch.stack([v.detach().float() for v in values.values()])
    dist.all_reduce(stacked)
    stacked /= rank_and_world_size()[1]
    return dict(zip(values.keys(), stacked.unbind(0), strict=True))


def all_ranks(flag: torch.Tensor) -> torch.Tensor:
    """Whether the boolean scalar ``flag`` holds on every rank (one all-reduce)."""
    if _single_process():
        return flag
    value = flag.to(torch.int32).clone()
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value.bool()


def cleanup() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
