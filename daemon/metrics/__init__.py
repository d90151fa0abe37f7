"""Prometheus metrics of the ShelfSight services: the one package where metric names are defined, one module per
service (`service.py` the enrichment daemon and its pipeline middleware, `shift.py` its shift guard, `review.py` the
review loop, `learner.py` the learner).

Every metric lives in an object built on its own `CollectorRegistry` (no module-global registry), so tests can build
several and each service exports exactly what it owns. The Grafana dashboard and the alert rules in `deploy/` refer
to these names; `tests/deploy` checks they exist.

Naming follows Prometheus conventions: `shelfsight_` prefix, base units (seconds, bytes), `_total` for counters.
"""

from daemon.metrics.learner import RUN_BUCKETS, RUN_OUTCOMES, LearnerMetrics
from daemon.metrics.review import (
    REVIEW_DELAY_BUCKETS,
    AutofillSuspensionMetrics,
    ReviewMetrics,
    ReviewRoutingMetrics,
)
from daemon.metrics.service import (
    BATCH_BUCKETS,
    RETRY_OPERATIONS,
    STAGE_BUCKETS,
    STAGES,
    PipelineMetrics,
    ServiceMetrics,
    StageTimer,
)
from daemon.metrics.shift import PhotoShiftMonitor

__all__ = [
    "BATCH_BUCKETS",
    "RETRY_OPERATIONS",
    "REVIEW_DELAY_BUCKETS",
    "RUN_BUCKETS",
    "RUN_OUTCOMES",
    "STAGES",
    "STAGE_BUCKETS",
    "AutofillSuspensionMetrics",
    "LearnerMetrics",
    "PhotoShiftMonitor",
    "PipelineMetrics",
    "ReviewMetrics",
    "ReviewRoutingMetrics",
    "ServiceMetrics",
    "StageTimer",
]
