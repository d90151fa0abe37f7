"""Every PromQL expression of the Grafana dashboard and the Prometheus rules, evaluated by a real Prometheus
that scrapes the daemon's metrics.

A dashboard panel or rule that names a metric the daemon does not export, misspells a label, or does not parse,
shows nothing in production and fails nobody's build: these tests fail instead. Expressions are read from
deploy/grafana/dashboards/*.json (every target `expr` and every `label_values(...)` variable) and
deploy/prometheus/rules/*.yml (every `expr`), so a new panel or rule is checked without touching this file.

What is checked, per expression:
- it parses (promql-parser) and Prometheus evaluates it without error;
- every metric name in it is exported by the scraped target, is a recording rule of ours, or is `up`
  (the one series Prometheus itself adds to every target, used by the target-down alerts);
- every vector selector in it, with its label matchers, selects at least one series (a misspelled label value
  such as stage="infer" selects nothing);
- dashboard and recording-rule expressions return data; alert expressions are conditions (empty while all is
  well), so for them each compared signal returns data: `x > 2` checks `x`, `a and b` checks `a` and `b`,
  `absent(x)` checks `x`.

The scraped target is a real `shelfsight run` (Kafka source, SQLite, an untrained model of the production
architecture) fed with a steady stream of good and bad events by the `metrics_target` fixture.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .conftest import DEPLOY, in_ci

try:
    import promql_parser
except ImportError:
    if in_ci():
        raise
    pytest.skip("needs promql-parser: pip install promql-parser", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
JOB = "shelfsight"  # the job name the rules and the dashboard's default expect (deploy/prometheus/prometheus.yml)
SERIES_ADDED_BY_PROMETHEUS = {"up"}
# Values for Grafana's variables: the built-in interval and this dashboard's own template variables.
GRAFANA_VARIABLES = {
    "__rate_interval": "15s",
    "__interval": "5s",
    "__range": "1m",
    "job": JOB,
    "instance": ".*",
    "datasource": "prometheus",
}


# -- where the expressions come from -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Expression:
    origin: str  # file and panel/rule, for the failure message
    promql: str  # as written, Grafana variables substituted
    kind: str  # "dashboard" | "record" | "alert" | "variable"
    label: str | None = None  # for label_values(metric, label) variables: the label the variable lists

    def __str__(self) -> str:
        return f"{self.origin}: {self.promql}"


def substitute_grafana_variables(expr: str) -> str:
    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in GRAFANA_VARIABLES:
            raise KeyError(f"unknown Grafana variable ${name} in {expr!r}: add a test value to GRAFANA_VARIABLES")
        return GRAFANA_VARIABLES[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)", value, expr)


def _panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))  # rows hold their panels when collapsed


def dashboard_expressions(path: Path) -> list[Expression]:
    dashboard = json.loads(path.read_text())
    found = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                origin = f"{path.name} panel {panel.get('title')!r} target {target.get('refId')}"
                found.append(Expression(origin, substitute_grafana_variables(target["expr"]), "dashboard"))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable.get("query"), dict) else variable.get("query", "")
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", query)
        if m is None:
            raise AssertionError(f"{path.name} variable {variable['name']}: only label_values(metric, label) is known")
        origin = f"{path.name} variable ${variable['name']}"
        found.append(Expression(origin, substitute_grafana_variables(m.group(1)), "variable", label=m.group(2)))
    return found


def rule_expressions(path: Path) -> list[Expression]:
    found = []
    for group in yaml.safe_load(path.read_text())["groups"]:
        for rule in group["rules"]:
            kind = "record" if "record" in rule else "alert"
            origin = f"{path.name} {kind} {rule.get('record') or rule.get('alert')}"
            found.append(Expression(origin, rule["expr"].strip(), kind))
    return found


def recording_rule_names() -> set[str]:
    return {
        rule["record"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


EXPRESSIONS = [e for p in DASHBOARDS for e in dashboard_expressions(p)] + [
    e for p in RULE_FILES for e in rule_expressions(p)
]


# -- PromQL syntax tree ------------------------------------------------------------------------------------------
def _children(node: object) -> list[object]:
    if isinstance(node, promql_parser.BinaryExpr):
        return [node.lhs, node.rhs]
    if isinstance(node, promql_parser.AggregateExpr):
        return [node.expr] + ([node.param] if node.param is not None else [])
    if isinstance(node, promql_parser.Call):
        return list(node.args)
    if isinstance(node, promql_parser.MatrixSelector):
        return [node.vector_selector]
    if isinstance(node, promql_parser.ParenExpr | promql_parser.SubqueryExpr | promql_parser.UnaryExpr):
        return [node.expr]
    return []


def vector_selectors(node: object) -> Iterator[object]:
    if isinstance(node, promql_parser.VectorSelector):
        yield node
    for child in _children(node):
        yield from vector_selectors(child)


def selector_promql(selector: object) -> str:
    """The selector alone, without offset or @ modifiers."""
    matchers = []
    for m in selector.matchers.matchers:
        op = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}[str(m.op).split(".")[-1]]
        matchers.append(f"{m.name}{op}{json.dumps(m.value)}")
    return f"{selector.name or ''}{{{', '.join(matchers)}}}"


def metric_names(node: object) -> set[str]:
    names = set()
    for selector in vector_selectors(node):
        if selector.name:
            names.add(selector.name)
        names.update(m.value for m in selector.matchers.matchers if m.name == "__name__")
    return names


_COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}
_SET_OPERATORS = {"and", "unless"}


def alert_signals(node: object) -> list[object]:
    """The parts of an alert condition that must have data for the condition to mean anything."""
    while isinstance(node, promql_parser.ParenExpr):
        node = node.expr
    if isinstance(node, promql_parser.BinaryExpr):
        op = str(node.op).strip().lower()
        if op in _SET_OPERATORS:
            return alert_signals(node.lhs) + alert_signals(node.rhs)
        returns_bool = node.modifier is not None and node.modifier.return_bool
        if op in _COMPARISONS and not returns_bool:
            if isinstance(node.rhs, promql_parser.NumberLiteral):
                return alert_signals(node.lhs)
            if isinstance(node.lhs, promql_parser.NumberLiteral):
                return alert_signals(node.rhs)
    if isinstance(node, promql_parser.Call) and node.func.name in ("absent", "absent_over_time"):
        return list(node.args)
    return [node]


# -- the scraped target ------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def metrics_target(
    kafka_broker: Any, untrained_bundle_path: Path, cc0_images: list[Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """host:port of a real `shelfsight run` consuming a steady stream of events from the real broker, some of
    them bad (a file that is not an image), so processing, failures and dead letters all have series."""
    from connectors.kafka import EventPublisher, ensure_topics
    from tests.daemon.harness import DaemonProcess, daemon_env, product_event, wait_until

    work = tmp_path_factory.mktemp("promql-daemon")
    topic = "promql.products"
    ensure_topics(kafka_broker.bootstrap, {topic: 2, f"{topic}.dlq": 1})
    root = work / "images"
    root.mkdir()
    for image in cc0_images[:10]:
        (root / image.name).write_bytes(image.read_bytes())
    (root / "not-an-image.jpg").write_bytes(b"<html>an error page</html>")
    env = daemon_env(
        bootstrap=kafka_broker.bootstrap,
        topic=topic,
        database_url=f"sqlite:///{work / 'db.sqlite'}",
        model_path=untrained_bundle_path,
        file_root=root,
        group_id="promql",
        extra={"SHELFSIGHT_HTTP_HOST": "127.0.0.1", "SHELFSIGHT_LOG_LEVEL": "WARNING"},
    )
    daemon = DaemonProcess(env, work / "daemon.log").start().wait_ready()
    stop = threading.Event()

    def feed() -> None:
        publisher = EventPublisher(kafka_broker.bootstrap, topic)
        i = 0
        deadline = time.monotonic() + 240
        while not stop.wait(0.25) and time.monotonic() < deadline:
            image = root / ("not-an-image.jpg" if i % 5 == 4 else cc0_images[i % 10].name)
            publisher.publish(product_event(f"promql-{i}", image))
            publisher.flush()
            i += 1
        publisher.close()

    feeder = threading.Thread(target=feed, name="promql-feeder", daemon=True)
    feeder.start()
    try:
        # hand the daemon over once it is busy: partitions assigned (lag reported), events tagged and dead-lettered
        wait_until(
            lambda: (
                {
                    "shelfsight_consumer_lag_messages",
                    "shelfsight_dead_letters_total",
                    "shelfsight_events_consumed_total",
                }
                <= {key.split("{")[0] for key in daemon.metrics()}
            ),
            90,
            "the daemon to consume, tag and dead-letter events",
            daemon.log_tail,
        )
        yield f"127.0.0.1:{daemon.port}"
    finally:
        stop.set()
        feeder.join(timeout=10)
        daemon.terminate()


@pytest.fixture(scope="module")
def exported_metric_names(metrics_target: str) -> set[str]:
    with urllib.request.urlopen(f"http://{metrics_target}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}


# -- a real Prometheus -------------------------------------------------------------------------------------------
class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def query(self, promql: str) -> list[dict]:
        """Instant query; raises AssertionError with Prometheus' own message when the query is rejected."""
        data = urllib.parse.urlencode({"query": promql}).encode()
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query", data=data, timeout=10) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:
            body = json.load(exc)
            raise AssertionError(f"Prometheus rejected {promql!r}: {body.get('error')}") from None
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return result if isinstance(result, list) else [result]


