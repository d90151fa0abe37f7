"""The product database: schema (models, migrations), the one way in (`Database`: engine, transactions,
`DatabaseUnavailable`, the `now`/`as_utc` time helpers, in `connection.py`) and the stores built on it
(`ProductStore`, `ReviewStore`, `RetrainingStore`, `AuditStore`, `DatabaseLock`). The records written and read
(`ProductResult`, `OutboxPayload`, ...) are not here: they are shared with `learner/` and live in
`connectors/records.py`. Importing this package does not connect to anything."""

from connectors.db.audit_store import AuditedAnswers, AuditStore, AutofillConfidenceRow, Suspension
from connectors.db.connection import Database, DatabaseUnavailable, as_utc, now
from connectors.db.locks import DatabaseLock, LockLost
from connectors.db.retraining_store import HumanCorrection, RetrainingRun, RetrainingStore
from connectors.db.review_outbox import ClaimOwner
from connectors.db.review_store import (
    AnnotationRecord,
    AnnotationValue,
    OutboxItem,
    RecordResult,
    ReviewStats,
    ReviewStore,
)
from connectors.db.store import ProductStore
from connectors.db.types import ProcessingLogStats, ProductView, StoredAttribute, WriteStats

__all__ = [
    "AnnotationRecord",
    "AnnotationValue",
    "AuditStore",
    "AuditedAnswers",
    "AutofillConfidenceRow",
    "ClaimOwner",
    "Database",
    "DatabaseLock",
    "DatabaseUnavailable",
    "HumanCorrection",
    "LockLost",
    "OutboxItem",
    "ProcessingLogStats",
    "ProductStore",
    "ProductView",
    "RecordResult",
    "RetrainingRun",
    "RetrainingStore",
    "ReviewStats",
    "ReviewStore",
    "StoredAttribute",
    "Suspension",
    "WriteStats",
    "as_utc",
    "now",
]
