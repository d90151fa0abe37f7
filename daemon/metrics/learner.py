"""Metrics of the learner (`shelfsight learn`): retraining runs, holdout figures and promotion decisions."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from learner.evaluation.gate import VETO_REASONS, vetoed_win_streak, vetoes_of

RUN_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0)
RUN_OUTCOMES = ("promoted", "rejected", "failed", "skipped", "locked")


class LearnerMetrics:
    """Metrics of the learner (`shelfsight learn`): retraining runs, their duration, holdout figures per model
    version and promotion decisions. Its own registry, like `ServiceMetrics`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.runs = Counter(
            "shelfsight_learner_runs_total",
            "Retraining runs by outcome: promoted, rejected, failed, skipped (nothing new), locked (another "
            "learner was running).",
            ["outcome"],
            registry=r,
        )
        self.run_seconds = Histogram(
            "shelfsight_learner_run_duration_seconds",
            "Wall time of retraining runs that trained (promoted, rejected or failed).",
            buckets=RUN_BUCKETS,
            registry=r,
        )
        self.last_run = Gauge(
            "shelfsight_learner_last_run_timestamp_seconds",
            "Unix time of the last run that ended with this outcome.",
            ["outcome"],
            registry=r,
        )
        self.decisions = Counter(
            "shelfsight_learner_promotion_decisions_total",
            "Promotion gate decisions on challengers: promoted or rejected.",
            ["decision"],
            registry=r,
        )
        self.gate_difference = Gauge(
            "shelfsight_learner_gate_difference",
            "Last gate decision: challenger minus champion on the primary metric (estimate) and the bounds of its "
            "paired-bootstrap confidence interval (low, high).",
            ["bound"],
            registry=r,
        )
        self.gate_wins = Counter(
            "shelfsight_learner_gate_significant_wins_total",
            "Gate decisions where the challenger's gain on the primary metric was significant (the lower bound of "
            "its paired-bootstrap interval above zero), promoted or not.",
            registry=r,
        )
        self.gate_vetoes = Counter(
            "shelfsight_learner_gate_vetoes_total",
            "Challengers not promoted, by reason: not_significant, group_regression, detection_regression, "
            "training_failed, evaluation_failed, evaluation_missing, other (a decision with two reasons counts "
            "under both).",
            ["reason"],
            registry=r,
        )
        self.gate_vetoed_wins = Gauge(
            "shelfsight_learner_gate_vetoed_wins_consecutive",
            "Consecutive gate decisions that rejected a significant winner for a regression (a promotion or a "
            "challenger without a significant win resets it; failed runs leave it as it is). Read from the "
            "registry's decisions when this replica becomes the scheduler leader; 0 on standby replicas.",
            registry=r,
        )
        self.holdout = Gauge(
            "shelfsight_learner_holdout_score",
            "Holdout figures of the models of the last decision, by version, role (champion or challenger), "
            "attribute group (or 'summary', or 'detection') and metric (top1, macro_f1, ece, mean_top1, mean_macro_f1; "
            "map, map_50, map_75 for detection).",
            ["version", "role", "group", "metric"],
            registry=r,
        )
        self.running = Gauge("shelfsight_learner_running", "1 while this learner runs a retraining.", registry=r)
        self.leader = Gauge(
            "shelfsight_learner_scheduler_leader",
            "1 when this replica holds the scheduler lock and runs the retraining jobs (0: standby).",
            registry=r,
        )
        self.champion = Info("shelfsight_learner_champion", "The registry's champion model version.", registry=r)
        self.new_corrected_products = Gauge(
            "shelfsight_learner_new_corrected_products",
            "Products with human values newer than the last completed run: what the corrections trigger counts "
            "(a run starts at learner.min_corrected_products). Read from the database at each scrape.",
            registry=r,
        )
        self.new_human_values = Gauge(
            "shelfsight_learner_new_human_values",
            "Human attribute values newer than the last completed run (several per product). Read at each scrape.",
            registry=r,
        )
        self.min_corrected_products = Gauge(
            "shelfsight_learner_min_corrected_products",
            "The corrections trigger's threshold (learner.min_corrected_products).",
            registry=r,
        )
        for outcome in RUN_OUTCOMES:
            self.runs.labels(outcome)
        for decision in ("promoted", "rejected"):
            self.decisions.labels(decision)
        for reason in VETO_REASONS:
            self.gate_vetoes.labels(reason)
        self._vetoed_wins = 0

    def seed_gate_streak(self, decisions: Iterable[Mapping[str, Any]]) -> None:
        """Set the consecutive-vetoed-winners gauge from recorded decisions (the registry's, oldest first)."""
        self._vetoed_wins = vetoed_win_streak(decisions)
        self.gate_vetoed_wins.set(self._vetoed_wins)

    def reset_gate_streak(self) -> None:
        """A standby replica exports 0: only the leader's figure counts."""
        self._vetoed_wins = 0
        self.gate_vetoed_wins.set(0)

    def track_new_corrections(self, read: Callable[[], tuple[int, int]], threshold: int) -> None:
        """Export `read()` = (new corrected products, new human values) at each scrape; NaN when it fails (the
        database is down), so an outage never breaks the scrape."""
        self.min_corrected_products.set(threshold)

        def read_one(index: int) -> Callable[[], float]:
            def value() -> float:
                try:
                    return float(read()[index])
                except Exception:
                    return float("nan")

            return value

        self.new_corrected_products.set_function(read_one(0))
        self.new_human_values.set_function(read_one(1))

    def observe_outcome(self, outcome: dict[str, Any], now: float | None = None) -> None:
        """Record one run's outcome (`learner.lifecycle.retrain.RunOutcome.to_dict()`)."""
        status = str(outcome.get("status", "failed"))
        self.runs.labels(status).inc()
        self.last_run.labels(status).set(now if now is not None else time.time())
        if status in ("promoted", "rejected", "failed"):
            self.run_seconds.observe(float(outcome.get("duration_s") or 0.0))
        if status in ("promoted", "rejected"):
            self.decisions.labels(status).inc()
        decision = outcome.get("decision") or {}
        if status in ("promoted", "rejected") and decision:
            if (decision.get("bootstrap") or {}).get("low", 0) > 0:
                self.gate_wins.inc()
            for reason in vetoes_of(decision):
                self.gate_vetoes.labels(reason if reason in VETO_REASONS else "other").inc()
            self._vetoed_wins = vetoed_win_streak([decision], start=self._vetoed_wins)
            self.gate_vetoed_wins.set(self._vetoed_wins)
        boot = decision.get("bootstrap") or {}
        for bound, key in (("estimate", "difference"), ("low", "low"), ("high", "high")):
            if boot.get(key) is not None:
                self.gate_difference.labels(bound).set(float(boot[key]))
        if decision:
            self.holdout.clear()  # only the versions of the last decision: the label set stays small
        for role in ("champion", "challenger"):
            figures = outcome.get(f"{role}_holdout")
            version = outcome.get(role)
            if not figures or not version:
                continue
            for metric, value in (figures.get("summary") or {}).items():
                if value is not None:
                    self.holdout.labels(version, role, "summary", metric).set(float(value))
            for group, values in (figures.get("groups") or {}).items():
                for metric in ("top1", "macro_f1", "ece", "micro_f1"):
                    if values.get(metric) is not None:
                        self.holdout.labels(version, role, group, metric).set(float(values[metric]))
            for metric, value in (figures.get("detection") or {}).items():
                if metric.startswith("map") and value is not None:
                    self.holdout.labels(version, role, "detection", metric).set(float(value))
