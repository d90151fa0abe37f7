"""The PromQL expressions the deployment ships, and what is inside them, for test_promql_against_daemon.py.

Expressions are read from deploy/grafana/dashboards/*.json (every target `expr` and every `label_values(...)`
variable, Grafana variables replaced by test values) and deploy/prometheus/rules/*.yml (every `expr`). Their syntax
trees (promql-parser) give the vector selectors, the metric names, and the signals an alert condition compares.

Pure: reads files, starts nothing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .conftest import DEPLOY, in_ci

try:
    import promql_parser
except ImportError:
    if in_ci():
        raise
    pytest.skip("needs promql-parser: pip install promql-parser", allow_module_level=True)

DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
# the job names of deploy/prometheus/prometheus*.yml, which the rules and the dashboard's defaults expect
JOB = "shelfsight"
REVIEW_JOB = "shelfsight-review"
LEARNER_JOB = "shelfsight-learner"
SERIES_ADDED_BY_PROMETHEUS = {"up"}
# Values for Grafana's variables: the built-in interval and this dashboard's own template variables.
GRAFANA_VARIABLES = {
    "__rate_interval": "15s",
    "__interval": "5s",
    "__range": "1m",
    "job": JOB,
    "instance": ".*",
    "review_job": REVIEW_JOB,
    "learner_job": LEARNER_JOB,
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


def all_panels(panels: list[dict]) -> Iterator[dict]:
    """Every panel, those inside rows included."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # rows hold their panels when collapsed


def dashboard_expressions(path: Path) -> list[Expression]:
    dashboard = json.loads(path.read_text())
    found = []
    for panel in all_panels(dashboard.get("panels", [])):
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
def children(node: object) -> list[object]:
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
    for child in children(node):
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


COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}
SET_OPERATORS = {"and", "unless"}


def alert_signals(node: object) -> list[object]:
    """The parts of an alert condition that must have data for the condition to mean anything."""
    while isinstance(node, promql_parser.ParenExpr):
        node = node.expr
    if isinstance(node, promql_parser.BinaryExpr):
        op = str(node.op).strip().lower()
        if op in SET_OPERATORS:
            return alert_signals(node.lhs) + alert_signals(node.rhs)
        returns_bool = node.modifier is not None and node.modifier.return_bool
        if op in COMPARISONS and not returns_bool:
            if isinstance(node.rhs, promql_parser.NumberLiteral):
                return alert_signals(node.lhs)
            if isinstance(node.lhs, promql_parser.NumberLiteral):
                return alert_signals(node.rhs)
    if isinstance(node, promql_parser.Call) and node.func.name in ("absent", "absent_over_time"):
        return list(node.args)
    return [node]
