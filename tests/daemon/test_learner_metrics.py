"""`LearnerMetrics` (daemon/metrics.py): a run's outcome becomes run counts, duration, holdout figures per version
and the gate's interval."""

from __future__ import annotations

from prometheus_client import generate_latest

from daemon.metrics import LearnerMetrics


def _value(metrics: LearnerMetrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    return metrics.registry.get_sample_value(name, labels or {})


def test_a_promoted_outcome_counts_the_run_and_exports_both_models_holdout_figures() -> None:
    metrics = LearnerMetrics()
    figures = {
        "summary": {"mean_top1": 0.5, "mean_macro_f1": 0.4},
        "groups": {"garment": {"top1": 0.5, "macro_f1": 0.4, "ece": 0.1}},
        "detection": {"map": 0.3, "map_50": 0.6, "images": 4},
    }
    metrics.observe_outcome(
        {
            "status": "promoted",
            "duration_s": 42.0,
            "champion": "v1",
            "challenger": "v2",
            "decision": {"bootstrap": {"difference": 0.1, "low": 0.02, "high": 0.2}},
            "champion_holdout": figures,
            "challenger_holdout": {**figures, "summary": {"mean_top1": 0.6}},
        },
        now=1000.0,
    )
    assert _value(metrics, "shelfsight_learner_runs_total", {"outcome": "promoted"}) == 1
    assert _value(metrics, "shelfsight_learner_runs_total", {"outcome": "failed"}) == 0
    assert _value(metrics, "shelfsight_learner_promotion_decisions_total", {"decision": "promoted"}) == 1
    assert _value(metrics, "shelfsight_learner_run_duration_seconds_sum") == 42.0
    assert _value(metrics, "shelfsight_learner_last_run_timestamp_seconds", {"outcome": "promoted"}) == 1000.0
    assert _value(metrics, "shelfsight_learner_gate_difference", {"bound": "low"}) == 0.02
    labels = {"version": "v2", "role": "challenger", "group": "summary", "metric": "mean_top1"}
    assert _value(metrics, "shelfsight_learner_holdout_score", labels) == 0.6
    labels = {"version": "v1", "role": "champion", "group": "garment", "metric": "ece"}
    assert _value(metrics, "shelfsight_learner_holdout_score", labels) == 0.1
    labels = {"version": "v1", "role": "champion", "group": "detection", "metric": "map"}
    assert _value(metrics, "shelfsight_learner_holdout_score", labels) == 0.3


def test_a_locked_or_skipped_run_is_counted_without_a_decision_or_duration() -> None:
    metrics = LearnerMetrics()
    metrics.observe_outcome({"status": "locked", "duration_s": 0.1})
    metrics.observe_outcome({"status": "skipped", "duration_s": 0.2})
    assert _value(metrics, "shelfsight_learner_runs_total", {"outcome": "locked"}) == 1
    assert _value(metrics, "shelfsight_learner_runs_total", {"outcome": "skipped"}) == 1
    assert _value(metrics, "shelfsight_learner_run_duration_seconds_count") == 0
    assert _value(metrics, "shelfsight_learner_promotion_decisions_total", {"decision": "rejected"}) == 0
    assert b"shelfsight_learner_holdout_score{" not in generate_latest(metrics.registry)
