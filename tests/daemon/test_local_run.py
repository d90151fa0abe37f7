"""The embedded default end to end: a directory of JSON events, SQLite, the real engine, no broker."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from daemon.config import Settings
from daemon.service import run_service


def write_event(events: Path, name: str, doc: dict | str) -> None:
    (events / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))


def settings_for(tmp_path: Path, bundle: Path, file_root: Path, backend: str = "torch") -> Settings:
    return Settings(
        backend=backend,  # type: ignore[arg-type]
        source="local",
        model_path=bundle,
        database_url=f"sqlite:///{tmp_path / 'db.sqlite'}",
        http_port=0,
        local={"events_dir": tmp_path / "events", "exit_when_idle": True},  # type: ignore[arg-type]
        fetch={"file_root": file_root, "attempts": 1},  # type: ignore[arg-type]
    )


def test_events_in_a_directory_end_as_attributes_in_sqlite(tmp_path, untrained_bundle_path, cc0_images, backend):
    events = tmp_path / "events"
    events.mkdir()
    root = cc0_images[0].parent
    for i, img in enumerate(cc0_images[:6]):
        write_event(events, f"e{i}.json", {"schema_version": 1, "product_id": f"p{i}", "image_urls": [img.as_uri()]})
    # two images for one product, as JSON lines
    two = {"schema_version": 1, "product_id": "p-two", "image_urls": [cc0_images[7].as_uri(), cc0_images[8].as_uri()]}
    two |= {"title": "Linen shirt", "description": "Short sleeves, chest pocket."}
    write_event(events, "more.jsonl", json.dumps(two) + "\n")

    run_service(settings_for(tmp_path, untrained_bundle_path, root, backend))

    con = sqlite3.connect(tmp_path / "db.sqlite")
    products = {r[0] for r in con.execute("SELECT product_id FROM products")}
    assert products == {f"p{i}" for i in range(6)} | {"p-two"}
    texts = dict(con.execute("SELECT product_id, title || ' / ' || description FROM products").fetchall())
    assert texts == {**{f"p{i}": None for i in range(6)}, "p-two": "Linen shirt / Short sleeves, chest pocket."}
    attrs = con.execute(
        "SELECT attribute, value, confidence, source, model_version FROM product_attributes WHERE product_id='p0'"
    ).fetchall()
    assert {a[0] for a in attrs} == {"garment", "kids"}
    for _attr, _value, confidence, source, version in attrs:
        assert 0 < confidence <= 1 and source == "model" and version == "cc0-untrained-test"
    assert con.execute("SELECT COUNT(*) FROM processing_log").fetchone()[0] == 7
    # processed files are moved aside, so a restart does not read them again
    assert sorted(p.name for p in (events / "done").iterdir()) == sorted(
        [f"e{i}.json" for i in range(6)] + ["more.jsonl"]
    )


def test_bad_events_are_dead_lettered_with_a_reason_and_good_ones_still_processed(
    tmp_path, untrained_bundle_path, cc0_images, backend
):
    events = tmp_path / "events"
    events.mkdir()
    root = cc0_images[0].parent
    (tmp_path / "outside.jpg").write_bytes(cc0_images[0].read_bytes())
    write_event(events, "a-malformed.json", "{not json")
    write_event(events, "b-no-id.json", {"schema_version": 1, "image_urls": [cc0_images[0].as_uri()]})
    write_event(events, "c-version.json", {"schema_version": 99, "product_id": "x", "image_urls": ["file:///x.jpg"]})
    outside = {"schema_version": 1, "product_id": "y", "image_urls": [(tmp_path / "outside.jpg").as_uri()]}
    write_event(events, "d-outside.json", outside)
    write_event(
        events, "e-good.json", {"schema_version": 1, "product_id": "good", "image_urls": [cc0_images[1].as_uri()]}
    )

    run_service(settings_for(tmp_path, untrained_bundle_path, root, backend))

    dead = [json.loads(p.read_text()) for p in sorted((events / "dead-letter").glob("*.json"))]
    reasons = sorted(d["error_class"] for d in dead)
    assert reasons == sorted(["malformed_json", "invalid_event", "unknown_schema_version", "fetch_file_outside_root"])
    assert any(d["payload"] == "{not json" for d in dead), "the original payload is kept"
    con = sqlite3.connect(tmp_path / "db.sqlite")
    assert [r[0] for r in con.execute("SELECT product_id FROM products")] == ["good"]


def test_running_the_same_events_again_writes_nothing_twice(tmp_path, untrained_bundle_path, cc0_images, backend):
    events = tmp_path / "events"
    events.mkdir()
    event = {"schema_version": 1, "product_id": "p", "image_urls": [cc0_images[0].as_uri()]}
    write_event(events, "first.json", event)
    settings = settings_for(tmp_path, untrained_bundle_path, cc0_images[0].parent, backend)
    run_service(settings)
    write_event(events, "again.json", event)  # the shop re-publishes the same product
    run_service(settings)
    con = sqlite3.connect(tmp_path / "db.sqlite")
    assert con.execute("SELECT COUNT(*), MAX(attempts) FROM processing_log").fetchone() == (1, 2)
    assert con.execute("SELECT COUNT(*) FROM product_attributes WHERE product_id='p'").fetchone()[0] == 2


def test_a_value_below_its_groups_auto_fill_threshold_is_stored_as_a_suggestion(
    tmp_path, calibrated_bundle_path, cc0_images, backend
):
    events = tmp_path / "events"
    events.mkdir()
    write_event(events, "e.json", {"schema_version": 1, "product_id": "p0", "image_urls": [cc0_images[0].as_uri()]})

    run_service(settings_for(tmp_path, calibrated_bundle_path, cc0_images[0].parent, backend))

    con = sqlite3.connect(tmp_path / "db.sqlite")
    rows = con.execute("SELECT attribute, auto_filled, confidence, source FROM product_attributes").fetchall()
    by_attribute = {a: (bool(auto), confidence, source) for a, auto, confidence, source in rows}
    # garment's threshold is above 1: kept with its confidence, but as a suggestion; kids' threshold is 0
    assert by_attribute["garment"][0] is False and 0 < by_attribute["garment"][1] < 1
    assert by_attribute["kids"][0] is True
    assert {source for _, _, source in by_attribute.values()} == {"model"}
