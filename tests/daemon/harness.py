"""Runs `shelfsight run` as a real subprocess for the failure tests (kill, SIGTERM, outages, two replicas).

The daemon is configured through environment variables exactly as an operator would; its health and
metrics endpoint is read over HTTP. Helpers here only start, observe and stop processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import httpx
from devprocess import free_port  # deploy/dev, on sys.path via tests/conftest.py (re-exported here)
from kafka import KafkaConsumer, KafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[2]


class DaemonProcess:
    """`shelfsight run` by default; `command` runs another service the same way (`("learn",)`,
    `("review", "run")`): `wait_ready` and `metrics` read the HTTP port of those that serve one."""

    def __init__(self, env: dict[str, str], log_path: Path, command: Sequence[str] = ("run",)) -> None:
        self.port = free_port()
        self.env = {**os.environ, **env, "SHELFSIGHT_HTTP_PORT": str(self.port), "PYTHONUNBUFFERED": "1"}
        self.log_path = log_path
        self.command = list(command)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "daemon.cli", *self.command], env=self.env, cwd=ROOT, stdout=log, stderr=log
        )
        return self

    def wait_ready(self, timeout_s: float = 120.0) -> DaemonProcess:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"daemon not ready after {timeout_s}s:\n{self.log_tail()}")

    def metrics(self) -> dict[str, float]:
        """Samples as {'name{label="v",...}': value}."""
        body = httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=30.0).text
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(body):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
        return out

    def terminate(self, timeout_s: float = 120.0) -> int:
        # generous: a daemon may drain for SHUTDOWN_TIMEOUT_S (60 s in these tests), slower still on a loaded machine
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout_s)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def ensure_stopped(self) -> None:
        if self.alive:
            self.kill()


def daemon_env(
    *,
    bootstrap: str,
    topic: str,
    database_url: str,
    model_path: Path,
    file_root: Path,
    group_id: str = "shelfsight-test",
    extra: dict[str, str] | None = None,
) -> dict[str, str]:
    env = {
        "SHELFSIGHT_SOURCE": "kafka",
        "SHELFSIGHT_MODEL_PATH": str(model_path),
        "SHELFSIGHT_DATABASE_URL": database_url,
        "SHELFSIGHT_DEVICE": "cpu",
        "SHELFSIGHT_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "SHELFSIGHT_KAFKA__TOPIC": topic,
        "SHELFSIGHT_KAFKA__DEAD_LETTER_TOPIC": f"{topic}.dlq",
        "SHELFSIGHT_KAFKA__GROUP_ID": group_id,
        "SHELFSIGHT_KAFKA__SESSION_TIMEOUT_MS": "6000",
        "SHELFSIGHT_KAFKA__HEARTBEAT_INTERVAL_MS": "1000",
        "SHELFSIGHT_FETCH__FILE_ROOT": str(file_root),
        "SHELFSIGHT_FETCH__ATTEMPTS": "2",
        "SHELFSIGHT_SHUTDOWN_TIMEOUT_S": "60",
        "SHELFSIGHT_LOG_LEVEL": "INFO",
    }
    env.update(extra or {})
    return env


def product_event(product_id: str, image: Path, **extra: object) -> dict[str, object]:
    return {"schema_version": 1, "product_id": product_id, "image_urls": [image.as_uri()], **extra}


def produce(bootstrap: str, topic: str, events: Iterable[dict[str, object] | bytes], key: str | None = None) -> int:
    producer = connected_producer(bootstrap, topic)
    try:
        return send_events(producer, topic, events, key)
    finally:
        producer.close()


def connected_producer(bootstrap: str, topic: str) -> KafkaProducer:
    """A producer that already knows `topic`'s partitions: its first send does not wait for a metadata round trip."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    producer.partitions_for(topic)
    return producer


def send_events(
    producer: KafkaProducer, topic: str, events: Iterable[dict[str, object] | bytes], key: str | None = None
) -> int:
    """Sends `events` (dicts as JSON keyed by product id, or raw bytes) and waits for the broker's acks."""
    n = 0
    for e in events:
        if isinstance(e, bytes):
            value, k = e, (key or f"raw-{n}").encode()
        else:
            value, k = json.dumps(e).encode(), str(e.get("product_id", f"nokey-{n}")).encode()
        producer.send(topic, key=k, value=value)
        n += 1
    producer.flush(timeout=60)
    return n


