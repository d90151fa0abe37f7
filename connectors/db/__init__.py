"""The product database: schema (models, migrations) and `ProductStore`, the one way the services read and
write it. Importing this package does not connect to anything."""

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
    "AttributeValue",
    "DatabaseUnavailable",
    "ProcessingLogStats",
    "ProductResult",
    "ProductStore",
    "ProductView",
    "StoredAttribute",
    "WriteStats",
]
