"""`LearnerMetrics` (daemon/metrics/): a run's outcome becomes run counts, duration, holdout figures per version
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


def _decision(promote: bool, low: float, regressions: list[str] | None = None) -> dict[str, object]:
    return {
        "promote": promote,
        "bootstrap": {"difference": low + 0.01, "low": low, "high": low + 0.02},
        "regressions": regressions or [],
    }


def test_vetoed_significant_winners_count_by_reason_and_in_a_streak_that_a_promotion_ends() -> None:
    metrics = LearnerMetrics()
    vetoed = {"status": "rejected", "decision": _decision(False, 0.017, ["masterCategory/macro_f1 -0.0350"])}
    for _ in range(3):
        metrics.observe_outcome(vetoed)
    assert _value(metrics, "shelfsight_learner_gate_vetoed_wins_consecutive") == 3
    assert _value(metrics, "shelfsight_learner_gate_vetoes_total", {"reason": "group_regression"}) == 3
    assert _value(metrics, "shelfsight_learner_gate_significant_wins_total") == 3
    metrics.observe_outcome({"status": "failed", "message": "killed"})  # no comparison: the streak stays
    assert _value(metrics, "shelfsight_learner_gate_vetoed_wins_consecutive") == 3
    metrics.observe_outcome(
        {"status": "rejected", "decision": {**_decision(False, -0.01), "vetoes": ["not_significant"]}}
    )
    assert _value(metrics, "shelfsight_learner_gate_vetoes_total", {"reason": "not_significant"}) == 1
    assert _value(metrics, "shelfsight_learner_gate_vetoed_wins_consecutive") == 0
    metrics.observe_outcome(vetoed)
    metrics.observe_outcome({"status": "promoted", "decision": _decision(True, 0.02)})
    assert _value(metrics, "shelfsight_learner_gate_vetoed_wins_consecutive") == 0
    assert _value(metrics, "shelfsight_learner_gate_significant_wins_total") == 5
    assert _value(metrics, "shelfsight_learner_gate_vetoes_total", {"reason": "detection_regression"}) == 0


def test_the_streak_is_read_from_recorded_decisions_by_the_leader_and_zero_on_a_standby() -> None:
    metrics = LearnerMetrics()
    vetoed = _decision(False, 0.017, ["kids/top1 -0.0500"])
    metrics.seed_gate_streak([_decision(True, 0.02), vetoed, vetoed])
    assert _value(metrics, "shelfsight_learner_gate_vetoed_wins_consecutive") == 2
    metrics.observe_outcome({"status": "rejected", "decision": vetoed})
    assert _value(metrics, "shelfsight_learner_gate_vetoed_wins_consecutive") == 3
    metrics.reset_gate_streak()
    assert _value(metrics, "shelfsight_learner_gate_vetoed_wins_consecutive") == 0
