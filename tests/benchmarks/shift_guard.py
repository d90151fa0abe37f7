"""What the auto-fill promise is worth on photos unlike the training set's: the shipped bundle's serving path (decoder,
thresholds, confidence floors, shift guard) run over labelled sets of several kinds, side by side with a baseline
bundle (e.g. the one before the guard).

    .venv/bin/python -m tests.benchmarks.shift_guard --model deploy/demo/starter.safetensors \
        [--baseline old.safetensors] [--split val|test] [--out docs/img]

Sets (from ../shared/data): the fashion-products split named by --split (catalog photos like the training set's;
`test` is read once, for the final figures), clothing-cc0 (CC0 user photos; classes mapped to masterCategory,
subCategory and articleType by `CC0_MAP`, the map the tests use too), fashion-products-fullsize (full-size photos of
an older part of the catalog), fashion-products-more (older-era photos, the first --more of them), coco128 (street
scenes: no product). Prints per set and group the share of photos auto-filled and the precision of those values, the
photos the guard found unfamiliar, the share of photos with anything auto-filled; the separation (AUROC) of the
guard's score between the catalog split and each other set; the score's cost per image. Writes
shift-scores.png (score distributions and the cut-off) and precision-by-band.png (precision by confidence band, the
catalog split) to --out. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from learner.datasets.labelled import SplitRule, load_labelled_set
from learner.evaluation.selective import band_precision
from learner.inference.backends import load_engine
from learner.inference.engine import ImageTags, TagError, TaggingEngine
from learner.model.shift_guard import free_energy

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
# CC0 class -> (masterCategory, subCategory, articleType); None where no value of the taxonomy fits the class
CC0_MAP: dict[str, tuple[str, str | None, str | None]] = {
    "Blazer": ("Apparel", "Topwear", None),
    "Blouse": ("Apparel", "Topwear", "Tops"),
    "Body": ("Apparel", None, None),
    "Dress": ("Apparel", "Dress", "Dresses"),
    "Hat": ("Accessories", "Headwear", None),
    "Hoodie": ("Apparel", "Topwear", "Sweatshirts"),
    "Longsleeve": ("Apparel", "Topwear", None),
    "Outwear": ("Apparel", "Topwear", "Jackets"),
    "Pants": ("Apparel", "Bottomwear", None),
    "Polo": ("Apparel", "Topwear", "Tshirts"),
    "Shirt": ("Apparel", "Topwear", "Shirts"),
    "Shoes": ("Footwear", "Shoes", None),
    "Shorts": ("Apparel", "Bottomwear", "Shorts"),
    "Skirt": ("Apparel", "Bottomwear", "Skirts"),
    "T-Shirt": ("Apparel", "Topwear", "Tshirts"),
    "Top": ("Apparel", "Topwear", "Tops"),
    "Undershirt": ("Apparel", "Innerwear", "Innerwear Vests"),
}
CC0_GROUPS = ("masterCategory", "subCategory", "articleType")


@dataclass
class LabelledPhotos:
    """Photos and, per group, the true value of each (None: unknown)."""

    name: str
    paths: list[Path]
    truth: dict[str, list[str | None]] = field(default_factory=dict)


def catalog_split(folder: Path, engine: TaggingEngine, split: str | None, limit: int | None) -> LabelledPhotos:
    taxonomy = engine.bundle.taxonomy
    labelled = load_labelled_set(folder, taxonomy)
    samples = labelled.split(SplitRule(), split) if split else labelled.samples
    samples = samples[:limit] if limit else samples
    groups = [g for g in taxonomy.classifier_groups if not g.multi_label]
    truth: dict[str, list[str | None]] = {g.name: [] for g in groups}
    for s in samples:
        for g in groups:
            label = s.labels.get(g.name)
            truth[g.name].append(g.values[label] if isinstance(label, int) and label >= 0 else None)
    name = folder.name + (f":{split}" if split else "")
    return LabelledPhotos(name, [s.image_path for s in samples], truth)


def cc0_photos(folder: Path) -> LabelledPhotos:
    with (folder / "labels.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    paths = [next((folder / "images").glob(r["image"] + ".*")) for r in rows]
    truth = {g: [CC0_MAP[r["label"]][k] for r in rows] for k, g in enumerate(CC0_GROUPS)}
    return LabelledPhotos("clothing-cc0", paths, truth)


def tag_all(engine: TaggingEngine, photos: LabelledPhotos, batch: int = 32) -> list[ImageTags]:
    out: list[ImageTags] = []
    for i in range(0, len(photos.paths), batch):
        chunk = [p.read_bytes() for p in photos.paths[i : i + batch]]
        for tags in engine.tag_bytes(chunk):
            if isinstance(tags, TagError):
                raise SystemExit(f"{photos.name}: a photo could not be tagged ({tags.message})")
            out.append(tags)
        print(f"  {photos.name}: {len(out)}/{len(photos.paths)}", file=sys.stderr, flush=True)
    return out


def figures(photos: LabelledPhotos, tags: Sequence[ImageTags], groups: Sequence[str]) -> dict[str, object]:
    """Per group: photos auto-filled (share of labelled), precision of those; unfamiliar share; any auto-fill."""
    out: dict[str, object] = {
        "photos": len(tags),
        "unfamiliar": float(np.mean([t.unfamiliar for t in tags])) if tags else 0.0,
        "any_auto_filled": float(
            np.mean([any(t.is_auto_filled(g) for g in groups if t.attributes.get(g)) for t in tags])
        ),
    }
    for g in groups:
        truth = photos.truth.get(g)
        auto = [t.is_auto_filled(g) and bool(t.attributes.get(g)) for t in tags]
        if truth is None:
            out[g] = {"auto_filled": float(np.mean(auto))}
            continue
        known = [i for i, v in enumerate(truth) if v is not None]
        filled = [i for i in known if auto[i]]
        right = [tags[i].attributes[g][0][0] == truth[i] for i in filled]
        out[g] = {
            "labelled": len(known),
            "auto_filled": len(filled) / len(known) if known else 0.0,
            "n": len(filled),
            "precision": float(np.mean(right)) if right else None,
        }
    return out


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outside photo scores above an inside one)."""
    both = np.r_[inside, outside]
    ranks = both.argsort().argsort() + 1.0
    return float((ranks[len(inside) :].sum() - len(outside) * (len(outside) + 1) / 2) / (len(inside) * len(outside)))


