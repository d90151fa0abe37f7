"""Data-parallel training with torch.distributed, the way PyTorch recommends: one process per GPU started by
`torchrun`, `init_process_group` from the environment torchrun sets (RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR/PORT), NCCL on GPUs and gloo on CPUs, `DistributedDataParallel` around the model,
`DistributedSampler` (with `set_epoch` every epoch) so each rank sees its own shard, and only rank 0 writing
files. Without torchrun (WORLD_SIZE unset or 1) everything here is a no-op and training is one process.

Each rank gets `batch_size // world_size` images per step; gradients are averaged over ranks by DDP, so a
step sees the same images and (with unweighted losses and frozen batch-norm) the same gradient as one process
with the whole batch: the sampler's shuffle depends on the seed and the epoch only, not on the world size.

`python -m learner.training.distributed PLAN.json` is the worker torchrun starts (see `torchrun_command`): it reads a
`TrainingPlan` written by learner/lifecycle/retrain.py, fine-tunes, and rank 0 saves the challenger bundle to
`plan.out` (or writes the reason to `plan.failure_file`). It must not touch the database or the registry.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, DistributedSampler

from learner.training.data import Sample

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


class PreprocessingDDP(DistributedDataParallel):
    """DDP that exposes the wrapped classifier's `preprocessing` (learner.training.train.train_one_epoch reads it)."""

    @property
    def preprocessing(self) -> Any:
        return self.module.preprocessing


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """The model itself for one process, else a DDP wrapper on this rank's device."""
    if not ctx.distributed:
        return model
    device_ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    return PreprocessingDDP(model, device_ids=device_ids)


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
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]  # type: ignore[no-any-return]


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        dist.barrier()


# --- the torchrun worker ------------------------------------------------------------------------------


def sample_to_dict(s: Sample) -> dict[str, Any]:
    return {
        "sample_id": s.sample_id,
        "image_path": str(s.image_path),
        "split_key": s.split_key,
        "labels": {g: (list(v) if isinstance(v, tuple) else v) for g, v in s.labels.items()},
    }


def sample_from_dict(d: dict[str, Any]) -> Sample:
    labels = {g: (tuple(v) if isinstance(v, list) else v) for g, v in d["labels"].items()}
    return Sample(d["sample_id"], Path(d["image_path"]), d["split_key"], labels)


@dataclass
class TrainingPlan:
    """What the workers train: the champion bundle, the samples, the recipe; where rank 0 writes the result."""

    champion: str
    out: str
    failure_file: str
    train: list[dict[str, Any]]
    val: list[dict[str, Any]]
    recipe: dict[str, Any]
    lineage: dict[str, Any]

    def write(self, path: Path) -> Path:
        path.write_text(json.dumps(dataclasses.asdict(self), default=str), encoding="utf-8")
        return path

    @classmethod
    def read(cls, path: Path) -> TrainingPlan:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def torchrun_command(plan_path: Path, nproc_per_node: int) -> list[str]:
    """`torchrun --standalone --nproc_per_node N -m learner.training.distributed PLAN` with this interpreter."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc_per_node}",
        "-m",
        "learner.training.distributed",
        str(plan_path),
    ]


def run_plan(plan: TrainingPlan) -> int:
    from learner.lifecycle.retrain import fine_tune, recipe_from_dict
    from learner.model.bundle import load_bundle

    recipe = recipe_from_dict(plan.recipe)
    ctx = init_from_env(recipe.device)
    try:
        champion = load_bundle(plan.champion)
        result = fine_tune(
            champion,
            [sample_from_dict(d) for d in plan.train],
            [sample_from_dict(d) for d in plan.val],
            recipe,
            ctx,
            lineage=plan.lineage,
        )
        if ctx.is_main:
            if result.bundle is not None:
                result.bundle.save(plan.out)
            else:
                Path(plan.failure_file).write_text(result.failure or "no model", encoding="utf-8")
        barrier(ctx)
    finally:
        cleanup(ctx)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: torchrun ... -m learner.training.distributed PLAN.json", file=sys.stderr)
        return 2
    return run_plan(TrainingPlan.read(Path(args[0])))


if __name__ == "__main__":
    raise SystemExit(main())
