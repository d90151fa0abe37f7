"""Photos, title and both, per group, on the VALIDATION split (never test): top-1, coverage at 0.99 precision, the
fused auto-fill figures, the same with the attribute words masked out of the titles, and the title/photo conflicts
on titles whose value word (colour, gender, ...) is swapped for another value.

Every figure is `learner.evaluation.source_comparison.compare_sources`'s (what `evaluate` prints), so there is one
definition of each; this benchmark only chooses what the fusion is fitted on. The image model is a bundle (default:
the shipped starter) predicting the validation split of its own split rule; the title model is the bundle's, or one
trained on the train split (learner/training/title.py, seed 0) when the bundle has none. The fusion is fitted by
`learner.evaluation.fusion.fit_bundle_fusion` (as `models calibrate` and `models add-title` fit it) on validation,
so its in-sample figures are optimistic: the 2-fold cross-fit (fit on one half, measure on the other, both halves,
pooled) is the honest estimate.

    nice -n 5 .venv/bin/python -m tests.benchmarks.fusion_validation
    nice -n 5 .venv/bin/python -m tests.benchmarks.fusion_validation --bundle my.safetensors --cache /tmp/fusion
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from learner.datasets.labelled import load_labelled_set
from learner.evaluation.evaluate import GroupPredictions, Predictions, predict_bundle, split_rule_of
from learner.evaluation.fusion import fit_bundle_fusion
from learner.evaluation.source_comparison import compare_sources
from learner.inference.decoding import ValueDecoder
from learner.model.bundle import ModelBundle, load_bundle
from learner.model.fusion import Fusion
from learner.model.shift_guard import SCORE_KEY

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".." / "shared" / "data" / "fashion-products"


class Bench:
    """A bundle with a title model, the raw photo predictions and the titles of its validation split."""

    def __init__(self, bundle_path: Path, data: Path, cache: Path | None, seed: int, title_column: str) -> None:
        bundle = load_bundle(bundle_path)
        # a bundle made before titles has a taxonomy without the title column: the set's column is named here
        if bundle.taxonomy.title_column is None:
            bundle.taxonomy = dataclasses.replace(bundle.taxonomy, title_column=title_column)
        labelled = load_labelled_set(data / "labels.csv", bundle.taxonomy)
        rule = split_rule_of(bundle)
        self.titles: list[str | None] = [s.title for s in labelled.split(rule, "val")]
        self.groups = list(ValueDecoder.for_bundle(bundle).groups)
        raw_file = cache / "val_predictions.npz" if cache else None
        if raw_file is not None and raw_file.exists():
            stored = np.load(raw_file)
            self.raw = {k[2:]: stored[k] for k in stored.files if k.startswith("p.")}
            self.targets = {k[2:]: stored[k].astype(np.int64) for k in stored.files if k.startswith("t.")}
            self.scores = stored["shift"]
        else:
            predictions, _ = predict_bundle(bundle, labelled, "val", rule, 32, "auto")
            self.raw = {g.name: predictions[g.name].probs for g in self.groups}
            self.targets = {g.name: predictions[g.name].targets.astype(np.int64) for g in self.groups}
            self.scores = predictions.shift_scores
            if raw_file is not None:
                raw_file.parent.mkdir(parents=True, exist_ok=True)
                arrays = {f"p.{k}": v for k, v in self.raw.items()} | {f"t.{k}": v for k, v in self.targets.items()}
                np.savez(raw_file, shift=self.scores, **arrays)
        if bundle.title_model is None:
            from learner.training.title import train_title_model

            print("the bundle has no title model: training one on the train split")
            train, val = labelled.split(rule, "train"), labelled.split(rule, "val")
            bundle.title_model = train_title_model(train, val, bundle.taxonomy, seed=seed)
        self.bundle: ModelBundle = bundle

    def unfamiliar(self) -> int:
        """Validation photos the bundle's shift guard finds unfamiliar."""
        decided = ValueDecoder.for_bundle(self.bundle)(
            {**self.raw, SCORE_KEY: self.scores} if len(self.scores) else self.raw
        )
        return int(decided.unfamiliar.sum()) if decided.unfamiliar is not None else 0

    def predictions(self, rows: np.ndarray) -> Predictions:
        p = Predictions(
            {g.name: GroupPredictions(g, self.raw[g.name][rows], self.targets[g.name][rows]) for g in self.groups}
        )
        p.shift_scores = self.scores[rows] if len(self.scores) else self.scores
        return p

    def fold(self, fit_rows: np.ndarray, rows: np.ndarray) -> tuple[Fusion | None, dict[str, Any]]:
        """The fusion fitted on `fit_rows`, and compare_sources' figures on `rows` with it."""
        fusion = fit_bundle_fusion(self.bundle, self.predictions(fit_rows), [self.titles[i] for i in fit_rows])
        self.bundle.fusion = fusion
        return fusion, compare_sources(self.bundle, self.predictions(rows), [self.titles[i] for i in rows])


