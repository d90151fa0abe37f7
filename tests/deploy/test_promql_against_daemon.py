"""Every PromQL expression of the Grafana dashboard and the Prometheus rules, evaluated by a real Prometheus
that scrapes the real services: the enrichment daemon, the review worker and the learner.

A dashboard panel or rule that names a metric the daemon does not export, misspells a label, or does not parse,
shows nothing in production and fails nobody's build: these tests fail instead. Expressions are read from
deploy/grafana/dashboards/*.json (every target `expr` and every `label_values(...)` variable) and
deploy/prometheus/rules/*.yml (every `expr`), so a new panel or rule is checked without touching this file.

What is checked, per expression:
- it parses (promql-parser) and Prometheus evaluates it without error;
- every metric name in it is exported by one of the scraped services, is a recording rule of ours, or is `up`
  (the one series Prometheus itself adds to every target, used by the target-down alerts);
- every vector selector in it, with its label matchers, selects at least one series (a misspelled label value
  such as stage="infer" selects nothing);
- dashboard and recording-rule expressions return data; alert expressions are conditions (empty while all is
  well), so for them each compared signal returns data: `x > 2` checks `x`, `a and b` checks `a` and `b`,
  `absent(x)` checks `x`.

The scraped targets, each a real process started as an operator would (environment variables):
- job "shelfsight": `shelfsight run` (Kafka source, SQLite, an untrained model of the production architecture with
  a shift guard, review routing on) fed with a steady stream of good and bad events from the real broker;
- job "shelfsight-review": `shelfsight review run` on the daemon's database, sending the routed products to a real
  Label Studio, where the fixture annotates two tasks through the SDK (the answers come back by webhook);
- job "shelfsight-learner": `shelfsight learn` (the scheduled service) that runs one real retraining, ending in a
  promotion decision, before Prometheus starts.
Metrics that only exist after an event (a dead letter, a capped product, an annotation, a promotion decision, a
drift figure: 50 photos scored by a model with a shift guard, a product routed for an unfamiliar photo) exist
because the fixtures make the event happen.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon.harness import (
    DaemonProcess,
    daemon_env,
    free_port,
    prepare_learner_world,
    product_event,
    wait_until,
)

from .conftest import ROOT
from .live_services import Prometheus, ServiceProcess, stop_service, wait_for_data
from .promql_expressions import (
    DASHBOARDS,
    EXPRESSIONS,
    JOB,
    LEARNER_JOB,
    REVIEW_JOB,
    RULE_FILES,
    SERIES_ADDED_BY_PROMETHEUS,
    Expression,
    alert_signals,
    all_panels,
    metric_names,
    promql_parser,
    recording_rule_names,
    selector_promql,
    vector_selectors,
)

# the first test also waits for the services to start and the learner to retrain (about a minute on two cores, several
# on a loaded machine: the fixtures' waits below are generous, and so is this ceiling)
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]

CC0_DIR = ROOT / "deploy" / "demo" / "clothing-cc0"


@pytest.fixture(scope="module")
def learner_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A real `shelfsight learn` (the scheduled service, SQLite) whose corrections job starts one real retraining
    run at once: a small champion (EfficientNet-Lite0 at 64 px, backbone frozen) in a registry, a labelled base
    set and human corrections in its product database. Started first and not waited for here: the run trains
    while the other services start (`scrape_targets` waits for its promotion decision)."""
    work = tmp_path_factory.mktemp("promql-learner")
    database_url = f"sqlite:///{work / 'learner.sqlite'}"
    registry = prepare_learner_world(work, database_url, CC0_DIR, "promql-champion")
    env = {
        "OMP_NUM_THREADS": "1",
        "SHELFSIGHT_DATABASE_URL": database_url,
        "SHELFSIGHT_DEVICE": "cpu",
        "SHELFSIGHT_LOG_LEVEL": "WARNING",
        "SHELFSIGHT_HTTP_HOST": "127.0.0.1",
        "SHELFSIGHT_FETCH__FILE_ROOT": str(CC0_DIR / "images"),
        "SHELFSIGHT_LEARNER__REGISTRY_DIR": str(registry),
        "SHELFSIGHT_LEARNER__WORK_DIR": str(work / "work"),
        "SHELFSIGHT_LEARNER__BASE_DATA": str(work / "base"),
        "SHELFSIGHT_LEARNER__CHECK_INTERVAL_S": "1",  # the corrections job: first run one second after start
        "SHELFSIGHT_LEARNER__MIN_CORRECTIONS": "1",
        "SHELFSIGHT_LEARNER__HOLDOUT_FRACTION": "0.3",
        "SHELFSIGHT_LEARNER__EPOCHS": "1",
        "SHELFSIGHT_LEARNER__BATCH_SIZE": "16",
        "SHELFSIGHT_LEARNER__LR": "0.003",
        "SHELFSIGHT_LEARNER__FREEZE_STAGES": "9",
        "SHELFSIGHT_LEARNER__THREADS": "1",
        "SHELFSIGHT_LEARNER__BOOTSTRAP_SAMPLES": "100",
    }
    learner = ServiceProcess(["learn"], env, work / "learner.log", "SHELFSIGHT_HTTP_PORT")
    learner.env.pop("SHELFSIGHT_CONFIG", None)
    learner.start()
    try:
        yield learner
    finally:
        stop_service(learner)


