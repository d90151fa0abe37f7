"""The shift guard in the running daemon, against the real Kafka broker and PostgreSQL: a stream that switches from
catalog photos to user photos moves the drift figure past its alert line (PSI 0.25, the rule in
deploy/prometheus/rules/shelfsight.rules.yml) within 200 products, and the user photos' values are stored as
suggestions withheld by `unfamiliar_photo`.

Catalog photos come from ../shared/data/fashion-products (validation split) and user photos from
../shared/data/clothing-cc0: outside CI a missing folder skips the test; in CI (env CI set) it fails."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest

from learner.datasets.labelled import SplitRule
from tests.daemon.harness import DaemonProcess, Db, daemon_env, produce, product_event, wait_until

pytestmark = [pytest.mark.kafka, pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
STARTER = ROOT / "deploy" / "demo" / "starter.safetensors"
CATALOG, USER = 100, 150
ALERT_PSI = 0.25


def photos() -> tuple[list[Path], list[Path]]:
    if not (DATA / "fashion-products").is_dir() or not (DATA / "clothing-cc0").is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{DATA} lacks fashion-products or clothing-cc0 and CI is set")
        pytest.skip(f"{DATA} is not here (../shared/data beside the checkout)")
    rule = SplitRule()
    catalog = sorted(p for p in (DATA / "fashion-products" / "images").glob("*.jpg") if rule.split_of(p.stem) == "val")
    users = sorted((DATA / "clothing-cc0" / "images").glob("*.jpg"))
    return catalog[:CATALOG], users[:USER]


def psi(daemon: DaemonProcess) -> float | None:
    found = [v for k, v in daemon.metrics().items() if k.startswith("shelfsight_photo_shift_psi{")]
    return max(found) if found else None


def test_a_switch_from_catalog_to_user_photos_raises_the_drift_figure_and_the_guard_withholds_their_values(
    kafka_broker, kafka_topic, postgres_url, tmp_path
) -> None:
    catalog, users = photos()
    topic = kafka_topic(partitions=2)
    kafka_topic(name=f"{topic}.dlq", partitions=1)
    env = daemon_env(
        bootstrap=kafka_broker.bootstrap,
        topic=topic,
        database_url=postgres_url,
        model_path=STARTER,
        file_root=DATA,
        group_id=f"shelfsight-drift-{uuid.uuid4().hex[:8]}",
        extra={"SHELFSIGHT_BACKEND": "onnxruntime", "SHELFSIGHT_ONNX_CACHE_DIR": str(tmp_path / "onnx")},
    )
    daemon = DaemonProcess(env, tmp_path / "daemon.log").start().wait_ready(timeout_s=300)
    db = Db(postgres_url)
    try:
        produce(kafka_broker.bootstrap, topic, [product_event(f"cat-{i:04d}", p) for i, p in enumerate(catalog)])
        wait_until(lambda: db.processed() >= CATALOG, 300, "the catalog photos to be written", daemon.log_tail)
        calm = psi(daemon)
        assert calm is not None and calm < ALERT_PSI, f"drift {calm} on catalog photos like validation's"

        produce(kafka_broker.bootstrap, topic, [product_event(f"usr-{i:04d}", p) for i, p in enumerate(users)])
        wait_until(lambda: db.processed() >= CATALOG + USER, 300, "the user photos to be written", daemon.log_tail)
        shifted = psi(daemon)
        assert shifted is not None and shifted > ALERT_PSI, f"drift {shifted} after {USER} user photos"

        def products(sql: str) -> int:
            return int(str(db.scalar(f"SELECT COUNT(DISTINCT product_id) FROM product_attributes WHERE {sql}")))

        withheld = products("withheld_by = 'unfamiliar_photo' AND NOT auto_filled AND product_id LIKE 'usr-%'")
        assert withheld >= 0.8 * USER, f"{withheld} of {USER} user products withheld"
        odd_catalog = products("withheld_by = 'unfamiliar_photo' AND product_id LIKE 'cat-%'")
        assert odd_catalog <= 0.1 * CATALOG, f"{odd_catalog} of {CATALOG} catalog products withheld"
    finally:
        daemon.ensure_stopped()
