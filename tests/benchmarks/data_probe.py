"""Benchmark (a proxy): which labelled folders pay at serving resolution? A linear-probe learning curve over the
224 px catalog photos, the 300 px ones and the 60x80 thumbnails.

    .venv/bin/python -m tests.benchmarks.data_probe [--data ../shared/data/fashion-products]
        [--more ../shared/data/fashion-products-more] [--thumbs ../shared/data/fashion-products-thumbs]
        [--features NPY_OR_NPZ ...] [--fractions 0.25,0.5,1] [--thumb-weights 0.3,0.1]
        [--groups articleType,baseColour,...]
        [--out runs/data-probe]

Training the image model once per point costs hours on this CPU, so the probe trains what is cheap: one logistic
regression per group on frozen ImageNet features of the photos (the starter bundle's pretrained backbone without
its head, as `tests.benchmarks.al_simulation` computes and caches them; a thumbnail is upscaled to the serving size
as the engine would), standardised and projected on 256 principal components fitted on the training rows. The
points, each training set containing the one before (`training_points`):

1. the train split of `--data` at each `--fractions` (nested: `learning_curve.nested_subset`);
2. all of it plus the train split of `--more`;
3. that plus the train split of `--thumbs` at each fraction;
4. all of that again with each thumbnail weighing `--thumb-weights` (a sample weight: what a sampler showing the
   thumbnails that much less often would do).

Every point is scored on the same validation rows: those of `--data` (the serving resolution) and, separately, those
of `--more` (the older catalog part on grey backdrops). Splits are the starter bundle's split rule by product id;
the thumbnails' validation and test products are never read, nor is any test split. A linear head on frozen
features is not a fine-tuned CNN: the probe says whether a folder carries signal a serving-resolution model can use,
not how much the CNN recipe will gain.

Prints a table, writes `figures.json` and `data-probe.png` (top-1 against training products per group) into
`--out`. About 15 minutes on 2 cores once features are cached (computing them: about 25 photos/s).
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
BUNDLE = ROOT / "deploy" / "demo" / "starter.safetensors"
GROUPS = "articleType,baseColour,gender,usage,subCategory"


def training_points(
    source: np.ndarray,
    split: np.ndarray,
    kept: dict[float, np.ndarray],
    fractions: Sequence[float],
    thumb_weights: Sequence[float] = (),
) -> list[tuple[str, np.ndarray, float]]:
    """The probe's training sets as (name, row mask, weight of a thumbnail row), each set containing the one before;
    then every thumbnail again at each of `thumb_weights`. `source`: per row "data", "more" or "thumbs"; `split`:
    per row its split; `kept[f]`: rows of `nested_subset` at fraction f (any split)."""
    train = split == "train"
    points = []
    for f in fractions:
        points.append((f"224px x{f:g}", (source == "data") & train & kept[f], 1.0))
    base = points[-1][1] | ((source == "more") & train)
    points.append(("+300px", base, 1.0))
    for f in fractions:
        points.append((f"+thumbs x{f:g}", base | ((source == "thumbs") & train & kept[f]), 1.0))
    every = points[-1][1]
    points += [(f"+thumbs w{w:g}", every, w) for w in thumb_weights if w != 1.0]
    return points


def main(argv: Sequence[str] | None = None) -> int:
    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    from learner.datasets.images import class_index
    from learner.datasets.labelled import IGNORE_INDEX, load_labelled_set
    from learner.evaluation.evaluate import split_rule_of
    from learner.model.bundle import load_bundle
    from tests.benchmarks.al_simulation import features_of
    from tests.benchmarks.learning_curve import nested_subset

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--data", type=Path, default=DATA / "fashion-products")
    p.add_argument("--more", type=Path, default=DATA / "fashion-products-more")
    p.add_argument("--thumbs", type=Path, default=DATA / "fashion-products-thumbs")
    p.add_argument("--features", type=Path, action="append", default=[], help="per set (data, more, thumbs)")
    p.add_argument("--model", type=Path, default=BUNDLE, help="whose split rule, and backbone for features")
    p.add_argument("--fractions", default="0.25,0.5,1")
    p.add_argument("--groups", default=GROUPS)
    p.add_argument("--thumb-weights", default="0.3,0.1", help="all thumbnails again, each row weighing this much")
    p.add_argument("--dims", type=int, default=256)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "data-probe")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    started = time.monotonic()
    bundle = load_bundle(args.model)
    rule = split_rule_of(bundle)
    fractions = [float(f) for f in args.fractions.split(",")]
    sets = [("data", args.data), ("more", args.more), ("thumbs", args.thumbs)]
    missing = [str(d) for _, d in sets if not d.exists()]
    if missing:
        print(f"no labelled set at {', '.join(missing)}: nothing to probe")
        return 0
    rows, sources, splits, samples = [], [], [], []
    kept: dict[float, list[bool]] = {f: [] for f in fractions}
    for k, (name, path) in enumerate(sets):
        data = load_labelled_set(path, bundle.taxonomy)
        given = args.features[k] if k < len(args.features) else None
        rows.append(features_of(path, data.samples, given, args.out / f"features-{path.name}.npz", args.model))
        for f in fractions:
            inside = {id(s) for s in nested_subset(list(data.samples), rule, f)}
            kept[f] += [id(s) in inside for s in data.samples]
        sources += [name] * len(data.samples)
        splits += [rule.split_of(s.split_key) for s in data.samples]
        samples += list(data.samples)
        print(f"{name}: {len(data.samples)} photos ({path})", flush=True)
    features = np.concatenate(rows)
    source, split = np.array(sources), np.array(splits)
    weights = [float(w) for w in args.thumb_weights.split(",") if w.strip()]
    points = training_points(source, split, {f: np.array(v) for f, v in kept.items()}, fractions, weights)
    every_train = np.logical_or.reduce([m for _, m, _ in points])
    scaler = StandardScaler().fit(features[every_train])
    pca = PCA(min(args.dims, features.shape[1]), random_state=0).fit(scaler.transform(features[every_train]))
    x = pca.transform(scaler.transform(features)).astype(np.float32)
    threadpool_limits(1)
    val = {"val 224px": (source == "data") & (split == "val"), "val 300px": (source == "more") & (split == "val")}
    figures: dict[str, Any] = {
        "config": {k: str(v) for k, v in vars(args).items()},
        "points": [{"name": n, "train_products": int(m.sum()), "thumb_weight": w} for n, m, w in points],
        "val_products": {v: int(m.sum()) for v, m in val.items()},
        "groups": {},
    }
    print("validation products: " + ", ".join(f"{v} {int(m.sum())}" for v, m in val.items()), flush=True)
    print(f"{'group':<13}{'training set':<16}{'products':>9}" + "".join(f"{v:>11}" for v in val), flush=True)
    for name in args.groups.split(","):
        y = np.array([class_index(s.labels.get(name)) for s in samples])
        curve = []
        for point, mask, weight in points:
            train = mask & (y != IGNORE_INDEX)
            rows_weight = np.where(source[train] == "thumbs", weight, 1.0)
            model = LogisticRegression(C=0.5, max_iter=300).fit(x[train], y[train], sample_weight=rows_weight)
            scores = {}
            for v, vmask in val.items():
                known = vmask & (y != IGNORE_INDEX)
                scores[v] = round(float((model.predict(x[known]) == y[known]).mean()), 4)
            curve.append({"point": point, "train_products": int(train.sum()), **scores})
            print(
                f"{name:<13}{point:<16}{int(train.sum()):>9}"
                + "".join(f"{scores[v]:>11.4f}" for v in val)
                + f"   ({time.monotonic() - started:.0f}s)",
                flush=True,
            )
        figures["groups"][name] = curve
    figures["seconds"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=1) + "\n")
    _plot(figures, list(val), args.out / "data-probe.png")
    print(f"{figures['seconds']} s; {args.out / 'figures.json'}, {args.out / 'data-probe.png'}")
    return 0


def _plot(figures: dict[str, Any], vals: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = list(figures["groups"])
    cols = 3
    fig, axes = plt.subplots(-(-len(groups) // cols), cols, figsize=(5 * cols, 3.8 * -(-len(groups) // cols)))
    flat = list(np.ravel(axes))
    for ax, group in zip(flat, groups, strict=False):
        curve = figures["groups"][group]
        at = range(len(curve))
        for v, style in zip(vals, ("-o", "--s"), strict=False):
            ax.plot(at, [c[v] for c in curve], style, label=v)
        ax.set_xticks(list(at), [f"{c['point']}\n{c['train_products']:,}" for c in curve], fontsize=7, rotation=30)
        ax.set_title(group)
        ax.set_ylabel("top-1 (linear probe)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in flat[len(groups) :]:
        ax.axis("off")
    fig.suptitle("which folders pay: linear probe on frozen ImageNet features, training sets growing left to right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