def score_cost_us(groups: Sequence[str], sizes: Sequence[int], n: int = 256, repeats: int = 50) -> float:
    """Microseconds per image of the score itself (free energy over the groups' logits), batches of `n`."""
    rng = np.random.default_rng(0)
    logits = {g: rng.normal(size=(n, k)).astype(np.float32) for g, k in zip(groups, sizes, strict=True)}
    t0 = time.perf_counter()
    for _ in range(repeats):
        free_energy(logits, groups)
    return (time.perf_counter() - t0) / (repeats * n) * 1e6


def plot(scores: dict[str, np.ndarray], cutoff: float | None, catalog: str, band: dict[str, list], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    lo = min(float(s.min()) for s in scores.values())
    hi = max(float(s.max()) for s in scores.values())
    bins = np.linspace(lo, hi, 60)
    for name, s in scores.items():
        ax.hist(s, bins=bins, density=True, histtype="step", linewidth=1.6, label=f"{name} ({len(s)})")
    if cutoff is not None:
        ax.axvline(cutoff, color="black", linestyle="--", label=f"cut-off {cutoff:.1f}")
    ax.set_xlabel("shift score (free energy of the logits; higher: less familiar)")
    ax.set_ylabel("density")
    ax.set_title(f"Shift guard: {catalog} against photos unlike the training set's")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "shift-scores.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for g, rows in band.items():
        xs = [(r["low"] + r["high"]) / 2 for r in rows if r["precision"] is not None and r["n"] >= 10]
        ys = [r["precision"] for r in rows if r["precision"] is not None and r["n"] >= 10]
        ax.plot(xs, ys, marker="o", label=g)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="calibrated")
    ax.axhline(0.9, color="black", linestyle="--", linewidth=0.8, label="band floor 0.90")
    ax.set_xlabel("calibrated confidence (band centre; bands of 10+ values)")
    ax.set_ylabel("precision of the chosen value")
    ax.set_title(f"Precision by confidence band ({catalog})")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "precision-by-band.png", dpi=110)
    plt.close(fig)