def group_assignments(bootstrap: str, group_id: str, topic: str) -> list[set[int]] | None:
    """The partitions of `topic` each member of consumer group `group_id` holds, as the group coordinator sees them;
    None while the group is not Stable (members joining, a rebalance in progress). Members holding none of `topic`'s
    partitions are left out."""
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        group = admin.describe_groups([group_id])[group_id]
    finally:
        admin.close()
    if group["error"] or group["group_state"] != "Stable":
        return None
    held: list[set[int]] = []
    for member in group["members"]:
        assignment = member["member_assignment"] or {}
        mine = {p for a in assignment.get("assigned_partitions", []) if a["topic"] == topic for p in a["partitions"]}
        if mine:
            held.append(mine)
    return held


def read_all(bootstrap: str, topic: str, timeout_s: float = 5.0) -> list[object]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    records = list(consumer)
    consumer.close()
    return records


class Db:
    def __init__(self, url: str) -> None:
        self.engine = create_engine(url)

    def scalar(self, sql: str) -> object:
        with self.engine.connect() as con:
            return con.execute(text(sql)).scalar()

    def rows(self, sql: str) -> list[tuple[object, ...]]:
        with self.engine.connect() as con:
            return [tuple(r) for r in con.execute(text(sql))]

    def processed(self) -> int:
        try:
            return int(self.scalar("SELECT COUNT(*) FROM processing_log") or 0)
        except Exception:
            return 0


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, on_fail: Callable[[], str] = str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}\n{on_fail()}")


def prepare_learner_world(work: Path, database_url: str, cc0_dir: Path, version: str) -> Path:
    """What a learner process needs, from the CC0 fixture photos: a registry under `work/registry` whose champion
    (`version`, an untrained 64 px EfficientNet-Lite0) is registered and promoted, a labelled base set in
    `work/base` (45 photos), and a migrated product database holding 15 more products, each processed by the
    champion and corrected by an annotator. Returns the registry directory."""
    import csv
    import dataclasses
    import hashlib

    import torch

    from connectors.db import ProductStore
    from connectors.records import AttributeValue, ProductResult
    from learner.lifecycle.registry import ModelRegistry
    from learner.model.bundle import ModelBundle
    from learner.model.classifier import AttributeClassifier
    from learner.model.taxonomy import load_taxonomy

    images = cc0_dir / "images"
    with (cc0_dir / "labels.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if (images / f"{r['image']}.jpg").is_file()][::4][:60]
    base = work / "base"
    base.mkdir()
    with (base / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["image", "label", "kids"])
        writer.writeheader()
        for r in rows[:45]:
            writer.writerow({"image": str(images / f"{r['image']}.jpg"), "label": r["label"], "kids": r["kids"]})
    taxonomy = load_taxonomy(Path(__file__).resolve().parents[2] / "learner" / "taxonomies" / "clothing-cc0.yaml")
    torch.manual_seed(0)
    model = AttributeClassifier(taxonomy, "tf_efficientnet_lite0", pretrained=True)
    model.preprocessing = dataclasses.replace(model.preprocessing, input_size=64)
    registry = ModelRegistry(work / "registry")
    bundle = ModelBundle(version, taxonomy, model).save(work / "champion.safetensors")
    registry.promote(registry.register(bundle).version)
    store = ProductStore(database_url)
    store.migrate()
    for r in rows[45:]:
        path = images / f"{r['image']}.jpg"
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        result = ProductResult(
            product_id=str(path),  # the base set's product id is the image name it lists
            title=None,
            category_hint=None,
            event_id=None,
            image_url=path.as_uri(),
            image_digest=digest,
            model_version=version,
            attributes=[AttributeValue("garment", "Hat", 0.3)],
            source="test",
        )
        store.write_results([result])
        store.set_human_value(str(path), "garment", r["label"], annotator="ann", image_digest=digest)
    store.close()
    return registry.root
