"""How often does the dominant colour under a garment's mask agree with the catalog's baseColour label, compared with
the classifier's colour? Fashion-products photos, VALIDATION split only (SplitRule defaults, or the rule stored in
the bundle given), never test.

No fashion mask detector can be obtained offline, so the studio backdrop stands in for the mask: a pixel is the
garment when some channel is below 235 of 255 (`learner.inference.colour.studio_foreground`, the classifier's
foreground rule), on the photo as stored in ../shared/data/fashion-products. Its dominant colour is
taken in the basic palette (`BASIC_PALETTE`, 16 names that are baseColour values) by nearest CIELAB colour and
majority (`dominant_colour`). A label outside the palette (Multi, Silver, Grey Melange, ...) can never be matched
by the palette, so figures are given on all images and on the images whose label is a palette name.

    nice -n 15 .venv/bin/python -m tests.benchmarks.mask_colour [--bundle B.safetensors] [--limit N]

With --bundle, the classifier's top-1 baseColour on the same images is scored too (torch, CPU).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from learner.datasets.labelled import SplitRule, load_labelled_set
from learner.inference.colour import BASIC_PALETTE, dominant_colour, palette_for, studio_foreground
from learner.model.taxonomy import load_taxonomy

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fashion-products"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=0, help="first N validation images (0: all)")
    args = parser.parse_args()

    taxonomy = load_taxonomy("fashion-products")
    group = taxonomy.group("baseColour")
    rule = SplitRule()
    if args.bundle is not None:
        from learner.model.manifest import read_manifest

        stored = (read_manifest(args.bundle).get("lineage") or {}).get("split_rule")
        rule = SplitRule.from_dict(stored) if stored else rule
    samples = [
        s for s in load_labelled_set(args.data, taxonomy).split(rule, "val") if s.labels.get("baseColour") is not None
    ]
    samples = samples[: args.limit] if args.limit else samples
    palette = palette_for(group.values, BASIC_PALETTE)
    truth = [group.values[int(s.labels["baseColour"])] for s in samples]  # type: ignore[arg-type]

    mask_guess: list[str | None] = []
    empty = 0
    for s in samples:
        with Image.open(s.image_path) as img:
            pixels = np.asarray(img.convert("RGB"))
        mask = studio_foreground(pixels)
        if not mask.any():  # a white garment on white: the whole photo
            empty += 1
            mask = np.ones(mask.shape, dtype=bool)
        found = dominant_colour(pixels, mask, palette)
        mask_guess.append(found[0] if found else None)

    in_palette = [i for i, t in enumerate(truth) if t in palette]
    report: dict[str, object] = {
        "split": "val",
        "images": len(samples),
        "images_label_in_palette": len(in_palette),
        "foreground_empty": empty,
        "mask_colour_agreement": _share(mask_guess, truth, range(len(truth))),
        "mask_colour_agreement_label_in_palette": _share(mask_guess, truth, in_palette),
    }
    if args.bundle is not None:
        from learner.inference.backends import load_engine

        engine = load_engine(args.bundle, "torch", device="cpu")
        tags = engine.tag_bytes([s.image_path.read_bytes() for s in samples])
        top = [t.attributes["baseColour"][0][0] if hasattr(t, "attributes") else None for t in tags]
        report["classifier_agreement"] = _share(top, truth, range(len(truth)))
        report["classifier_agreement_label_in_palette"] = _share(top, truth, in_palette)
    report["mask_confusions"] = Counter(
        f"{truth[i]} -> {mask_guess[i]}" for i in range(len(truth)) if truth[i] != mask_guess[i]
    ).most_common(8)
    print(json.dumps(report, indent=2))


def _share(guess: list[str | None], truth: list[str], idx: object) -> float:
    chosen = list(idx)  # type: ignore[call-overload]
    return round(sum(guess[i] == truth[i] for i in chosen) / max(1, len(chosen)), 4)


if __name__ == "__main__":
    main()