def run_bundle(
    path: Path, sets: list[LabelledPhotos], backend: str
) -> tuple[TaggingEngine, dict[str, list[ImageTags]]]:
    engine = load_engine(path, backend, device="cpu")
    return engine, {s.name: tag_all(engine, s) for s in sets}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "deploy" / "demo" / "starter.safetensors")
    ap.add_argument("--baseline", type=Path, help="a second bundle run side by side (e.g. before the guard)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--split", choices=("val", "test"), default="val", help="the catalog split (test: read once)")
    ap.add_argument("--more", type=int, default=700, help="photos of fashion-products-more to use (0: none)")
    ap.add_argument("--backend", default="onnxruntime")
    ap.add_argument("--out", type=Path, help="directory for the PNGs")
    args = ap.parse_args(argv)
    if not (args.data / "fashion-products").is_dir():
        print(f"no data at {args.data} (../shared/data beside the checkout)", file=sys.stderr)
        return 2

    engine = load_engine(args.model, args.backend, device="cpu")
    groups = [g.name for g in engine.bundle.taxonomy.classifier_groups if not g.multi_label]
    sets = [
        catalog_split(args.data / "fashion-products", engine, args.split, None),
        cc0_photos(args.data / "clothing-cc0"),
        catalog_split(args.data / "fashion-products-fullsize", engine, None, None),
        LabelledPhotos("coco128", sorted((args.data / "coco128" / "images").rglob("*.jpg"))),
    ]
    if args.more:
        sets.insert(3, catalog_split(args.data / "fashion-products-more", engine, None, args.more))
    runs = {"model": (engine, {s.name: tag_all(engine, s) for s in sets})}
    if args.baseline:
        runs["baseline"] = run_bundle(args.baseline, sets, args.backend)

    by_set = {s.name: s for s in sets}
    for label, (eng, tagged) in runs.items():
        guard = eng.bundle.shift_guard
        print(f"\n== {label}: {eng.model_version}  (guard cut-off: {guard.cutoff if guard else 'none'})")
        for name, tags in tagged.items():
            f = figures(by_set[name], tags, groups)
            cells = []
            for g in groups:
                gf = f[g]
                assert isinstance(gf, dict)
                if "precision" in gf:
                    p = gf["precision"]
                    cells.append(f"{g} {gf['auto_filled']:.2f}/{'-' if p is None else f'{p:.3f}'} (n={gf['n']})")
            head = f"  {name:30s} photos {f['photos']:5d}  unfamiliar {f['unfamiliar']:.3f}"
            print(f"{head}  any auto-filled {f['any_auto_filled']:.3f}")
            for i in range(0, len(cells), 4):
                print("      " + "   ".join(cells[i : i + 4]))
    engine_tags = runs["model"][1]
    catalog = sets[0].name
    scores = {n: np.array([t.shift_score for t in ts], dtype=np.float64) for n, ts in engine_tags.items()}
    print("\nAUROC of the shift score, catalog split against:")
    for name, s in scores.items():
        if name != catalog:
            print(f"  {name:30s} {auroc(scores[catalog], s):.3f}")
    sizes = [len(engine.bundle.taxonomy.group(g).values) for g in groups]
    print(f"\nthe score's own cost: {score_cost_us(groups, sizes):.2f} us per image (numpy, batches of 256)")
    if args.out:
        band = {}
        cat_tags = engine_tags[catalog]
        for g in groups:
            truth = by_set[catalog].truth[g]
            idx = [i for i, v in enumerate(truth) if v is not None and cat_tags[i].attributes.get(g)]
            conf = np.array([cat_tags[i].attributes[g][0][1] for i in idx])
            right = np.array([cat_tags[i].attributes[g][0][0] == truth[i] for i in idx])
            band[g] = band_precision(conf, right)
        guard = engine.bundle.shift_guard
        plot(scores, guard.cutoff if guard else None, catalog, band, args.out)
        print(f"wrote {args.out / 'shift-scores.png'} and {args.out / 'precision-by-band.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
