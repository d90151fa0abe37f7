"""What the guarded auto-fill rule costs in coverage against the rule before it, for one bundle, side by side.

Issue 26 asks that each group's auto-fill coverage on the test split stay within 5 points of "today's rule", the one
before band floors, confidence floors and the shift guard: thresholds by the cumulative precision alone (the same
target, confidence level and minimum of values accepted). This refits that rule's thresholds on the bundle's own
validation predictions (every serving set joined, as its calibration was fitted; the bundle's temperatures), then
measures on one split of one set, the same predictions decoded both ways:
- before: those thresholds, no floor, no guard;
- now: the bundle as it serves (its thresholds, the taxonomy's floors, the shift guard).

    .venv/bin/python -m tests.benchmarks.autofill_rules --bundle deploy/demo/starter.safetensors \\
        --fit ../shared/data/fashion-products --fit ../shared/data/fashion-products-more \\
        --data ../shared/data/fashion-products --split test

Fitting reads validation only; `--split test` reads the test split to measure, never to choose.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from learner.datasets.labelled import load_labelled_set
from learner.evaluation.evaluate import GroupPredictions, predict_samples, split_rule_of
from learner.evaluation.selective import DEFAULT_CONFIDENCE_LEVEL, DEFAULT_MIN_ACCEPTED, choose_autofill_threshold
from learner.inference.decoding import ValueDecoder
from learner.model.bundle import ModelBundle, load_bundle
from learner.model.shift_guard import SCORE_KEY
from learner.model.taxonomy import AttributeGroup


def decoder_inputs(predictions: Mapping[str, GroupPredictions], scores: np.ndarray) -> dict[str, np.ndarray]:
    return {**{g: p.probs for g, p in predictions.items()}, SCORE_KEY: scores}


def rule_before(
    bundle: ModelBundle, fit: Mapping[str, GroupPredictions], groups: Sequence[AttributeGroup], target: float
) -> dict[str, float]:
    """Per group, the threshold of the rule before floors and the guard, fitted on `fit` (decoded with the bundle's
    temperatures and hierarchy)."""
    decided = ValueDecoder(bundle.taxonomy, bundle.temperatures)({g: p.probs for g, p in fit.items()})
    out = {}
    for g in groups:
        known = fit[g.name].known()
        right = decided.chosen[g.name][known] == fit[g.name].targets[known]
        choice = choose_autofill_threshold(
            decided.confidence[g.name][known],
            right,
            g.target_precision if g.target_precision is not None else target,
            DEFAULT_CONFIDENCE_LEVEL,
            DEFAULT_MIN_ACCEPTED,
            band_floor=0.0,
            confidence_floor=0.0,
        )
        out[g.name] = choice.threshold
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--fit", type=Path, action="append", required=True, help="a set whose val split is fitted on")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--target", type=float, default=0.97)
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    rule = split_rule_of(bundle)
    groups = [g for g in bundle.taxonomy.classifier_groups if not g.multi_label]
    fit_samples = [s for d in args.fit for s in load_labelled_set(d, bundle.taxonomy).split(rule, "val")]
    print(f"fitting the rule before on {len(fit_samples)} validation photos ...", flush=True)
    before = rule_before(bundle, predict_samples(bundle, fit_samples, bundle.taxonomy), groups, args.target)
    samples = load_labelled_set(args.data, bundle.taxonomy).split(rule, args.split)
    print(f"measuring on {len(samples)} photos of the {args.split} split of {args.data} ...", flush=True)
    measured = predict_samples(bundle, samples, bundle.taxonomy)
    inputs = decoder_inputs(measured, measured.shift_scores)
    old = ValueDecoder(bundle.taxonomy, bundle.temperatures, before)  # no shift guard
    old.confidence_floors = dict.fromkeys(old.confidence_floors, 0.0)  # and no floor: the rule before
    then, now = old(inputs), ValueDecoder.for_bundle(bundle)(inputs)
    print(f"{'group':<15}{'threshold before':>17}{'now':>8}{'auto-filled before':>20}{'now':>8}{'change':>9}")
    for g in groups:
        known = measured[g.name].known()
        a, b = then.auto_filled[g.name][known].mean(), now.auto_filled[g.name][known].mean()
        thr_then, thr_now = before[g.name], bundle.autofill_thresholds.get(g.name, 2.0)
        shown = [f"{t:.3f}" if t <= 1 else "never" for t in (thr_then, thr_now)]
        print(f"{g.name:<15}{shown[0]:>17}{shown[1]:>8}{a:>19.1%}{b:>9.1%}{100 * (b - a):>+8.1f} pts")


if __name__ == "__main__":
    main()
