"""The product database: schema (models, migrations) and `ProductStore`, the one way the services read and
write it. Importing this package does not connect to anything."""

from connectors.db.outbox import OutboxPayload, payload_from_json, payload_to_json
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
from connectors.db.types import (
    Alternative,
    AttributeValue,
    ProcessingLogStats,
    ProductResult,
    ProductView,
    StoredAttribute,
    WriteStats,
)

__all__ = [
    "Alternative",
    "AnnotationRecord",
    "AnnotationValue",
    "AttributeValue",
    "ClaimOwner",
    "DatabaseUnavailable",
    "OutboxItem",
    "OutboxPayload",
    "ProcessingLogStats",
    "ProductResult",
    "ProductStore",
    "ProductView",
    "RecordResult",
    "ReviewStats",
    "ReviewStore",
    "StoredAttribute",
    "WriteStats",
    "payload_from_json",
    "payload_to_json",
]
