"""The corrections trigger of the learner service (learner/lifecycle/schedule.py) counts PRODUCTS with new human
values, not values: an annotator answering every group of one product is one correction. Real SQLite database;
the run command is a stand-in script that writes a 'skipped' outcome, so no model is trained."""

from __future__ import annotations

import sys
from pathlib import Path

from connectors.db import ProductStore
from connectors.records import AttributeValue, ProductResult
from learner.lifecycle.schedule import LearnerService, ScheduleConfig

STAND_IN = """
import json, sys
args = sys.argv[1:]
with open(args[args.index("--outcome-file") + 1], "w") as f:
    json.dump({"status": "skipped", "message": "stand-in run"}, f)
"""


def _product(store: ProductStore, product_id: str) -> None:
    store.write_results(
        [
            ProductResult(
                product_id=product_id,
                title=None,
                category_hint=None,
                event_id=None,
                image_url=f"file:///img/{product_id}.jpg",
                image_digest=f"d-{product_id}",
                model_version="m1",
                attributes=[AttributeValue("garment", "Shirt", 0.4), AttributeValue("kids", "False", 0.6)],
                source="test",
            )
        ]
    )


def test_a_run_starts_once_enough_products_not_values_are_corrected(sqlite_url: str, tmp_path: Path) -> None:
    store = ProductStore(sqlite_url)
    store.migrate()
    script = tmp_path / "stand_in.py"
    script.write_text(STAND_IN)
    service = LearnerService(store, [sys.executable, str(script)], ScheduleConfig(min_corrections=2))
    try:
        for product_id in ("p1", "p2"):
            _product(store, product_id)
        store.set_human_value("p1", "garment", "Dress", annotator="ann")
        store.set_human_value("p1", "kids", "True", annotator="ann")  # two values, one product
        assert service.run_job("corrections") is None, "one corrected product is not two"
        store.set_human_value("p2", "garment", "Skirt", annotator="ann")
        outcome = service.run_job("corrections")
        assert outcome is not None and outcome["status"] == "skipped"  # the stand-in ran: the trigger fired
    finally:
        store.close()
