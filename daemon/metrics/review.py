"""Metrics of the review loop: routing decisions and auto-fill suspensions (applied by the daemon), and the review
worker's outbox, Label Studio, annotations, model-human agreement and the audited precision of auto-filled values."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REVIEW_DELAY_BUCKETS = (60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, 12 * 3600.0, 86400.0, 3 * 86400.0, 7 * 86400.0)


class ReviewRoutingMetrics:
    """The routing decisions of the review loop, made and exported by the enrichment daemon (`shelfsight run`):
    pass it the daemon's registry (`ServiceMetrics.registry`) so they appear on its /metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.routed = Counter(
            "shelfsight_review_routed_total",
            "Products routed to human review, by reason (unfamiliar_photo, title_photo_conflict, low_confidence, "
            "audit, random).",
            ["reason"],
            registry=r,
        )
        self.capped = Counter(
            "shelfsight_review_capped_total",
            "Products a routing strategy chose but a per-hour or per-day cap held back, by strategy.",
            ["reason"],
            registry=r,
        )


class AutofillSuspensionMetrics:
    """What an enrichment daemon (`shelfsight run`) does with the auto-fill suspensions it reads
    (daemon/suspensions.py): pass it the daemon's registry (`ServiceMetrics.registry`)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.suspended = Gauge(
            "shelfsight_autofill_suspended_groups",
            "Attribute groups whose auto-fill this replica holds back, as of its last read of the suspensions (any "
            "model version).",
            registry=r,
        )
        self.withheld = Counter(
            "shelfsight_autofill_suspended_values_total",
            "Model values stored as suggestions because their group's auto-fill is suspended, by group.",
            ["group"],
            registry=r,
        )
        self.polls = Counter(
            "shelfsight_autofill_suspension_polls_total",
            "Reads of the auto-fill suspensions, by outcome (ok, database_unavailable).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("ok", "database_unavailable"):
            self.polls.labels(outcome)


class ReviewMetrics:
    """Metrics of the review worker (`shelfsight review run`), on their own registry: the outbox, Label Studio,
    annotations, time to annotation and model-human agreement."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # -- outbox and Label Studio (review worker) ------------------------------------------------
        self.outbox_pending = Gauge(
            "shelfsight_review_outbox_pending", "Routed products not yet sent to Label Studio.", registry=r
        )
        self.backlog = Gauge(
            "shelfsight_review_backlog_tasks",
            "Label Studio tasks sent and not yet annotated (nor skipped).",
            registry=r,
        )
        self.failed = Gauge(
            "shelfsight_review_outbox_failed", "Routed products Label Studio refused for good.", registry=r
        )
        self.tasks_sent = Counter("shelfsight_review_tasks_sent_total", "Tasks created in Label Studio.", registry=r)
        self.send_errors = Counter(
            "shelfsight_review_send_errors_total",
            "Failed attempts to send tasks, by kind (unavailable: retried later; rejected: Label Studio said no).",
            ["kind"],
            registry=r,
        )
        self.annotations = Counter(
            "shelfsight_review_annotations_total",
            "Annotations received, by outcome (applied, unchanged, skipped, deleted, ignored).",
            ["outcome"],
            registry=r,
        )
        self.tasks_completed = Counter(
            "shelfsight_review_tasks_completed_total",
            "Tasks whose first annotation (or skip) arrived.",
            registry=r,
        )
        self.webhooks = Counter(
            "shelfsight_review_webhooks_total",
            "Webhook deliveries, by outcome (accepted, rejected_secret, bad_request, unavailable, ignored).",
            ["outcome"],
            registry=r,
        )
        self.polls = Counter(
            "shelfsight_review_polls_total", "Incremental polls of Label Studio, by outcome.", ["outcome"], registry=r
        )
        self.annotation_delay = Histogram(
            "shelfsight_review_annotation_delay_seconds",
            "From a task being sent to Label Studio to its first annotation.",
            buckets=REVIEW_DELAY_BUCKETS,
            registry=r,
        )
        self.agreement = Gauge(
            "shelfsight_review_agreement_ratio",
            "Share of reviewed values where the annotator kept the model's value, per attribute group.",
            ["group"],
            registry=r,
        )
        self.corrections = Counter(
            "shelfsight_review_corrections_total",
            "Reviewed attribute values, by group and whether the model was right.",
            ["group", "model_was_right"],
            registry=r,
        )
        self.label_studio_up = Gauge(
            "shelfsight_review_label_studio_up", "1 when Label Studio answered the last request.", registry=r
        )
        # -- periodic full reconcile (daemon/review/reconcile.py) and claims ---------------------------
        self.reconcile_recovered = Counter(
            "shelfsight_review_reconcile_recovered_total",
            "Annotators' answers the periodic reconcile found missing from the database, by kind (recorded: an "
            "answer or edit recorded; withdrawn: a deletion applied). Above zero, webhooks and polls missed them.",
            ["kind"],
            registry=r,
        )
        self.reconciles = Counter(
            "shelfsight_review_reconciles_total",
            "Full reconciles of Label Studio's tasks with the database, by outcome (ok, unavailable, "
            "database_unavailable, error).",
            ["outcome"],
            registry=r,
        )
        self.reconcile_differing = Gauge(
            "shelfsight_review_reconcile_differing_tasks",
            "Tasks the last full reconcile found different from the database and read whole.",
            registry=r,
        )
        self.claims_taken_over = Counter(
            "shelfsight_review_claims_taken_over_total",
            "Outbox claims of this worker's earlier incarnation (a killed process) released at start.",
            registry=r,
        )
        # -- audited precision of auto-filled values and suspensions (daemon/review/audit.py) ------------------
        per_version = ["group", "model_version"]
        self.audited_precision = Gauge(
            "shelfsight_autofill_audited_precision",
            "Share of people's answers on auto-filled values that agreed with the model, per group and model version "
            "(since the last resume; absent before the first answer).",
            per_version,
            registry=r,
        )
        self.audited_precision_lower = Gauge(
            "shelfsight_autofill_audited_precision_lower",
            "Lower bound of the audited precision's two-sided Wilson interval (review.audit_level; 0 without answers).",
            per_version,
            registry=r,
        )
        self.audited_precision_upper = Gauge(
            "shelfsight_autofill_audited_precision_upper",
            "Upper bound of the audited precision's two-sided Wilson interval (1 without answers); below the target: "
            "significantly below it.",
            per_version,
            registry=r,
        )
        self.audited_values = Gauge(
            "shelfsight_autofill_audited_values",
            "People's answers on auto-filled values the audited precision is measured on, per group and model version.",
            per_version,
            registry=r,
        )
        self.label_free_precision = Gauge(
            "shelfsight_autofill_label_free_precision",
            "Mean calibrated confidence of the stored auto-filled values: the precision the model expects of them.",
            per_version,
            registry=r,
        )
        self.target_precision = Gauge(
            "shelfsight_autofill_target_precision",
            "The precision a group's auto-filled values promise (the target its thresholds were fitted for).",
            per_version,
            registry=r,
        )
        self.autofill_suspended = Gauge(
            "shelfsight_autofill_suspended",
            "1 while a group's auto-fill is suspended for a model version (autofill_suspensions), else 0.",
            per_version,
            registry=r,
        )
        self.suspensions = Counter(
            "shelfsight_autofill_suspensions_total",
            "Suspensions of a group's auto-fill this worker opened (audited precision significantly below target).",
            ["group"],
            registry=r,
        )
        self.audits = Counter(
            "shelfsight_autofill_audits_total",
            "Measurements of the audited precision, by outcome (ok, database_unavailable, error).",
            ["outcome"],
            registry=r,
        )
        for outcome in ("ok", "database_unavailable", "error"):
            self.audits.labels(outcome)
        for kind in ("recorded", "withdrawn"):
            self.reconcile_recovered.labels(kind)
        for outcome in ("ok", "unavailable", "database_unavailable", "error"):
            self.reconciles.labels(outcome)
