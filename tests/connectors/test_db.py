"""Behaviour of `ProductStore` against the real databases: SQLite (the embedded default) and a real PostgreSQL 18
server (tests/plugins/postgres.py). Every test runs on a fresh, empty database."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from connectors.db import DatabaseUnavailable, ProductStore
from connectors.db.models import Base
from connectors.records import TITLE_PHOTO_CONFLICT, Alternative, AttributeValue, ProductResult


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "postgres_url")


@pytest.fixture
def store(database_url: str) -> Iterator[ProductStore]:
    s = ProductStore(database_url, connect_timeout_s=10.0)  # local, but the machine may be loaded
    s.migrate()
    yield s
    s.close()


def make_result(product_id: str = "p1", digest: str = "sha-1", color: str = "red", **changes: object) -> ProductResult:
    result = ProductResult(
        product_id=product_id,
        title="Linen shirt",
        category_hint="tops",
        event_id=f"evt-{product_id}-{digest}",
        image_url=f"https://cdn.example/{product_id}.jpg",
        image_digest=digest,
        model_version="clothing-v1",
        attributes=[
            AttributeValue("color", color, 0.91, [Alternative(color, 0.91), Alternative("blue", 0.05)]),
            AttributeValue("pattern", ["floral", "striped"], 0.62),
            AttributeValue("garment", "shirt", 0.88, box=[10.0, 20.0, 200.0, 300.0]),
        ],
        source="kafka:products.new/0@42",
    )
    return dataclasses.replace(result, **changes)  # type: ignore[arg-type]


def test_migrations_create_the_schema_on_both_databases(database_url: str) -> None:
    store = ProductStore(database_url)
    assert store.current_revision() is None
    assert store.migrate() == ProductStore.head_revision()
    assert store.migrate() == ProductStore.head_revision()  # a second run is a no-op

    inspector = sa.inspect(store.engine)
    assert {"products", "product_attributes", "processing_log", "alembic_version"} <= set(inspector.get_table_names())
    assert inspector.get_pk_constraint("product_attributes")["constrained_columns"] == ["product_id", "attribute"]
    assert [u["column_names"] for u in inspector.get_unique_constraints("processing_log")] == [
        ["product_id", "image_digest", "model_version"]
    ]
    # the models describe exactly what the migrations built (no drift between the two)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    store.close()


def test_model_write_never_overwrites_a_human_value(store: ProductStore) -> None:
    store.write_results([make_result(color="red")])
    store.set_human_value("p1", "color", "green", annotator="alice", box=[1, 2, 3, 4])

    # a later image and a later model both say red; the annotator's green stays
    stats = store.write_results([make_result(digest="sha-2", color="red", model_version="clothing-v2")])
    assert (stats.written, stats.human_values_kept) == (1, 1)

    product = store.get_product("p1")
    assert product is not None
    color = product.attributes["color"]
    assert (color.value, color.source, color.annotator, color.model_version) == ("green", "human", "alice", None)
    assert color.box == [1.0, 2.0, 3.0, 4.0]
    # attributes nobody corrected still follow the model
    assert product.attributes["garment"].model_version == "clothing-v2"
    assert product.attributes["garment"].image_digest == "sha-2"


def test_human_value_on_an_unknown_product_is_kept_when_the_model_arrives(store: ProductStore) -> None:
    store.set_human_value("p9", "color", "black", annotator="bob")
    store.write_results([make_result(product_id="p9", color="white")])
    product = store.get_product("p9")
    assert product is not None
    assert product.attributes["color"].value == "black"
    assert product.title == "Linen shirt"  # the model's write filled in the product row


def test_writing_the_same_result_twice_keeps_one_row_and_counts_the_attempt(store: ProductStore) -> None:
    first = store.write_results([make_result(color="red")])
    # the same key (product, image digest, model version) redelivered, even with a different answer
    second = store.write_results([make_result(color="blue")])

    assert (first.written, first.duplicates) == (1, 0)
    assert (second.written, second.duplicates) == (0, 1)
    assert store.is_processed("p1", "sha-1", "clothing-v1")
    assert not store.is_processed("p1", "sha-1", "clothing-v2")
    stats = store.processing_log_stats()
    assert (stats.rows, stats.max_attempts, stats.repeated_keys) == (1, 2, 1)
    product = store.get_product("p1")
    assert product is not None
    assert product.attributes["color"].value == "red"  # the duplicate did not rewrite anything
    with store.engine.connect() as conn:
        attribute_rows = conn.execute(sa.text("SELECT count(*) FROM product_attributes")).scalar_one()
    assert (store.count_products(), attribute_rows) == (1, 3)


def test_a_duplicate_inside_one_batch_is_counted_once(store: ProductStore) -> None:
    stats = store.write_results([make_result(), make_result(), make_result(product_id="p2")])
    assert (stats.written, stats.duplicates) == (2, 1)
    assert store.processing_log_stats().max_attempts == 2


def test_a_batch_is_written_in_a_few_statements_whatever_its_size(store: ProductStore) -> None:
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda _c, _cur, sql, *_: statements.append(sql))
    stats = store.write_results([make_result(product_id=f"p{i}", review=None) for i in range(100)])
    assert stats.written == 100
    # BEGIN (SQLite), the processing log, products, attributes: one statement each for the whole batch
    assert len([s for s in statements if not s.startswith(("BEGIN", "SAVEPOINT", "RELEASE"))]) == 3
    assert store.count_products() == 100


def test_two_new_images_of_one_product_in_a_batch_end_as_if_written_one_by_one(store: ProductStore) -> None:
    store.set_human_value("p1", "pattern", ["plain"], annotator="ann")
    first = make_result(digest="sha-1", color="red", title="Linen shirt")
    second = make_result(digest="sha-2", color="blue", title=None, category_hint="shirts")
    stats = store.write_results([second, first])  # written in key order: sha-1, then sha-2
    assert (stats.written, stats.duplicates, stats.human_values_kept) == (2, 0, 2)
    product = store.get_product("p1")
    assert product is not None
    assert (product.title, product.category_hint) == ("Linen shirt", "shirts")  # the last non-empty values
    assert product.attributes["color"].value == "blue" and product.attributes["color"].image_digest == "sha-2"
    assert product.attributes["pattern"].value == ["plain"] and product.attributes["pattern"].source == "human"


def test_the_description_is_stored_like_the_title_its_last_non_empty_one(store: ProductStore) -> None:
    store.write_results([make_result(digest="sha-1")])  # an event without a description
    assert (product := store.get_product("p1")) is not None and product.description is None
    described = make_result(digest="sha-2", description="Short sleeves, chest pocket.")
    later = make_result(digest="sha-3", description=None, title=None)  # within one batch: the last non-empty
    store.write_results([later, described])
    store.write_results([make_result(digest="sha-4", description="", title="")])  # a later batch, blank text
    product = store.get_product("p1")
    assert product is not None
    assert (product.title, product.description) == ("Linen shirt", "Short sleeves, chest pocket.")
    store.write_results([make_result(digest="sha-5", description="Linen, relaxed fit.")])
    assert (product := store.get_product("p1")) is not None and product.description == "Linen, relaxed fit."


def test_values_round_trip_with_their_types(store: ProductStore) -> None:
    store.write_results([make_result()])
    product = store.get_product("p1")
    assert product is not None
    assert product.attributes["pattern"].value == ["floral", "striped"]
    assert product.attributes["color"].alternatives == [Alternative("red", 0.91), Alternative("blue", 0.05)]
    assert product.attributes["garment"].box == [10.0, 20.0, 200.0, 300.0]
    assert product.first_seen_at.tzinfo is not None
    assert store.get_product("nope") is None


def test_a_title_photo_conflict_is_stored_with_both_readings_until_a_person_answers(store: ProductStore) -> None:
    readings = {
        "decided_from": "photos+title",
        "title": {"value": "blue", "confidence": 0.97},
        "photos": {"value": "red", "confidence": 0.88},
    }
    disputed = AttributeValue(
        "color", "red", 0.52, auto_filled=False, withheld_by=TITLE_PHOTO_CONFLICT, readings=readings
    )
    store.write_results([make_result(attributes=[disputed, AttributeValue("garment", "shirt", 0.97)])])

    product = store.get_product("p1")
    assert product is not None
    color = product.attributes["color"]
    assert (color.withheld_by, color.readings, color.auto_filled) == (TITLE_PHOTO_CONFLICT, readings, False)
    assert product.attributes["garment"].readings is None  # from the photos alone
    store.set_human_value("p1", "color", "blue", annotator="ann")
    answered = store.get_product("p1")
    assert answered is not None and answered.attributes["color"].readings is None


def test_a_suggestion_is_stored_with_its_confidence_and_a_human_value_replaces_it(store: ProductStore) -> None:
    suggestion = AttributeValue("color", "teal", 0.41, [Alternative("teal", 0.41)], auto_filled=False)
    store.write_results([make_result(attributes=[suggestion, AttributeValue("garment", "shirt", 0.97)])])

    product = store.get_product("p1")
    assert product is not None
    assert product.attributes["color"].auto_filled is False and product.attributes["color"].confidence == 0.41
    assert product.attributes["garment"].auto_filled is True

    store.set_human_value("p1", "color", "navy", annotator="ann")
    assert store.get_product("p1").attributes["color"].auto_filled is True  # type: ignore[union-attr]


def test_writes_of_one_batch_are_atomic(store: ProductStore) -> None:
    good = make_result(product_id="p1")
    also_good = make_result(product_id="p2")
    # a confidence outside [0, 1] violates a CHECK constraint in the middle of the batch
    broken = make_result(product_id="p3", attributes=[AttributeValue("color", "red", 1.5)])
    with pytest.raises(sa.exc.IntegrityError):
        store.write_results([good, broken, also_good])

    assert store.count_products() == 0
    assert store.processing_log_stats().rows == 0
    # nothing was half-recorded: retrying the good results writes them, not counted as duplicates
    assert store.write_results([good, also_good]).written == 2


def test_mistakes_are_not_reported_as_unavailability(database_url: str) -> None:
    store = ProductStore(database_url)  # never migrated: the tables do not exist
    with pytest.raises(sa.exc.DBAPIError) as info:
        store.write_results([make_result()])
    assert not isinstance(info.value, DatabaseUnavailable)
    store.close()


@pytest.mark.postgres
def test_concurrent_migrations_from_several_processes_on_postgres_all_succeed(postgres_url: str, tmp_path) -> None:
    # each process imports everything, says it is ready, and waits for the go signal: the migrations then
    # really start together
    script = (
        "import pathlib, sys, time; from connectors.db import ProductStore; "
        "s = ProductStore(sys.argv[1]); d = pathlib.Path(sys.argv[2]); (d / sys.argv[3]).touch(); "
        "exec('while not (d / \"go\").exists(): time.sleep(0.005)'); "
        "s.migrate(); print(s.current_revision())"
    )
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, postgres_url, str(tmp_path), f"ready-{i}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(3)
    ]
    deadline = time.monotonic() + 180  # three Python processes importing at once on a loaded machine
    while len(list(tmp_path.glob("ready-*"))) < len(processes) and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=180) for p in processes]
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err.decode()[-2000:]
        assert out.decode().strip() == ProductStore.head_revision()


def test_concurrent_migrations_from_threads_all_succeed(database_url: str) -> None:
    stores = [ProductStore(database_url) for _ in range(3)]
    barrier = threading.Barrier(len(stores))
    errors: list[BaseException] = []

    def migrate(s: ProductStore) -> None:
        barrier.wait()
        try:
            s.migrate()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=migrate, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    assert errors == []
    assert stores[0].current_revision() == ProductStore.head_revision()
    for s in stores:
        s.close()


@pytest.mark.postgres
def test_database_outage_raises_database_unavailable_and_recovers_after_restart(
    postgres_server, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = ProductStore(postgres_url, connect_timeout_s=2.0)
    store.migrate()
    store.write_results([make_result(product_id="before")])
    assert store.ping()

    postgres_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseUnavailable) as info:
            store.write_results([make_result(product_id="during")])
        assert time.monotonic() - started < 10
        with pytest.raises(DatabaseUnavailable):
            store.is_processed("before", "sha-1", "clothing-v1")
        assert not store.ping()
        assert postgres_server.password not in str(info.value)
        assert "***" in str(info.value)
    finally:
        postgres_server.start()

    # the same store, without being rebuilt, works again on the same URL
    assert store.write_results([make_result(product_id="after")]).written == 1
    assert store.is_processed("before", "sha-1", "clothing-v1")
    assert store.count_products() == 2
    assert postgres_server.password not in caplog.text
    store.close()


def test_redacted_url_hides_the_password() -> None:
    store = ProductStore("postgresql://shelf:s3cret@db.example:5432/catalog")
    assert store.redacted_url == "postgresql+psycopg://shelf:***@db.example:5432/catalog"
    assert "s3cret" not in repr(store)


def test_sqlite_store_uses_wal_and_creates_its_directory(tmp_path) -> None:
    store = ProductStore(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'shelfsight.db'}")
    store.migrate()
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
    store.close()


@pytest.mark.postgres
def test_postgres_launcher_status_names_the_server_without_its_password(postgres_server) -> None:
    script = Path(__file__).resolve().parents[2] / "deploy" / "dev" / "postgres_server.py"
    status = subprocess.run(
        [sys.executable, str(script), "status", str(postgres_server.data_dir)], capture_output=True, text=True
    )
    assert status.returncode == 0, status.stderr
    assert f"127.0.0.1:{postgres_server.port}" in status.stdout
    assert postgres_server.password not in status.stdout + status.stderr
    url = subprocess.run(
        [sys.executable, str(script), "url", str(postgres_server.data_dir)], capture_output=True, text=True
    )
    assert url.stdout.strip() == postgres_server.url