def pooled(comparisons: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """compare_sources' results on disjoint rows as one: shares weighted by the rows they are shares of (top-1,
    coverage and the oracle coverage by labelled products, precision by auto-filled ones, flag rates by the titles
    they were measured on), counts summed."""
    sources: dict[str, dict[str, dict[str, Any]]] = {}
    for source in comparisons[0]["sources"]:
        sources[source] = {}
        for group in comparisons[0]["sources"][source]:
            parts = [c["sources"][source][group] for c in comparisons if c["sources"][source][group].get("n")]
            n = sum(f["n"] for f in parts)
            if not n:
                sources[source][group] = {"n": 0}
                continue
            filled = sum(f["coverage"] * f["n"] for f in parts)
            sources[source][group] = {
                "n": n,
                **{k: sum(f[k] * f["n"] for f in parts) / n for k in ("top1", "coverage", "coverage_at_99")},
                "precision": sum(f["precision"] * f["coverage"] * f["n"] for f in parts if f["precision"] is not None)
                / filled
                if filled
                else None,
                "conflicts": sum(f["conflicts"] for f in parts),
            }
    swaps: dict[str, dict[str, Any]] = {}
    for group in {g for c in comparisons for g in c["swaps"]}:
        parts = [c["swaps"][group] for c in comparisons if group in c["swaps"]]
        swapped, clean = sum(s["swapped"] for s in parts), sum(s["clean"] for s in parts)
        swaps[group] = {
            "swapped": swapped,
            "flagged": sum(s["flagged"] * s["swapped"] for s in parts) / swapped,
            "clean": clean,
            "clean_flagged": sum((s["clean_flagged"] or 0.0) * s["clean"] for s in parts) / clean if clean else None,
        }
    return {"products": sum(c["products"] for c in comparisons), "sources": sources, "swaps": swaps}


def show(title: str, comparison: Mapping[str, Any]) -> None:
    sources = comparison["sources"]
    print(f"\n== {title}")
    print(
        f"{'group':15s} {'n':>5s} | top-1 photos title fused | cov@0.99 photos title fused | "
        "fused auto-fill cov/prec | conflicts | masked top-1 title fused"
    )
    for g, fused in sources["fused"].items():
        if not fused.get("n"):
            continue
        t = {s: sources[s][g]["top1"] for s in sources}
        c = {s: sources[s][g]["coverage_at_99"] for s in ("photos", "title", "fused")}
        prec = float("nan") if fused["precision"] is None else fused["precision"]
        masked = f"{t['title_masked']:.3f} {t['fused_masked']:.3f}" if "fused_masked" in t else "-"
        print(
            f"{g:15s} {fused['n']:5d} | {t['photos']:.3f} {t['title']:.3f} {t['fused']:.3f} | "
            f"{c['photos']:.3f} {c['title']:.3f} {c['fused']:.3f} | {fused['coverage']:.3f}/{prec:.3f} | "
            f"{fused['conflicts'] / fused['n']:.3f} | {masked}"
        )
    for g, s in sorted(comparison["swaps"].items()):
        clean = "-" if s["clean_flagged"] is None else f"{s['clean_flagged']:.4f}"
        print(
            f"{g} word swapped: {s['flagged']:.4f} of {s['swapped']} swapped titles flagged; "
            f"titles as written: {clean} of {s['clean']} flagged"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=ROOT / "deploy" / "demo" / "starter.safetensors")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--cache", type=Path, help="keep the bundle's validation predictions here between runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--title-column", default="productDisplayName", help="when the bundle's taxonomy names none")
    args = parser.parse_args()
    bench = Bench(args.bundle, args.data, args.cache, args.seed, args.title_column)
    n = len(bench.titles)
    print(f"validation products: {n}, photos the shift guard finds unfamiliar: {bench.unfamiliar()}")

    everything = np.arange(n)
    fusion, in_sample = bench.fold(everything, everything)
    if fusion is None:
        raise SystemExit("no fusion could be fitted: the validation split has no titles")
    show("in-sample: fitted and measured on all of validation", in_sample)

    half = np.random.default_rng(args.seed).permutation(n) % 2 == 0
    folds = [(np.flatnonzero(half), np.flatnonzero(~half)), (np.flatnonzero(~half), np.flatnonzero(half))]
    show("2-fold cross-fit on validation", pooled([bench.fold(fit_rows, rows)[1] for fit_rows, rows in folds]))
    print("\nfusion fitted on all of validation:")
    for g, gf in fusion.groups.items():
        print(
            f"  {g:15s} photos x{gf.image_weight:.2f} title x{gf.title_weight:.2f} bias={'yes' if gf.bias else 'no'} "
            f"threshold {gf.threshold:.3f} conflict: title >= {gf.conflict_title:.3f}, "
            f"photos <= {gf.conflict_image:.4f}"
        )


if __name__ == "__main__":
    main()