def _wait_for_data(prom: Prometheus, recording_rules: set[str], timeout_s: float = 45.0) -> None:
    """Until the target was scraped a few times and every recording rule has several samples (rate() and
    deriv() need two or more), or the timeout passes: then the tests report whatever is missing."""
    deadline = time.monotonic() + timeout_s
    waiting_for = {f'up{{job="{JOB}"}}', *recording_rules}
    while waiting_for and time.monotonic() < deadline:
        with contextlib.suppress(OSError):  # not listening yet
            waiting_for = {name for name in waiting_for if not prom.query(f"count_over_time({name}[1m]) >= 5")}
        time.sleep(0.5)


@pytest.fixture(scope="module")
def prometheus(
    prometheus_binary: str, metrics_target: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    workdir = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(p) for p in RULE_FILES],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [metrics_target]}]}],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = _free_port()
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
        deadline = time.monotonic() + 30
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
                pytest.fail(f"prometheus not ready after 30 s: {(workdir / 'prometheus.log').read_text()}")
            time.sleep(0.2)
        _wait_for_data(prom, recording_rule_names())
        yield prom
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# -- the checks --------------------------------------------------------------------------------------------------
def test_expressions_are_found_in_every_dashboard_panel_and_rule() -> None:
    assert DASHBOARDS and RULE_FILES
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        graph_panels = [p for p in _panels(dashboard["panels"]) if p.get("type") != "row"]
        with_expr = {e.origin.split(" target ")[0] for e in EXPRESSIONS if e.kind == "dashboard"}
        for panel in graph_panels:
            assert f"{path.name} panel {panel.get('title')!r}" in with_expr, f"panel {panel.get('title')!r} has no expr"
    kinds = {e.kind for e in EXPRESSIONS}
    assert kinds == {"dashboard", "variable", "record", "alert"}, kinds


@pytest.mark.parametrize("expression", EXPRESSIONS, ids=lambda e: e.origin)
def test_expression_refers_only_to_metrics_the_daemon_exports(
    expression: Expression, exported_metric_names: set[str]
) -> None:
    names = metric_names(promql_parser.parse(expression.promql))
    assert names, f"{expression}: selects no metric by name"
    unknown = names - exported_metric_names - recording_rule_names() - SERIES_ADDED_BY_PROMETHEUS
    assert not unknown, (
        f"{expression.origin} uses {sorted(unknown)}, which the daemon does not export "
        f"(exported: {sorted(n for n in exported_metric_names if n.startswith('shelfsight_'))})"
    )


@pytest.mark.parametrize("expression", EXPRESSIONS, ids=lambda e: e.origin)
def test_every_selector_of_expression_matches_series(expression: Expression, prometheus: Prometheus) -> None:
    for selector in vector_selectors(promql_parser.parse(expression.promql)):
        promql = selector_promql(selector)
        assert prometheus.query(promql), f"{expression.origin}: selector {promql} matches no series"


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
