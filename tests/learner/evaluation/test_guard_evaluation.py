"""What `shelfsight evaluate` reports of the serving decision: auto-fill figures after the thresholds, floors and
shift guard together, the precision of the lowest band, and what the guard withheld."""

from __future__ import annotations

import numpy as np

from learner.evaluation.evaluate import GroupPredictions, Predictions, compute_metrics
from learner.evaluation.report import build_report, render_text
from learner.inference.decoding import ValueDecoder
from learner.model.shift_guard import ShiftGuard
from learner.model.taxonomy import parse_taxonomy

TAXONOMY = """
schema_version: 1
name: tiny
groups:
  colour:
    kind: single
    values: [a, b]
"""


def test_evaluate_reports_what_the_guard_withheld_and_auto_fill_figures_after_it() -> None:
    taxonomy = parse_taxonomy(TAXONOMY)
    n = 200
    probs = np.tile([0.95, 0.05], (n, 1))
    targets = np.zeros(n, dtype=np.int64)
    targets[:20] = 1  # the first 20 are wrong
    preds = Predictions({"colour": GroupPredictions(taxonomy.group("colour"), probs, targets)})
    preds.shift_scores = np.where(np.arange(n) < 20, -5.0, -20.0)  # and also the least familiar
    guard = ShiftGuard(-10.0, tuple(np.linspace(-25, -5, 11)), 0.02, 0.0, ("colour",))

    guarded = compute_metrics(preds, decoder=ValueDecoder(taxonomy, {}, {"colour": 0.9}, shift_guard=guard))
    open_ = compute_metrics(preds, decoder=ValueDecoder(taxonomy, {}, {"colour": 0.9}))

    g = guarded["summary"]["shift_guard"]
    assert g["unfamiliar_images"] == 20 and g["withheld_values"] == 20 and g["withheld_share"] == 0.1
    assert guarded["groups"]["colour"]["autofill"]["auto_filled"] == 180
    assert guarded["groups"]["colour"]["autofill"]["precision"] == 1.0
    assert open_["groups"]["colour"]["autofill"]["precision"] == 0.9
    assert "shift_guard" not in open_["summary"]
    assert guarded["groups"]["colour"]["autofill"]["band_precision"] == 1.0
    text = render_text(build_report(guarded, model_version="m", split="val", data={"source": "x"}))
    assert "withheld 20 values" in text
