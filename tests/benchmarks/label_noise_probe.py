"""Benchmark (a proxy): does training without the labels `shelfsight data issues` flagged, or with their weight
lowered, help on validation?

    .venv/bin/python -m tests.benchmarks.label_noise_probe --data ../shared/data/fashion-products \
        --issues runs/label-issues-fp/label_issues.csv --features runs/label-issues-fp/features-imagenet.npz \
        [--model deploy/demo/starter.safetensors] [--weights 0,0.3] [--groups baseColour,articleType] \
        [--out runs/label-noise-probe]

Protocol. Retraining the image model once per arm costs hours on this CPU, so the probe trains what is cheap and
independent of the bundle: a multinomial logistic regression per group on frozen ImageNet features of the photos
(the `--features` cache `shelfsight data issues --features imagenet` writes, or computed here). Each arm trains on
the train split of the bundle's split rule; the flagged train labels of the group get weight w (0: dropped; 1: the
baseline). Every arm is scored on the same validation split, twice: against all its labels as given, and against the
validation rows that were not flagged (the flagged ones may be wrong, so the first figure punishes a model for
disagreeing with a bad label). The difference to the baseline gets a 95% paired bootstrap interval (validation
images resampled, 2000 times). The test split is not read.

Prints a table and writes `figures.json` and `label-noise-probe.png` into `--out`. A few minutes per group on a
2-core CPU once features are cached.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def paired_interval(a: np.ndarray, b: np.ndarray, samples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of b - a (per-image correctness) and its 95% percentile interval over resamples of the images."""
    rng = np.random.default_rng(seed)
    diff = b.astype(np.float64) - a.astype(np.float64)
    if len(diff) == 0:
        return 0.0, 0.0, 0.0
    means = np.array([diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(samples)])
    return float(diff.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def main(argv: list[str] | None = None) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from learner.datasets.images import class_index
    from learner.datasets.labelled import IGNORE_INDEX, load_labelled_set
    from learner.evaluation.evaluate import split_rule_of
    from learner.evaluation.label_issues import extract_features, read_issues_csv
    from learner.model.bundle import load_bundle

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "fashion-products")
    p.add_argument("--issues", type=Path, required=True)
    p.add_argument("--features", type=Path, help="features-imagenet.npz (ids, features); computed when absent")
    p.add_argument("--model", type=Path, default=ROOT / "deploy" / "demo" / "starter.safetensors")
    p.add_argument("--weights", default="0,0.3")
    p.add_argument("--groups", default="baseColour,articleType,season,gender,usage")
    p.add_argument("--out", type=Path, default=Path("runs/label-noise-probe"))
    args = p.parse_args(argv)

    started = time.monotonic()
    bundle = load_bundle(args.model)
    data = load_labelled_set(args.data, bundle.taxonomy)
    ids = np.array([s.sample_id for s in data.samples])
    if args.features is not None and args.features.is_file():
        stored = np.load(args.features, allow_pickle=False)
        if not np.array_equal(stored["ids"], ids):
            raise SystemExit(f"{args.features} was made for other samples than {args.data}")
        features = np.asarray(stored["features"])
    else:
        features = extract_features(bundle, data.samples, "imagenet", progress=lambda d, n: print(f"features {d}/{n}"))
    rule = split_rule_of(bundle)
    split = np.array([rule.split_of(s.split_key) for s in data.samples])
    issues = read_issues_csv(args.issues)
    weights = [float(w) for w in args.weights.split(",")]
    figures: dict[str, Any] = {"data": str(args.data), "issues": str(args.issues), "groups": {}}
    print(f"{'group':<14}{'arm':>8}{'val top-1':>11}{'diff [95%]':>26}{'clean val':>11}{'diff [95%]':>26}")
    for name in args.groups.split(","):
        group = bundle.taxonomy.group(name)
        flagged_ids = {i.sample_id for i in issues if i.group == name}
        flagged = np.isin(ids, list(flagged_ids))
        y = np.array([class_index(s.labels.get(name)) for s in data.samples])
        train = (split == "train") & (y != IGNORE_INDEX)
        val = (split == "val") & (y != IGNORE_INDEX)
        scaler = StandardScaler().fit(features[train])
        xt, xv = scaler.transform(features[train]), scaler.transform(features[val])
        correct: dict[float, np.ndarray] = {}
        rows = []
        for w in [1.0, *weights]:
            sample_weight = np.where(flagged[train], w, 1.0)
            keep = sample_weight > 0
            model = LogisticRegression(C=0.5, max_iter=300)
            model.fit(xt[keep], y[train][keep], sample_weight=sample_weight[keep])
            correct[w] = model.predict(xv) == y[val]
            clean = ~flagged[val]
            all_diff = paired_interval(correct[1.0], correct[w])
            clean_diff = paired_interval(correct[1.0][clean], correct[w][clean])
            row = {
                "weight": w,
                "train_flagged": int(flagged[train].sum()),
                "val_top1": round(float(correct[w].mean()), 4),
                "val_diff": [round(v, 4) for v in all_diff],
                "clean_val_top1": round(float(correct[w][clean].mean()), 4),
                "clean_val_diff": [round(v, 4) for v in clean_diff],
                "val_images": int(val.sum()),
                "clean_val_images": int(clean.sum()),
            }
            rows.append(row)
            print(
                f"{group.name:<14}{w:>8g}{row['val_top1']:>11.4f}"
                f"{_fmt(all_diff):>26}{row['clean_val_top1']:>11.4f}{_fmt(clean_diff):>26}",
                flush=True,
            )
        figures["groups"][name] = rows
    figures["seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    _plot(figures, args.out / "label-noise-probe.png")
    print(f"{figures['seconds']} s; {args.out / 'figures.json'}, {args.out / 'label-noise-probe.png'}")
    return 0


def _fmt(d: tuple[float, float, float]) -> str:
    return f"{100 * d[0]:+.2f} [{100 * d[1]:+.2f}, {100 * d[2]:+.2f}]"


def _plot(figures: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(figures["groups"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for ax, key, title in ((axes[0], "val_diff", "all validation labels"), (axes[1], "clean_val_diff", "unflagged")):
        for j, name in enumerate(groups):
            for k, row in enumerate(r for r in figures["groups"][name] if r["weight"] != 1.0):
                mean, low, high = (100 * v for v in row[key])
                x = j + 0.15 * (k - 0.5)
                ax.errorbar(
                    x,
                    mean,
                    yerr=[[mean - low], [high - mean]],
                    fmt="o",
                    capsize=3,
                    color=f"C{k}",
                    label=f"flagged weight {row['weight']:g}" if j == 0 else None,
                )
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(groups)), groups, rotation=20)
        ax.set_title(f"val top-1 minus all labels, points ({title})", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
