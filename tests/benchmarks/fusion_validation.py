"""Photos, title and both, per group, on the VALIDATION split (never test): top-1, coverage at 0.99 precision, the
fused auto-fill figures, and the title/photo conflicts on titles whose colour (and, separately, gender) word is
swapped for another value.

The image model is a bundle (default: the shipped starter) predicting the validation split of its own split rule;
the title model is the bundle's, or one trained on the train split (learner/training/title.py, seed 0) when the
bundle has none. The fusion (learner/evaluation/fusion.py) is fitted on validation, so its in-sample figures are
optimistic: the 2-fold cross-fit (fit on one half, measure on the other, both halves) is the honest estimate.

    nice -n 5 .venv/bin/python -m tests.benchmarks.fusion_validation
    nice -n 5 .venv/bin/python -m tests.benchmarks.fusion_validation --bundle my.safetensors --cache /tmp/fusion
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from learner.datasets.labelled import IGNORE_INDEX, load_labelled_set
from learner.evaluation.evaluate import predict_bundle, split_rule_of
from learner.evaluation.fusion import fit_fusion, value_word_swaps
from learner.evaluation.selective import precision_coverage_curve
from learner.inference.decoding import ValueDecoder
from learner.inference.product_decision import decide_products
from learner.model.bundle import load_bundle
from learner.model.fusion import Fusion
from learner.model.shift_guard import SCORE_KEY
from learner.model.title_model import TitleModel

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data" / "fashion-products"
Probs = dict[str, np.ndarray]


def cov_at(confidence: np.ndarray, correct: np.ndarray, precision: float = 0.99) -> float:
    """The largest share auto-filled with the accepted values' precision at least `precision`."""
    curve = precision_coverage_curve(confidence, correct, points=10**6)
    ok = [c for c, p in zip(curve["coverage"], curve["precision"], strict=True) if p >= precision]
    return max(ok, default=0.0)


