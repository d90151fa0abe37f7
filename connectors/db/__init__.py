"""The product database: schema (models, migrations) and `ProductStore`, the one way the services read and
write it. The records written and read (`ProductResult`, `OutboxPayload`, ...) are not here: they are shared with
`learner/` and live in `connectors/records.py`. Importing this package does not connect to anything."""

from connectors.db.review_outbox import ClaimOwner
from connectors.db.review_store import (
    AnnotationRecord,
    AnnotationValue,
    OutboxItem,
    RecordResult,
    ReviewStats,
    ReviewStore,
)
from connectors.db.store import DatabaseUnavailable, ProductStore
from connectors.db.types import ProcessingLogStats, ProductView, StoredAttribute, WriteStats

__all__ = [
    "AnnotationRecord",
    "AnnotationValue",
    "ClaimOwner",
    "DatabaseUnavailable",
    "OutboxItem",
    "ProcessingLogStats",
    "ProductStore",
    "ProductView",
    "RecordResult",
    "ReviewStats",
    "ReviewStore",
    "StoredAttribute",
    "WriteStats",
]
