"""Learning curve: validation accuracy against the number of labelled training images.

    .venv/bin/python -m tests.benchmarks.learning_curve [--data ../shared/data/fashion-products]
        [--fractions 0.25 0.5 1.0] [--epochs 12] [--out runs/learning-curve] [--sizes 160,224] [--input-size N]
        [--taxonomy fashion-products]

Trains the README's recipe (`shelfsight train ... --epochs 12 --class-weight-power 0 --brightness 0 --contrast 0`)
on nested subsets of the train split and evaluates each on the whole validation split, as the calibrated bundle
tags (hierarchy-consistent decoding, the figures `shelfsight evaluate --split val` gives). The subsets are nested
and deterministic: a product is kept when its split bucket (the same hash that assigns the split) lies in the
first `fraction` of the train range, so the validation and test splits never change and a smaller subset is
always inside a larger one.

For each group it fits validation error = a * n ** -b (least squares in log-log), once through all points and
once through the last two (the local slope: a curve that flattens is better extrapolated from its end), and
prints how many training images each fit would need to reach the issue's targets. It answers "is this group
limited by the amount of labelled data, and by how much?", which no recipe tweak on one split can. Only the
train and validation splits are read: test stays unseen.

Writes `curve.json` and `learning_curve.png` under --out (`--from-json` redoes the fits and the plot from a
`curve.json` without training). About 30 minutes on 2 CPU cores for the defaults.

A point of the JSON with a `sources` entry (e.g. a run of `shelfsight train` on several folders, evaluated on the
same validation split) is plotted as a star beside the curve and left out of the fits: it is more data of another
kind, not a larger fraction of the same set.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
GROUPS = ("articleType", "baseColour", "gender", "usage", "subCategory")
# issue 13's held-out top-1 targets
TARGETS = {"articleType": 0.90, "baseColour": 0.70, "gender": 0.93, "usage": 0.93, "subCategory": 0.97}


def nested_subset(samples: list[Any], rule: Any, fraction: float) -> list[Any]:
    """Keep every val/test sample and the train samples whose split bucket lies in the first `fraction` of train."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    cut = rule.train * fraction
    return [s for s in samples if rule.split_of(s.split_key) != "train" or rule.bucket(s.split_key) < cut]


