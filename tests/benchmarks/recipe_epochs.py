"""Recipes side by side, epoch by epoch: training time against validation accuracy, from the bundles themselves.

    .venv/bin/python -m tests.benchmarks.recipe_epochs BUNDLE[=LABEL] BUNDLE[=LABEL] ... [--out runs/recipe-epochs]

Every bundle `shelfsight train` writes keeps its run's history in its lineage: per epoch the training seconds, the
images per second, the input side and the validation figures. This reads them (nothing is trained or predicted) and
prints, per recipe, each epoch's seconds and validation mean top-1, the cumulative training time, the whole run's
wall time (`elapsed_s`: decoding, validation passes and the title model included) and the selected epoch's figures
per group; then writes `recipe-epochs.png` (validation mean top-1 against cumulative training time, one line per
recipe, the epochs marked) and `recipe-epochs.json` under --out.

Compare bundles trained on the same validation split (the same data and split rule): the figures are validation
figures, so they are what recipes are chosen on, not held-out results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from learner.model.manifest import BundleError, read_manifest
from learner.training.recipe import TrainConfig


def recipe_run(path: Path, label: str) -> dict[str, Any]:
    """What one bundle's lineage says of its training run; ValueError when it has no per-epoch history."""
    lineage = read_manifest(path).get("lineage") or {}
    history = [row for row in lineage.get("history") or [] if "seconds" in row]
    if not history:
        raise ValueError(f"{path}: no per-epoch history in its lineage (not written by `shelfsight train`?)")
    recipe = dataclasses.asdict(TrainConfig.from_dict(lineage["recipe"])) if lineage.get("recipe") else {}
    cumulative, epochs = 0.0, []
    for row in history:
        cumulative += float(row["seconds"])
        epochs.append(
            {
                "epoch": int(row["epoch"]),
                "seconds": round(float(row["seconds"]), 1),
                "cumulative_s": round(cumulative, 1),
                "images_per_s": row.get("images_per_s"),
                "input_size": row.get("input_size"),
                "val_mean_top1": row.get("val_mean_top1"),
                "val_top1": row.get("val_top1") or {},
            }
        )
    best = lineage.get("best_epoch")
    selected = next((e for e in epochs if e["epoch"] == best), epochs[-1])
    return {
        "label": label,
        "bundle": str(path),
        "recipe": {
            k: recipe.get(k)
            for k in ("epochs", "serving_only_epochs", "serving_only_keep_steps", "low_res_fraction", "batch_size")
        },
        "elapsed_s": lineage.get("elapsed_s"),
        "training_s": round(cumulative, 1),
        "best_epoch": selected["epoch"],
        "selected": {"val_mean_top1": selected["val_mean_top1"], "val_top1": selected["val_top1"]},
        "epochs": epochs,
    }


def parse_target(text: str) -> tuple[Path, str]:
    path, _, label = text.partition("=")
    return Path(path), label or Path(path).stem


def plot(runs: list[dict[str, Any]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for run in runs:
        xs = [e["cumulative_s"] / 60 for e in run["epochs"]]
        ys = [e["val_mean_top1"] for e in run["epochs"]]
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=f"{run['label']} ({run['training_s'] / 60:.0f} min)")
        best = next(e for e in run["epochs"] if e["epoch"] == run["best_epoch"])
        ax.plot([best["cumulative_s"] / 60], [best["val_mean_top1"]], marker="*", markersize=12, color=line.get_color())
    ax.set_xlabel("training time, minutes (epochs only, cumulative)")
    ax.set_ylabel("validation mean top-1")
    ax.set_title("Recipes epoch by epoch (star: the selected epoch)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="+", help="BUNDLE or BUNDLE=LABEL, a bundle written by `shelfsight train`")
    parser.add_argument("--out", type=Path, default=Path("runs/recipe-epochs"))
    args = parser.parse_args(argv)
    try:
        runs = [recipe_run(*parse_target(t)) for t in args.bundles]
    except (BundleError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for run in runs:
        r = run["recipe"]
        print(
            f"== {run['label']}: {r['epochs']} epochs, last {r['serving_only_epochs']} serving-only "
            f"({'as long as a mixed one' if r['serving_only_keep_steps'] else 'one pass'}), "
            f"training {run['training_s']:.0f} s, whole run {run['elapsed_s']} s"
        )
        for e in run["epochs"]:
            print(
                f"  epoch {e['epoch']:>2}: {e['seconds']:7.1f} s (cumulative {e['cumulative_s']:7.1f} s), "
                f"{e['images_per_s'] or 0:5.1f} img/s, val mean top-1 {e['val_mean_top1']}"
            )
        tops = " ".join(f"{g}={v:.3f}" for g, v in run["selected"]["val_top1"].items())
        print(f"  selected epoch {run['best_epoch']}: mean top-1 {run['selected']['val_mean_top1']} | {tops}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "recipe-epochs.json").write_text(json.dumps(runs, indent=2), encoding="utf-8")
    plot(runs, args.out / "recipe-epochs.png")
    print(f"wrote {args.out / 'recipe-epochs.json'} and {args.out / 'recipe-epochs.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
