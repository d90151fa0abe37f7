"""A running daemon follows the registry's champion (promote, then rollback) without a restart, while
events keep flowing: nothing dropped, nothing processed twice, each row names the model that wrote it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

from learner.lifecycle.registry import ModelRegistry
from learner.model.bundle import load_bundle
from tests.daemon.harness import DaemonProcess, Db, wait_until


def bundle_named(source: Path, version: str, out: Path) -> Path:
    bundle = load_bundle(source)
    bundle.model_version = version
    return bundle.save(out / f"{version}.safetensors")


def serving(daemon: DaemonProcess) -> str | None:
    for key in daemon.metrics():
        if key.startswith("shelfsight_model_info{"):
            return key.split('version="')[1].split('"')[0]
    return None


def test_promote_and_rollback_are_followed_without_restart_or_loss(tmp_path, untrained_bundle_path, cc0_images):
    registry = ModelRegistry(tmp_path / "registry")
    for version in ("model-a", "model-b"):
        registry.register(bundle_named(untrained_bundle_path, version, tmp_path))
    registry.promote("model-a")
    events = tmp_path / "events"
    events.mkdir()
    db_url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    daemon = DaemonProcess(
        {
            "SHELFSIGHT_SOURCE": "local",
            "SHELFSIGHT_REGISTRY_DIR": str(registry.root),
            "SHELFSIGHT_RELOAD_INTERVAL_S": "0.5",
            "SHELFSIGHT_DATABASE_URL": db_url,
            "SHELFSIGHT_DEVICE": "cpu",
            "SHELFSIGHT_LOCAL__EVENTS_DIR": str(events),
            "SHELFSIGHT_FETCH__FILE_ROOT": str(cc0_images[0].parent),
        },
        tmp_path / "daemon.log",
    ).start()
    n = 150
    stop = threading.Event()

    def feed() -> None:
        for i in range(n):
            event = {"schema_version": 1, "product_id": f"p{i:03d}", "image_urls": [cc0_images[i % 50].as_uri()]}
            partial = events / f"{i:03d}.json.partial"  # written, then renamed: the source never reads half a file
            partial.write_text(json.dumps(event))
            partial.replace(events / f"{i:03d}.json")
            if stop.wait(0.08):
                return

    feeder = threading.Thread(target=feed)
    try:
        daemon.wait_ready()
        pid = daemon.proc.pid
        assert serving(daemon) == "model-a"
        db = Db(db_url)
        feeder.start()
        wait_until(lambda: db.processed() >= 30, 120, "30 products on model-a", daemon.log_tail)
        registry.promote("model-b")
        wait_until(lambda: serving(daemon) == "model-b", 120, "the daemon to serve model-b", daemon.log_tail)
        wait_until(lambda: db.processed() >= 90, 120, "more products on model-b", daemon.log_tail)
        registry.rollback()
        wait_until(lambda: serving(daemon) == "model-a", 120, "the daemon to follow the rollback", daemon.log_tail)
        feeder.join(timeout=120)
        wait_until(lambda: db.processed() >= n, 120, f"all {n} products", daemon.log_tail)
        reloads = daemon.metrics()['shelfsight_model_reloads_total{outcome="loaded"}']
        assert daemon.alive and daemon.proc.pid == pid, "no restart"
    finally:
        stop.set()
        daemon.terminate()
    assert reloads == 2
    assert db.scalar("SELECT COUNT(*) FROM processing_log") == n
    assert db.scalar("SELECT MAX(attempts) FROM processing_log") == 1, "nothing processed twice"
    assert db.scalar("SELECT COUNT(DISTINCT product_id) FROM product_attributes") == n, "nothing dropped"
    versions = {v for (v,) in db.rows("SELECT DISTINCT model_version FROM product_attributes")}
    assert versions == {"model-a", "model-b"}, "each row records the model version that wrote it"


def test_a_new_champion_is_exported_and_served_on_the_onnxruntime_backend(tmp_path, untrained_bundle_path, cc0_images):
    from daemon.metrics import ServiceMetrics
    from daemon.reload import ModelSource, ModelWatcher
    from learner.inference.backends import load_engine

    registry = ModelRegistry(tmp_path / "registry")
    for version in ("model-a", "model-b"):
        registry.register(bundle_named(untrained_bundle_path, version, tmp_path))
    registry.promote("model-a")
    source = ModelSource(tmp_path / "unused.safetensors", registry.root)

    def build(path: Path):  # type: ignore[no-untyped-def]
        return load_engine(path, "onnxruntime", device="cpu")

    serving_engine = build(source.resolve())
    installed = []
    watcher = ModelWatcher(source, build, installed.append, ServiceMetrics(), interval_s=60)
    assert serving_engine.backend == "onnxruntime" and serving_engine.model_version == "model-a"

    registry.promote("model-b")
    assert watcher.check_now(), "the new champion was loaded"
    (engine,) = installed
    assert engine.backend == "onnxruntime" and engine.model_version == "model-b"
    (tags,) = engine.tag_bytes([cc0_images[0].read_bytes()])
    assert tags.model_version == "model-b"
