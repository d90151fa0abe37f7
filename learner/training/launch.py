"""Fine-tuning with torchrun: the `TrainingPlan` a retraining run writes (champion bundle, samples, recipe, where to
put the result), the command that starts the workers (`torchrun_command`), and the worker itself:
`python -m learner.training.launch PLAN.json` joins the process group (learner/training/distributed.py), fine-tunes
(learner/training/finetune.py), and rank 0 saves the challenger bundle to `plan.out` or writes why there is none to
`plan.failure_file`.

Must not: touch the database or the registry, or decide anything about promotion (learner/lifecycle/ does).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from learner.datasets.labelled import Sample
from learner.model.bundle import load_bundle
from learner.training.distributed import barrier, cleanup, init_from_env
from learner.training.finetune import fine_tune
from learner.training.recipe import TrainConfig


def sample_to_dict(s: Sample) -> dict[str, Any]:
    return {
        "sample_id": s.sample_id,
        "image_path": str(s.image_path),
        "split_key": s.split_key,
        "labels": {g: (list(v) if isinstance(v, tuple) else v) for g, v in s.labels.items()},
        "title": s.title,
    }


def sample_from_dict(d: dict[str, Any]) -> Sample:
    labels = {g: (tuple(v) if isinstance(v, list) else v) for g, v in d["labels"].items()}
    return Sample(d["sample_id"], Path(d["image_path"]), d["split_key"], labels, d.get("title"))


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
    """`torchrun --standalone --nproc_per_node N -m learner.training.launch PLAN` with this interpreter."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc_per_node}",
        "-m",
        "learner.training.launch",
        str(plan_path),
    ]


def run_plan(plan: TrainingPlan) -> int:
    recipe = TrainConfig.from_dict(plan.recipe)
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
        print("usage: torchrun ... -m learner.training.launch PLAN.json", file=sys.stderr)
        return 2
    return run_plan(TrainingPlan.read(Path(args[0])))


if __name__ == "__main__":
    raise SystemExit(main())
