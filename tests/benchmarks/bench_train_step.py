"""Benchmark: the classifier's training step on this CPU under different memory allocators, side by side in ONE run.

    .venv/bin/python -m tests.benchmarks.bench_train_step [--steps 12] [--repeats 2] [--batch 64]
        [--out runs/bench-train-step]

Why: the all-folders recipe (serving batches at 224 px and thumbnail batches at 112 px, issue 28) ran at 16-24 img/s
where the one-folder recipe ran at 41, with a third of its time in the kernel and 848 M minor page faults. glibc
returns every block over its mmap threshold (at most 32 MiB) to the kernel when it is freed, so each step's large
activations are fresh pages, faulted in one 4 KiB page at a time.

Variants (each a fresh child process running the same steps; only the environment differs):
- `glibc default`: as the service runs today;
- `glibc hugetlb`: `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35: malloc asks for transparent huge pages,
  2 MiB per fault instead of 4 KiB);
- `glibc no-mmap`: `MALLOC_MMAP_MAX_=0` and a large `MALLOC_TRIM_THRESHOLD_` (large blocks come from the heap, and
  freed memory stays there for the next step);
- `retain (train)`: what `shelfsight train` does, in the process (learner.training.runtime.retain_freed_memory:
  the same two settings through `mallopt`, the trim threshold capped at 2 GiB by its `int` argument).
Schedules: `serving` (every batch at 224 px) and `mixed` (three serving batches, then one thumbnail batch at 112 px,
the all-folders recipe's ratio). Each child runs the model's real forward pass, the loss of every head and an AdamW
step on random uint8 images (no data loading: the allocator is what is measured), after two warm-up steps.

Printed per variant and schedule: images/s (wall), CPU seconds in the kernel per 100 images, minor page faults per
image, and the peak RSS. Repeats are interleaved across variants (best of --repeats). Ratios are against
`glibc default`; absolute figures belong to the machine that printed them. Writes `train-step.json` and a PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]

VARIANTS: dict[str, dict[str, str]] = {
    "glibc default": {},
    "glibc hugetlb": {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"},
    "glibc no-mmap": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(16 << 30)},
    "retain (train)": {"BENCH_RETAIN_FREED_MEMORY": "1"},
}
SCHEDULES: dict[str, list[int]] = {"serving": [224], "mixed": [224, 224, 224, 112]}


def child(schedule: str, steps: int, batch: int, threads: int) -> dict[str, Any]:
    """Runs `steps` training steps of the recipe's classifier in this process; returns its figures."""
    import torch
    from torch.nn import functional as F

    from learner.model.taxonomy import load_taxonomy
    from learner.training.optim import make_optimizer
    from learner.training.recipe import TrainConfig
    from learner.training.run import build_classifier

    if os.environ.get("BENCH_RETAIN_FREED_MEMORY") == "1":
        from learner.training.runtime import retain_freed_memory

        if not retain_freed_memory():
            raise SystemExit("this C library has no mallopt: the `retain (train)` variant cannot run here")
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    config = TrainConfig(pretrained=False)
    model = build_classifier(config, load_taxonomy("fashion-products"), torch.device("cpu"))
    model.train()
    optimizer = make_optimizer(model, config)
    sides = SCHEDULES[schedule]

    def step(i: int) -> int:
        side = sides[i % len(sides)]
        x = torch.rand(batch, 3, side, side).contiguous(memory_format=torch.channels_last)
        logits = model(x)
        loss = sum(F.cross_entropy(v, torch.zeros(len(v), dtype=torch.long)) for v in logits.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # type: ignore[union-attr]
        optimizer.step()
        return batch

    for i in range(2):
        step(i)
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    images = sum(step(i) for i in range(steps))
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "images_per_s": images / wall,
        "sys_s_per_100": 100 * (after.ru_stime - before.ru_stime) / images,
        "user_s_per_100": 100 * (after.ru_utime - before.ru_utime) / images,
        "minor_faults_per_image": (after.ru_minflt - before.ru_minflt) / images,
        "peak_rss_mb": after.ru_maxrss / 1024,
    }


def run_variant(name: str, schedule: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, **VARIANTS[name]}
    cmd = [sys.executable, "-m", "tests.benchmarks.bench_train_step", "--child", schedule]
    cmd += ["--steps", str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads)]
    out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def plot(results: dict[str, dict[str, dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = list(results)
    for ax, key, title in (
        (axes[0], "images_per_s", "training images/s (higher is better)"),
        (axes[1], "minor_faults_per_image", "minor page faults per image"),
    ):
        width = 0.8 / len(SCHEDULES)
        for j, schedule in enumerate(SCHEDULES):
            values = [results[n][schedule][key] for n in names]
            ax.bar([i + j * width for i in range(len(names))], values, width, label=schedule)
        ax.set_xticks([i + width / 2 for i in range(len(names))], names, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle("Training step on this CPU by memory allocator (one run, best of repeats)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-train-step"))
    parser.add_argument("--child", choices=list(SCHEDULES), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.batch, args.threads)))
        return 0

    results: dict[str, dict[str, dict[str, Any]]] = {n: {} for n in VARIANTS}
    total = args.repeats * len(VARIANTS) * len(SCHEDULES)
    done = 0
    for _ in range(args.repeats):
        for schedule in SCHEDULES:
            for name in VARIANTS:
                got = run_variant(name, schedule, args)
                best = results[name].get(schedule)
                if best is None or got["images_per_s"] > best["images_per_s"]:
                    results[name][schedule] = got
                done += 1
                print(f"[{done}/{total}] {name:14s} {schedule:8s} {got['images_per_s']:6.1f} img/s", flush=True)

    base = results["glibc default"]
    head = ("variant", "schedule", "img/s", "ratio", "sys s/100", "faults/img", "RSS MB")
    print("\n{:14s} {:8s} {:>7s} {:>6s} {:>9s} {:>10s} {:>7s}".format(*head))
    for name, by_schedule in results.items():
        for schedule, r in by_schedule.items():
            ratio = r["images_per_s"] / base[schedule]["images_per_s"]
            print(
                f"{name:14s} {schedule:8s} {r['images_per_s']:7.1f} {ratio:6.2f} {r['sys_s_per_100']:9.2f} "
                f"{r['minor_faults_per_image']:10.0f} {r['peak_rss_mb']:7.0f}"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"args": vars(args) | {"out": str(args.out)}, "results": results}
    (args.out / "train-step.json").write_text(json.dumps(report, indent=2))
    plot(results, args.out / "train-step.png")
    print(f"\nwrote {args.out / 'train-step.json'} and {args.out / 'train-step.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