def fitted_points(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points the power law is fitted to: fractions of one set, not runs that read other folders too."""
    return [p for p in points if not p.get("sources")]


def fit_power_law(n: list[float], accuracy: list[float]) -> tuple[float, float]:
    """Least-squares fit of error = a * n ** -b in log-log space; returns (a, b). Needs two distinct n."""
    if len(set(n)) < 2:
        raise ValueError("a power law needs points at two or more training-set sizes")
    xs = [math.log(v) for v in n]
    ys = [math.log(max(1.0 - acc, 1e-6)) for acc in accuracy]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    return math.exp(my - slope * mx), -slope


def images_needed(a: float, b: float, target_accuracy: float) -> float:
    """Training images at which the fitted curve reaches `target_accuracy` (inf when it never does)."""
    if b <= 0:
        return math.inf
    return float((a / (1.0 - target_accuracy)) ** (1.0 / b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fashion-products")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "learning-curve")
    parser.add_argument("--from-json", type=Path, help="a curve.json from an earlier run: fit and plot, no training")
    parser.add_argument("--taxonomy", default="fashion-products", help="taxonomy YAML or built-in name")
    parser.add_argument("--sizes", help="progressive resizing, as shelfsight train --sizes (e.g. 160,224)")
    parser.add_argument("--input-size", type=int, help="input side (default: the backbone's)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        points, recipe = saved["points"], saved["recipe"]
    else:
        points, recipe = run_points(
            args.data, sorted(args.fractions), args.epochs, args.out, args.taxonomy, args.sizes, args.input_size
        )

    fits: dict[str, dict[str, float]] = {}
    curve = fitted_points(points)
    header = " ".join(f"{p['train_images']:>7}" for p in points)
    print(f"\n{'group':<12} {header}   b (all)  b (last 2)   images for the target: all points / last two")
    for g in GROUPS:
        n = [float(p["train_images"]) for p in curve]
        accs = [p["val_top1"][g] for p in curve]
        a, b = fit_power_law(n, accs)
        a2, b2 = fit_power_law(n[-2:], accs[-2:])
        need, need2 = images_needed(a, b, TARGETS[g]), images_needed(a2, b2, TARGETS[g])
        fits[g] = {"a": a, "b": b, "a_last2": a2, "b_last2": b2, "target": TARGETS[g]}
        fits[g] |= {"images_for_target": need, "images_for_target_last2": need2}
        accs_text = " ".join(f"{p['val_top1'][g]:7.3f}" for p in points)
        print(f"{g:<12} {accs_text}   {b:7.2f}  {b2:10.2f}   {need:,.0f} / {need2:,.0f} for {TARGETS[g]}")
    (args.out / "curve.json").write_text(json.dumps({"points": points, "fits": fits, "recipe": recipe}, indent=1))
    plot(points, fits, args.out / "learning_curve.png")
    print(f"wrote {args.out / 'curve.json'} and {args.out / 'learning_curve.png'}")


def run_points(
    data_dir: Path,
    fractions: list[float],
    epochs: int,
    out: Path,
    taxonomy_name: str = "fashion-products",
    sizes: str | None = None,
    input_size: int | None = None,
) -> tuple[list[dict[str, Any]], Any]:
    """Train the recipe on each nested fraction of the train split; validation top-1 per group for each."""
    if not data_dir.exists():
        raise SystemExit(f"no labelled set at {data_dir} (../shared/data/fashion-products beside the project)")
    from learner.datasets.labelled import load_labelled_set
    from learner.model.taxonomy import load_taxonomy
    from learner.training.recipe import TrainConfig, parse_sizes
    from learner.training.train import train

    taxonomy = load_taxonomy(taxonomy_name)
    data = load_labelled_set(data_dir, taxonomy)
    config = TrainConfig(
        epochs=epochs,
        class_weight_power=0.0,
        brightness=0.0,
        contrast=0.0,
        progress=False,
        sizes=parse_sizes(sizes) if sizes else (),
        input_size=input_size,
    )
    points: list[dict[str, Any]] = []
    for i, fraction in enumerate(fractions):
        subset = dataclasses.replace(data, samples=nested_subset(data.samples, config.split, fraction))
        n_train = len(subset.split(config.split, "train"))
        print(f"[{i + 1}/{len(fractions)}] fraction {fraction:g}: {n_train} training images", flush=True)
        started = time.time()
        result = train(config, subset, out / f"f{fraction:g}.safetensors", evaluate_test=False)
        groups = result.validation["groups"]
        point = {
            "fraction": fraction,
            "train_images": n_train,
            "val_images": groups[GROUPS[0]]["n"],
            "best_epoch": result.bundle.lineage["best_epoch"],
            "wall_s": round(time.time() - started, 1),
            "val_top1": {g: round(groups[g]["top1"], 4) for g in GROUPS},
        }
        points.append(point)
        print(json.dumps(point), flush=True)
    return points, config.to_dict()


def plot(points: list[dict[str, Any]], fits: dict[str, dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = fitted_points(points)
    others = [p for p in points if p not in curve]
    n = [p["train_images"] for p in curve]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    span = [min(n) * 0.8, max(n + [p["train_images"] for p in others]) * 1.5]
    grid = [span[0] * (span[1] / span[0]) ** (k / 50) for k in range(51)]
    for g, colour in zip(GROUPS, ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"), strict=True):
        ax.plot(n, [p["val_top1"][g] for p in curve], "o-", color=colour, label=g)
        for p in others:
            ax.plot([p["train_images"]], [p["val_top1"][g]], "*", color=colour, markersize=11)
            if g == GROUPS[0]:
                ax.annotate(
                    p["sources"],
                    (p["train_images"], p["val_top1"][g]),
                    fontsize=7,
                    ha="right",
                    xytext=(-6, 6),
                    textcoords="offset points",
                )
        a, b = fits[g]["a"], fits[g]["b"]
        ax.plot(grid, [1 - a * x**-b for x in grid], ":", color=colour)
        a2, b2 = fits[g]["a_last2"], fits[g]["b_last2"]
        ax.plot([x for x in grid if x >= n[-1]], [1 - a2 * x**-b2 for x in grid if x >= n[-1]], "-.", color=colour)
        ax.axhline(TARGETS[g], color=colour, lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("training images (log scale)")
    ax.set_ylabel("validation top-1")
    title = "Learning curve (dotted: fit to all points; dash-dot: to the last two; dashed: target"
    ax.set_title(title + (";\nstars: runs that read other folders too, not fitted)" if others else ")"), fontsize=9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