class Bench:
    def __init__(self, bundle_path: Path, data: Path, cache: Path | None, seed: int, title_column: str) -> None:
        bundle = load_bundle(bundle_path)
        # a bundle made before titles has a taxonomy without the title column: the set's column is named here
        self.taxonomy = bundle.taxonomy
        if self.taxonomy.title_column is None:
            self.taxonomy = dataclasses.replace(self.taxonomy, title_column=title_column)
        labelled = load_labelled_set(data / "labels.csv", self.taxonomy)
        rule = split_rule_of(bundle)
        val = labelled.split(rule, "val")
        self.titles: list[str | None] = [s.title for s in val]
        raw_file = cache / "val_predictions.npz" if cache else None
        if raw_file is not None and raw_file.exists():
            stored = np.load(raw_file)
            raw = {k[2:]: stored[k] for k in stored.files if k.startswith("p.")}
            targets = {k[2:]: stored[k] for k in stored.files if k.startswith("t.")}
            scores = stored["shift"]
        else:
            predictions, _ = predict_bundle(bundle, labelled, "val", rule, 32, "auto")
            raw = {k: v.probs for k, v in predictions.items()}
            targets = {k: v.targets for k, v in predictions.items() if not v.group.multi_label}
            scores = predictions.shift_scores
            if raw_file is not None:
                raw_file.parent.mkdir(parents=True, exist_ok=True)
                arrays = {f"p.{k}": v for k, v in raw.items()} | {f"t.{k}": v for k, v in targets.items()}
                np.savez(raw_file, shift=scores, **arrays)
        self.decoder = ValueDecoder.for_bundle(bundle)
        self.groups = list(self.decoder.groups)
        photos = self.decoder({**raw, SCORE_KEY: scores} if len(scores) else raw)
        self.photos = photos
        self.unfamiliar = photos.unfamiliar if photos.unfamiliar is not None else np.zeros(len(val), dtype=bool)
        self.image = {n: np.where(self.unfamiliar[:, None], np.nan, p) for n, p in photos.probs.items()}
        self.labels = {g.name: targets[g.name].astype(np.int64) for g in self.groups}
        self.title_model = bundle.title_model or self._train_title_model(labelled, rule, seed)
        self.title = {g.name: self.title_model.probabilities(self.titles)[g.name] for g in self.groups}
        self.title_alone = ValueDecoder(self.taxonomy)(self.title)
        self.image_thresholds = bundle.autofill_thresholds

    def _train_title_model(self, labelled: Any, rule: Any, seed: int) -> TitleModel:
        from learner.training.title import train_title_model

        print("the bundle has no title model: training one on the train split")
        return train_title_model(labelled.split(rule, "train"), labelled.split(rule, "val"), self.taxonomy, seed=seed)

    def fit(self, rows: np.ndarray) -> Fusion:
        swaps = {}
        for g in self.groups:
            found, swapped = value_word_swaps([self.titles[i] for i in rows], g, self.labels[g.name][rows], seed=1)
            if len(found):
                swaps[g.name] = (found, self.title_model.probabilities(swapped)[g.name])
        return fit_fusion(
            _rows(self.image, rows),
            _rows(self.title, rows),
            _rows(self.labels, rows),
            self.taxonomy,
            image_thresholds=self.image_thresholds,
            swaps=swaps,
        )

    def figures(self, rows: np.ndarray, fusion: Fusion) -> dict[str, dict[str, Any]]:
        d = decide_products(
            _rows(self.image, rows), _rows(self.title, rows), self.decoder, fusion, self.title_model.autofill_thresholds
        )
        out = {}
        for g in self.groups:
            y = self.labels[g.name][rows]
            k = y != IGNORE_INDEX
            chosen = {
                "photos": (self.photos.chosen[g.name][rows], self.photos.confidence[g.name][rows]),
                "title": (self.title_alone.chosen[g.name][rows], self.title_alone.confidence[g.name][rows]),
                "fused": (d.chosen[g.name], d.confidence[g.name]),
            }
            filled = d.auto_filled[g.name][k]
            right = d.chosen[g.name][k] == y[k]
            out[g.name] = {
                "n": int(k.sum()),
                "top1": {s: float((c[k] == y[k]).mean()) for s, (c, _) in chosen.items()},
                "cov99": {s: cov_at(conf[k], c[k] == y[k]) for s, (c, conf) in chosen.items()},
                "autofill": (float(filled.mean()), float(right[filled].mean()) if filled.any() else float("nan")),
                "conflicts": float(d.conflict[g.name].mean()),
            }
        return out

    def swapped(
        self, rows: np.ndarray, fusion: Fusion, swap: Callable[[str], str | None], group: str
    ) -> dict[str, float]:
        """Share of the familiar products whose title the swap changes flagged in `group` (and in any group), with
        their swapped and their clean titles."""
        kept, texts = [], []
        for i in rows:
            text = self.titles[i]
            changed = swap(text) if text else None
            if changed is not None and not self.unfamiliar[i]:
                kept.append(i)
                texts.append(changed)
        at = np.asarray(kept, dtype=np.int64)
        probs = self.title_model.probabilities(texts)
        out: dict[str, float] = {"products": float(len(at))}
        for name, titles in (
            ("swapped", {g.name: probs[g.name] for g in self.groups}),
            ("clean", _rows(self.title, at)),
        ):
            d = decide_products(
                _rows(self.image, at), titles, self.decoder, fusion, self.title_model.autofill_thresholds
            )
            out[f"{name}_flagged"] = float(d.conflict[group].mean())
            out[f"{name}_flagged_any_group"] = float(np.any([d.conflict[g.name] for g in self.groups], axis=0).mean())
        return out


def _rows(m: Mapping[str, np.ndarray], rows: np.ndarray) -> Probs:
    return {k: v[rows] for k, v in m.items()}


def word_swapper(
    values: Sequence[str], seed: int, pairs: Mapping[str, str] | None = None
) -> Callable[[str], str | None]:
    """A title's first word (or words) naming one of `values` replaced: by `pairs[word]` when given, else by another
    value at random that neither contains it nor is contained in it (Blue is not swapped for Navy Blue)."""
    rng = np.random.default_rng(seed)
    longest_first = sorted(values, key=len, reverse=True)

    def swap(title: str) -> str | None:
        for value in longest_first:
            found = re.search(rf"\b{re.escape(value)}\b", title, re.IGNORECASE)
            if found is None:
                continue
            if pairs is not None:
                other = pairs.get(value.lower())
                if other is None:
                    continue
            else:
                own = set(value.lower().split())
                others = [v for v in values if not (set(v.lower().split()) <= own or own <= set(v.lower().split()))]
                other = str(rng.choice(others))
            return title[: found.start()] + other + title[found.end() :]
        return None

    return swap


