"""Whose titles teach: the title model's VALIDATION top-1 per group and per serving set, as the titles of a
low-resolution set (the 60x80 thumbnails, mostly another era of the catalog) weigh less in its loss.

`shelfsight train --low-res-data` also trains the title model on that set's titles, each weighing the recipe's
`low_res_title_weight` (learner/training/recipe.py). This sweep is how its default was chosen: one title model per
weight and seed, trained on the serving sets' train splits and the low-resolution set's (its titles at that weight;
0 leaves them out), calibrated on the serving sets' validation splits joined (as `shelfsight train` does), and
measured on each serving set's validation split. The test split is never read.

    .venv/bin/python -m tests.benchmarks.title_sources --out runs/title-sources   # about 18 minutes on 2 CPU cores

It prints a table (mean over seeds, and the range) and writes `title_sources.json` and `title_sources.png` (top-1 per
group against the weight, one panel per serving set).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from learner.datasets.labelled import Sample, SplitRule, load_labelled_set
from learner.evaluation.title_calibration import title_metrics
from learner.model.taxonomy import Taxonomy, load_taxonomy
from learner.training.title import train_title_model

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SERVING = (SHARED / "fashion-products", SHARED / "fashion-products-more")
LOW_RES = SHARED / "fashion-products-thumbs"


def sweep(
    serving: Sequence[Sequence[Sample]],
    serving_val: Sequence[Sequence[Sample]],
    low_res: Sequence[Sample],
    taxonomy: Taxonomy,
    weights: Sequence[float],
    seeds: Sequence[int],
    say: Any = print,
) -> list[dict[str, Any]]:
    """One row per (weight, seed): the validation top-1 per group of each serving set (by index), and the mean over
    groups of the serving sets' validation products together."""
    train = [s for part in serving for s in part]
    val = [s for part in serving_val for s in part]
    rows = []
    for weight in weights:
        for seed in seeds:
            started = time.time()
            light = list(low_res) if weight > 0 else []
            model = train_title_model(
                [*train, *light], val, taxonomy, seed=seed, weights=[1.0] * len(train) + [weight] * len(light)
            )
            per_set = [title_metrics(model, part, taxonomy, masked=False)["top1"] for part in serving_val]
            joint = title_metrics(model, val, taxonomy, masked=False)["top1"]
            known = [v for v in joint.values() if v is not None]
            row = {
                "weight": weight,
                "seed": seed,
                "per_set": per_set,
                "joint": joint,
                "joint_mean": float(np.mean(known)),
            }
            row["elapsed_s"] = round(time.time() - started, 1)
            say(f"weight {weight:g} seed {seed}: mean top-1 {row['joint_mean']:.4f} ({row['elapsed_s']} s)")
            rows.append(row)
    return rows


def summary(rows: Sequence[dict[str, Any]]) -> dict[float, dict[str, Any]]:
    """Per weight: the mean and range over seeds of the joint mean top-1, and the mean top-1 per set and group."""
    out: dict[float, dict[str, Any]] = {}
    for weight in dict.fromkeys(r["weight"] for r in rows):
        mine = [r for r in rows if r["weight"] == weight]
        means = [r["joint_mean"] for r in mine]
        sets = len(mine[0]["per_set"])
        out[weight] = {
            "joint_mean": float(np.mean(means)),
            "range": (float(min(means)), float(max(means))),
            "per_set": [
                {g: float(np.mean([r["per_set"][i][g] for r in mine])) for g in mine[0]["per_set"][i]}
                for i in range(sets)
            ],
        }
    return out


def plot(table: dict[float, dict[str, Any]], names: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    weights = sorted(table)
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4.5), sharey=True)
    for i, (ax, name) in enumerate(zip(np.atleast_1d(axes), names, strict=True)):
        for group in table[weights[0]]["per_set"][i]:
            ax.plot(weights, [table[w]["per_set"][i][group] for w in weights], marker="o", label=group)
        ax.set_title(f"validation split of {name}")
        ax.set_xlabel("weight of each thumbnail title in the loss (0: left out)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("title-only top-1 (mean over seeds)")
    np.atleast_1d(axes)[-1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Whose titles teach: the thumbnails' titles weighed down")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, action="append", help="a serving set (repeatable; default: 224 + 300 px)")
    parser.add_argument("--low-res-data", type=Path, default=LOW_RES)
    parser.add_argument("--weights", default="1,0.25,0.1,0")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", type=Path, default=Path("runs/title-sources"))
    args = parser.parse_args()
    taxonomy = load_taxonomy("fashion-products")
    rule = SplitRule()
    sets = [load_labelled_set(d, taxonomy) for d in (args.data or SERVING)]
    low_res = load_labelled_set(args.low_res_data, taxonomy).split(rule, "train")
    rows = sweep(
        [d.split(rule, "train") for d in sets],
        [d.split(rule, "val") for d in sets],
        low_res,
        taxonomy,
        [float(w) for w in args.weights.split(",")],
        [int(s) for s in args.seeds.split(",")],
    )
    table = summary(rows)
    names = [Path(d.source).parent.name for d in sets]
    groups = list(table[next(iter(table))]["per_set"][0])
    print(
        f"{'weight':>7} {'mean top-1 (range)':>26}  "
        + "  ".join(f"{n}: " + " ".join(g[:6] for g in groups) for n in names)
    )
    for w, t in table.items():
        cells = "  ".join(" ".join(f"{t['per_set'][i][g]:.3f}" for g in groups) for i in range(len(names)))
        print(f"{w:>7g} {t['joint_mean']:.4f} ({t['range'][0]:.4f}-{t['range'][1]:.4f})  {cells}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "title_sources.json").write_text(json.dumps({"rows": rows, "sets": names}, indent=1))
    plot(table, names, args.out / "title_sources.png")
    print(f"wrote {args.out / 'title_sources.json'} and {args.out / 'title_sources.png'}")


if __name__ == "__main__":
    main()
