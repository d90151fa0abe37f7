"""Which rule should choose the auto-fill thresholds? A cross-fit study on the VALIDATION split only, never test.

Predicts the validation split once with the bundle, fits the temperatures on it, then for each candidate rule
(confidence level of the precision bound, minimum values accepted) repeatedly fits the threshold on a random half
of the split and measures coverage and precision on the other half: what the rule promises against what the
catalog would then get. A rule is good when its held-out precision averages the target without giving up
coverage; `learner.evaluation.selective` documents the chosen default.

    nice -n 5 .venv/bin/python -m tests.benchmarks.autofill_levels --bundle deploy/demo/starter.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from learner.datasets.labelled import load_labelled_set
from learner.evaluation.calibration import fit_temperature
from learner.evaluation.evaluate import predict_bundle, split_rule_of
from learner.evaluation.selective import choose_autofill_threshold, coverage_at
from learner.inference.decoding import ValueDecoder
from learner.model.bundle import load_bundle

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "fashion-products"
WIDTHS = (14, 6, 5, 10, 11, 8, 7, 14)
RULES = [(0.5, 1), (0.5, 50), (0.5, 100), (0.75, 50), (0.95, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--repeats", type=int, default=60)
    args = parser.parse_args()

    bundle = load_bundle(args.bundle)
    data = load_labelled_set(args.data, bundle.taxonomy)
    preds, n = predict_bundle(bundle, data, "val", split_rule_of(bundle), 64, "cpu")
    groups = [g.name for g in bundle.taxonomy.classifier_groups if not g.multi_label and g.name in preds]
    temperatures = {}
    for name in groups:
        known = preds[name].known()
        temperatures[name] = fit_temperature(preds[name].probs[known], preds[name].targets[known].astype(np.int64))
    decoded = ValueDecoder(bundle.taxonomy, temperatures)({name: p.probs for name, p in preds.items()})
    rng = np.random.default_rng(0)
    print(f"{n} validation images; threshold fitted on one random half, measured on the other, {args.repeats} times")
    header = ("group", "level", "min", "coverage", "precision", "p10", "never", "full-val cov")
    print("".join(f"{h:<14}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(zip(header, WIDTHS, strict=True))))
    for name in groups:
        known = preds[name].known()
        confidence = decoded.confidence[name][known]
        correct = decoded.chosen[name][known] == preds[name].targets[known].astype(np.int64)
        for level, min_accepted in RULES:
            coverage, precision = [], []
            for _ in range(args.repeats):
                order = rng.permutation(len(confidence))
                fit, held = order[: len(order) // 2], order[len(order) // 2 :]
                choice = choose_autofill_threshold(confidence[fit], correct[fit], args.target, level, min_accepted)
                r = coverage_at(confidence[held], correct[held], choice.threshold)
                coverage.append(r["coverage"])
                precision.append(np.nan if r["precision"] is None else r["precision"])
            p = np.array(precision)
            filled = p[np.isfinite(p)]
            whole = choose_autofill_threshold(confidence, correct, args.target, level, min_accepted)
            mean = f"{filled.mean():.4f}" if len(filled) else "-"
            p10 = f"{np.percentile(filled, 10):.4f}" if len(filled) else "-"
            print(
                f"{name:<14}{level:>6.2f}{min_accepted:>5}{np.mean(coverage):>10.3f}{mean:>11}{p10:>8}"
                f"{1 - len(filled) / len(p):>7.2f}{whole.coverage:>14.3f}"
            )


if __name__ == "__main__":
    main()
