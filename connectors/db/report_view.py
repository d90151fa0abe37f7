"""What the HTML report of enriched products shows, read from the product database in a few queries: the most
recently updated products with their current attributes, the image each was last tagged from and whether it waits
for review in the outbox.

What it must not do: write anything, render anything (daemon/report.py does), or import `learner/` or `daemon/`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import RowMapping, func, select

from connectors.db.models import ATTRIBUTES, PROCESSING_LOG, PRODUCTS, REVIEW_OUTBOX
from connectors.db.store import ProductStore, product_view
from connectors.db.types import ProductView

__all__ = ["CatalogSnapshot", "ReportedProduct", "read_report_products"]


@dataclass(frozen=True)
class ReportedProduct:
    product: ProductView
    image_url: str | None  # the image of its latest processing-log row (None: only human values so far)
    routed_for_review: bool  # a review-outbox row exists for it


@dataclass(frozen=True)
class CatalogSnapshot:
    products: list[ReportedProduct]  # newest first, at most `limit`
    total_products: int  # in the database


def read_report_products(store: ProductStore, limit: int = 200) -> CatalogSnapshot:
    """The `limit` most recently updated products that have at least one attribute, newest first."""
    p, a, log, outbox = PRODUCTS, ATTRIBUTES, PROCESSING_LOG, REVIEW_OUTBOX
    with store.database.transaction() as conn:
        total = int(conn.execute(select(func.count()).select_from(p)).scalar_one())
        with_values = select(a.c.product_id).distinct()
        products = (
            conn.execute(
                select(p)
                .where(p.c.product_id.in_(with_values))
                .order_by(p.c.updated_at.desc(), p.c.product_id)
                .limit(limit)
            )
            .mappings()
            .all()
        )
        ids = [row["product_id"] for row in products]
        attr_rows = (
            conn.execute(select(a).where(a.c.product_id.in_(ids)).order_by(a.c.product_id, a.c.attribute))
            .mappings()
            .all()
        )
        images = conn.execute(
            select(log.c.product_id, log.c.image_url)
            .where(log.c.product_id.in_(ids))
            .order_by(log.c.product_id, log.c.last_seen_at, log.c.id)
        ).all()
        routed = set(conn.execute(select(outbox.c.product_id).where(outbox.c.product_id.in_(ids))).scalars().all())
    attributes: dict[str, list[RowMapping]] = {}
    for row in attr_rows:
        attributes.setdefault(row["product_id"], []).append(row)
    latest_image = {pid: url for pid, url in images}  # ordered by time: the last one wins
    out = [
        ReportedProduct(
            product=product_view(row, attributes.get(row["product_id"], [])),
            image_url=latest_image.get(row["product_id"]),
            routed_for_review=row["product_id"] in routed,
        )
        for row in products
    ]
    return CatalogSnapshot(out, total)