GENDER_PAIRS = {"men": "Women", "women": "Men", "boys": "Girls", "girls": "Boys", "unisex": "Women"}


def show(title: str, figures: Mapping[str, Mapping[str, Any]]) -> None:
    print(f"\n== {title}")
    print(
        f"{'group':15s} {'n':>5s} | top-1 photos title fused | cov@0.99 photos title fused | "
        "fused auto-fill cov/prec | conflicts"
    )
    for g, f in figures.items():
        t, c = f["top1"], f["cov99"]
        print(
            f"{g:15s} {f['n']:5d} | {t['photos']:.3f} {t['title']:.3f} {t['fused']:.3f} | "
            f"{c['photos']:.3f} {c['title']:.3f} {c['fused']:.3f} | {f['autofill'][0]:.3f}/{f['autofill'][1]:.3f} | "
            f"{f['conflicts']:.3f}"
        )


def weighted(parts: Sequence[tuple[dict[str, Any], int]]) -> dict[str, Any]:
    total = sum(n for _, n in parts)
    first = parts[0][0]
    out: dict[str, Any] = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = weighted([(p[key], n) for p, n in parts])
        elif isinstance(value, tuple):
            out[key] = tuple(sum(p[key][j] * n for p, n in parts) / total for j in range(len(value)))
        elif key == "n":
            out[key] = sum(p[key] for p, _ in parts)
        else:
            out[key] = sum(p[key] * n for p, n in parts) / total
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "deploy" / "demo" / "starter.safetensors")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cache", type=Path, help="keep the bundle's validation predictions here between runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--title-column", default="productDisplayName", help="when the bundle's taxonomy names none")
    args = parser.parse_args()
    bench = Bench(args.bundle, args.data, args.cache, args.seed, args.title_column)
    n = len(bench.titles)
    print(f"validation products: {n}, photos the shift guard finds unfamiliar: {int(bench.unfamiliar.sum())}")
    colour = bench.taxonomy.group("baseColour").values
    genders = bench.taxonomy.group("gender").values
    swaps = {
        "colour": (word_swapper(colour, 0), "baseColour"),
        "gender": (word_swapper(genders, 0, GENDER_PAIRS), "gender"),
    }

    everything = np.arange(n)
    fusion = bench.fit(everything)
    show("in-sample: fitted and measured on all of validation", bench.figures(everything, fusion))
    for name, (swap, group) in swaps.items():
        print(
            f"{name} word swapped (in-sample):",
            {k: round(v, 4) for k, v in bench.swapped(everything, fusion, swap, group).items()},
        )

    half = np.random.default_rng(args.seed).permutation(n) % 2 == 0
    folds = [(np.flatnonzero(half), np.flatnonzero(~half)), (np.flatnonzero(~half), np.flatnonzero(half))]
    fitted = [(bench.fit(fit_rows), rows) for fit_rows, rows in folds]
    show("2-fold cross-fit on validation", weighted([(bench.figures(rows, f), len(rows)) for f, rows in fitted]))
    for name, (swap, group) in swaps.items():
        parts = [(bench.swapped(rows, f, swap, group), len(rows)) for f, rows in fitted]
        print(f"{name} word swapped (cross-fit):", {k: round(v, 4) for k, v in weighted(parts).items()})
    print("\nfusion fitted on all of validation:")
    for g, gf in fusion.groups.items():
        print(
            f"  {g:15s} photos x{gf.image_weight:.2f} title x{gf.title_weight:.2f} bias={'yes' if gf.bias else 'no'} "
            f"threshold {gf.threshold:.3f} conflict: title >= {gf.conflict_title:.3f}, "
            f"photos <= {gf.conflict_image:.4f}"
        )


if __name__ == "__main__":
    main()