FED_IMAGES = [0, 1, 2, 3, 5, 6, 7, 8]  # the indexes into cc0_images of the photos `daemon_service` feeds


@pytest.fixture(scope="module")
def guarded_bundle_path(
    untrained_bundle_path: Path, cc0_images: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The untrained bundle with a shift guard, so that the daemon exports the guard's drift figure and unfamiliar
    share and routes products for an unfamiliar photo. The guard is set, not fitted (untrained heads auto-fill
    nothing to fit a cut-off on): its reference is the deciles of the fed photos' own scores, its cut-off their 30th
    percentile, so most fed photos are unfamiliar and some are not."""
    from learner.inference.engine import TaggingEngine
    from learner.model.bundle import load_bundle
    from learner.model.shift_guard import PSI_BINS, ShiftGuard

    bundle = load_bundle(untrained_bundle_path)
    tags = TaggingEngine(bundle, device="cpu").tag_bytes([cc0_images[i].read_bytes() for i in FED_IMAGES])
    scores = np.array([t.shift_score for t in tags], dtype=np.float64)
    bundle.shift_guard = ShiftGuard(
        cutoff=float(np.quantile(scores, 0.3)),
        reference=tuple(float(v) for v in np.quantile(scores, np.linspace(0, 1, PSI_BINS + 1))),
        max_withheld=0.02,
        withheld_share=0.02,
        groups=tuple(g.name for g in bundle.taxonomy.classifier_groups if not g.multi_label),
        fitted_on={"note": "set by test_promql_against_daemon, not fitted"},
    )
    return bundle.save(tmp_path_factory.mktemp("bundles") / "guarded.safetensors")


@pytest.fixture(scope="module")
def daemon_service(
    kafka_broker: Any, guarded_bundle_path: Path, cc0_images: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DaemonProcess]:
    """A real `shelfsight run` consuming a steady stream of events from the real broker, some of them bad (a file
    that is not an image), so processing, failures and dead letters all have series. Review routing is on, with a
    cap of 4 products an hour: the first ones go to the outbox (for `review_service`), the rest are capped. The
    model's shift guard finds most photos unfamiliar: some products are routed, and others capped, for that."""
    from connectors.kafka_producers import EventPublisher, ensure_topics

    work = tmp_path_factory.mktemp("promql-daemon")
    topic = "promql.products"
    ensure_topics(kafka_broker.bootstrap, {topic: 2, f"{topic}.dlq": 1})
    not_an_image = CC0_DIR / "labels.csv"
    env = daemon_env(
        bootstrap=kafka_broker.bootstrap,
        topic=topic,
        database_url=f"sqlite:///{work / 'db.sqlite'}",
        model_path=guarded_bundle_path,
        file_root=CC0_DIR,
        group_id="promql",
        extra={
            "SHELFSIGHT_HTTP_HOST": "127.0.0.1",
            "SHELFSIGHT_LOG_LEVEL": "WARNING",
            "SHELFSIGHT_REVIEW__ENABLED": "true",
            "SHELFSIGHT_REVIEW__MAX_PER_HOUR": "4",
        },
    )
    daemon = DaemonProcess(env, work / "daemon.log").start().wait_ready()
    stop = threading.Event()

    def feed() -> None:
        publisher = EventPublisher(kafka_broker.bootstrap, topic)
        i = 0
        deadline = time.monotonic() + 1200  # a safety stop only: the fixture's teardown ends the feed
        while not stop.wait(0.25) and time.monotonic() < deadline:
            image = not_an_image if i % 5 == 4 else cc0_images[i % 10]  # the photos of FED_IMAGES
            publisher.publish(product_event(f"promql-{i}", image))
            publisher.flush()
            i += 1
        publisher.close()

    feeder = threading.Thread(target=feed, name="promql-feeder", daemon=True)
    feeder.start()

    def busy() -> bool:
        samples = daemon.metrics()
        unfamiliar = {key.split("{")[0] for key in samples if 'reason="unfamiliar_photo"' in key}
        return {
            "shelfsight_consumer_lag_messages",
            "shelfsight_dead_letters_total",
            "shelfsight_events_consumed_total",
            "shelfsight_photo_shift_psi",
            "shelfsight_photo_unfamiliar_share",
        } <= {key.split("{")[0] for key in samples} and {
            "shelfsight_review_routed_total",
            "shelfsight_review_capped_total",
        } <= unfamiliar

    try:
        # hand the daemon over once it is busy: partitions assigned (lag reported), events tagged, dead-lettered,
        # a drift figure computed (50 photos), products routed to review and capped for an unfamiliar photo
        wait_until(busy, 180, "the daemon to consume, tag, dead-letter, score and route events", daemon.log_tail)
        yield daemon
    finally:
        stop.set()
        feeder.join(timeout=60)
        stop_service(daemon)


def _garment_answer(value: str) -> list[dict[str, Any]]:
    return [{"from_name": "garment", "to_name": "image", "type": "choices", "value": {"choices": [value]}}]


@pytest.fixture(scope="module")
def review_service(
    daemon_service: DaemonProcess,
    label_studio_server: Any,
    guarded_bundle_path: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServiceProcess]:
    """A real `shelfsight review run` on the daemon's database: it sends the routed products to the real Label
    Studio, where an annotator (the SDK) keeps the model's garment on one task and changes it on another; the
    answers come back by webhook, so annotations, corrections, agreement and delays all have series."""
    from connectors.db import ProductStore, ReviewStore
    from connectors.labelstudio import LabelStudioClient

    label_studio_server.start()  # the session's server, restarted if a test elsewhere left it stopped
    work = tmp_path_factory.mktemp("promql-review")
    database_url = daemon_service.env["SHELFSIGHT_DATABASE_URL"]
    env = {
        "SHELFSIGHT_DATABASE_URL": database_url,
        "SHELFSIGHT_MODEL_PATH": str(guarded_bundle_path),
        "SHELFSIGHT_FETCH__FILE_ROOT": str(CC0_DIR / "images"),
        "SHELFSIGHT_LOG_LEVEL": "WARNING",
        "SHELFSIGHT_REVIEW__LABEL_STUDIO_URL": label_studio_server.url,
        "SHELFSIGHT_REVIEW__LABEL_STUDIO_TOKEN": label_studio_server.token,
        "SHELFSIGHT_REVIEW__PROJECT_TITLE": f"promql-{uuid.uuid4().hex[:8]}",
        "SHELFSIGHT_REVIEW__LOCAL_FILES_ROOT": str(CC0_DIR),
        "SHELFSIGHT_REVIEW__WEBHOOK_SECRET": "promql-webhook-secret",
        "SHELFSIGHT_REVIEW__WEBHOOK_HOST": "127.0.0.1",
        "SHELFSIGHT_REVIEW__SEND_INTERVAL_S": "0.5",
        "SHELFSIGHT_REVIEW__POLL_INTERVAL_S": "2",
    }
    worker = ServiceProcess(["review", "run"], env, work / "review.log", "SHELFSIGHT_REVIEW__WEBHOOK_PORT")
    worker.env.pop("SHELFSIGHT_CONFIG", None)
    worker.start()
    try:
        wait_until(
            lambda: (worker.sample("shelfsight_review_tasks_sent_total") or 0) >= 2,
            120,
            "the review worker to send routed products to Label Studio",
            worker.log_tail,
        )
        store = ProductStore(database_url)
        sent = [i for i in ReviewStore(store).outbox_items() if i.task_id is not None][:2]
        store.close()
        client = LabelStudioClient(label_studio_server.url, label_studio_server.token)
        for item, keep in zip(sent, (True, False), strict=True):
            model_value = str(item.payload["model_values"]["garment"]["value"])
            answer = model_value if keep else ("Dress" if model_value != "Dress" else "Skirt")
            client.sdk.annotations.create(id=item.task_id, result=_garment_answer(answer))
        wait_until(
            lambda: all(
                (
                    worker.sample("shelfsight_review_corrections_total", group="garment", model_was_right="true"),
                    worker.sample("shelfsight_review_corrections_total", group="garment", model_was_right="false"),
                    worker.sample("shelfsight_review_agreement_ratio", group="garment") is not None,
                    worker.sample("shelfsight_review_webhooks_total", outcome="accepted"),
                    worker.sample("shelfsight_review_polls_total", outcome="ok"),
                )
            ),
            120,
            "both annotations to reach the review worker by webhook",
            worker.log_tail,
        )
        yield worker
    finally:
        stop_service(worker)


@pytest.fixture(scope="module")
def scrape_targets(
    learner_service: ServiceProcess, daemon_service: DaemonProcess, review_service: ServiceProcess
) -> dict[str, str]:
    """job -> host:port of the three services, once the learner's retraining run reached a promotion decision."""
    wait_until(
        lambda: (
            not learner_service.alive
            or (learner_service.sample("shelfsight_learner_runs_total", outcome="failed") or 0) > 0
            or (learner_service.sample("shelfsight_learner_promotion_decisions_total", decision="promoted") or 0)
            + (learner_service.sample("shelfsight_learner_promotion_decisions_total", decision="rejected") or 0)
            > 0
        ),
        400,
        "the learner's retraining run to reach a promotion decision",
        learner_service.log_tail,
    )
    assert learner_service.alive, learner_service.log_tail()
    assert not learner_service.sample("shelfsight_learner_runs_total", outcome="failed"), learner_service.log_tail()
    return {
        JOB: f"127.0.0.1:{daemon_service.port}",
        REVIEW_JOB: f"127.0.0.1:{review_service.port}",
        LEARNER_JOB: f"127.0.0.1:{learner_service.port}",
    }


@pytest.fixture(scope="module")
def exported_metric_names(scrape_targets: dict[str, str]) -> set[str]:
    names = set()
    for target in scrape_targets.values():
        with urllib.request.urlopen(f"http://{target}/metrics", timeout=30) as response:
            text = response.read().decode()
        names |= {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    return names


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, scrape_targets: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]} for job, target in scrape_targets.items()
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            prometheus_binary,
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}: {(workdir / 'prometheus.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready after 120 s: {(workdir / 'prometheus.log').read_text()}")
            time.sleep(0.2)
        wait_for_data(prom, recording_rule_names())
        yield prom
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# -- the checks --------------------------------------------------------------------------------------------------
def test_expressions_are_found_in_every_dashboard_panel_and_rule() -> None:
    assert DASHBOARDS and RULE_FILES
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        graph_panels = [p for p in all_panels(dashboard["panels"]) if p.get("type") != "row"]
        with_expr = {e.origin.split(" target ")[0] for e in EXPRESSIONS if e.kind == "dashboard"}
        for panel in graph_panels:
            assert f"{path.name} panel {panel.get('title')!r}" in with_expr, f"panel {panel.get('title')!r} has no expr"
    kinds = {e.kind for e in EXPRESSIONS}
    assert kinds == {"dashboard", "variable", "record", "alert"}, kinds


@pytest.mark.label_studio
def test_prometheus_scrapes_the_daemon_the_review_worker_and_the_learner(prometheus: Prometheus) -> None:
    for job in (JOB, REVIEW_JOB, LEARNER_JOB):
        assert prometheus.query(f'up{{job="{job}"}} == 1'), f"job {job} is not scraped"


@pytest.mark.label_studio
@pytest.mark.parametrize("expression", EXPRESSIONS, ids=lambda e: e.origin)
def test_expression_refers_only_to_metrics_the_services_export(
    expression: Expression, exported_metric_names: set[str]
) -> None:
    names = metric_names(promql_parser.parse(expression.promql))
    assert names, f"{expression}: selects no metric by name"
    unknown = names - exported_metric_names - recording_rule_names() - SERIES_ADDED_BY_PROMETHEUS
    assert not unknown, (
        f"{expression.origin} uses {sorted(unknown)}, which no ShelfSight service exports "
        f"(exported: {sorted(n for n in exported_metric_names if n.startswith('shelfsight_'))})"
    )


@pytest.mark.label_studio
@pytest.mark.parametrize("expression", EXPRESSIONS, ids=lambda e: e.origin)
def test_every_selector_of_expression_matches_series(expression: Expression, prometheus: Prometheus) -> None:
    for selector in vector_selectors(promql_parser.parse(expression.promql)):
        promql = selector_promql(selector)
        assert prometheus.query(promql), f"{expression.origin}: selector {promql} matches no series"


@pytest.mark.label_studio
@pytest.mark.parametrize("expression", EXPRESSIONS, ids=lambda e: e.origin)
def test_expression_returns_data(expression: Expression, prometheus: Prometheus) -> None:
    tree = promql_parser.parse(expression.promql)
    prometheus.query(expression.promql)  # the whole expression is accepted by Prometheus, whatever its kind
    if expression.kind == "alert":
        for signal in alert_signals(tree):
            assert prometheus.query(str(signal)), f"{expression.origin}: {signal} returns no data"
    elif expression.kind == "variable":
        result = prometheus.query(expression.promql)
        assert result, f"{expression.origin}: {expression.promql} returns no data"
        assert all(expression.label in r["metric"] for r in result), (
            f"{expression.origin}: series of {expression.promql} have no label {expression.label!r}"
        )
    else:
        assert prometheus.query(expression.promql), f"{expression.origin} returns no data"
