"""Data-parallel training with torch.distributed, the way PyTorch recommends: one process per GPU started by
`torchrun`, `init_process_group` from the environment torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR/PORT), NCCL on GPUs and gloo on CPUs, `DistributedDataParallel` around the model,
`DistributedSampler` (with `set_epoch` every epoch) so each rank sees its own shard, and only rank 0 writing
files. Without torchrun (WORLD_SIZE unset or 1) everything here is a no-op and training is one process.

Each rank gets `batch_size // world_size` images per step; gradients are averaged over ranks by DDP, so a
step sees the same images and (with unweighted losses and frozen batch-norm) the same gradient as one process
with the whole batch: the sampler's shuffle depends on the seed and the epoch only, not on the world size.

The worker torchrun starts is learner/training/launch.py; the epoch loop that uses these is
learner/training/fit.py (over learner/training/engine.py).

Must not: train, read or write files, or touch the database or the registry.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

T = TypeVar("T")


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank, the world size and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str | None = None  # None: no process group (one process)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @classmethod
    def single(cls, device: str = "auto") -> DistContext:
        from learner.inference.engine import pick_device

        return cls(0, 0, 1, pick_device(device))


def init_from_env(device: str = "auto", timeout_s: float = 1800.0) -> DistContext:
    """Join the process group torchrun describes in the environment; one process when there is none."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext.single(device)
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device != "cpu"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=dt.timedelta(seconds=timeout_s))
    return DistContext(rank, local_rank, world, dev, backend)


def cleanup(ctx: DistContext) -> None:
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """The model itself for one process, else a DDP wrapper on this rank's device."""
    if not ctx.distributed:
        return model
    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def make_sampler(dataset: Dataset[Any], ctx: DistContext, seed: int, shuffle: bool = True) -> DistributedSampler[Any]:
    """This rank's shard of `dataset`, reshuffled each epoch (call `set_epoch`); also used with one process so
    the order of images is the same whatever the world size."""
    return DistributedSampler(
        dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=shuffle, seed=seed, drop_last=False
    )


def mean_across_ranks(value: float, ctx: DistContext) -> float:
    if not ctx.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item() / ctx.world_size)


def broadcast_from_main(value: T, ctx: DistContext) -> T:
    """Rank 0's `value` on every rank (one decision for all, e.g. early stopping)."""
    if not ctx.distributed:
        return value
    box: list[T] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()
