"""The Grafana dashboards under deploy/grafana/dashboards/ against the alert rules they illustrate.

- the threshold line a panel draws is the threshold of the alert it stands beside (a rule retuned without its
  panel would show a line where nothing fires);
- every alert a panel's description names exists in deploy/prometheus/rules/;
- no two panels overlap (Grafana pushes an overlapping panel down, out of its row).

Whether each panel's PromQL selects what the services export is test_promql_against_daemon.py's job; that a
dashboard is provisionable, test_compose.py's. Pure: reads files, starts nothing.
"""

from __future__ import annotations

import json
import re
from itertools import combinations
from pathlib import Path

import pytest
import yaml

from .conftest import DEPLOY

DASHBOARDS = sorted((DEPLOY / "grafana" / "dashboards").glob("*.json"))
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
# panel title -> the alert whose threshold its dashed line draws
THRESHOLD_PANELS = {
    "Photo drift (PSI) per model version": "ShelfSightPhotoDrift",
    "Unfamiliar photos share": "ShelfSightUnfamiliarPhotosHigh",
    "Title/photo conflict share per group": "ShelfSightTitlePhotoConflictsHigh",
}


def _panels(dashboard: dict) -> list[dict]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # a collapsed row holds its panels
    return found


def _alert_exprs() -> dict[str, str]:
    return {
        rule["alert"]: rule["expr"]
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def _threshold_of(expr: str) -> float:
    """The number the alert's first condition compares its signal with (`x > 0.25 and ...` -> 0.25)."""
    m = re.search(r"[<>]=? ?(\d+(?:\.\d+)?)", expr)
    assert m, f"no threshold in {expr!r}"
    return float(m.group(1))


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panel_threshold_lines_are_the_thresholds_of_their_alerts(path: Path) -> None:
    panels = {p.get("title"): p for p in _panels(json.loads(path.read_text()))}
    alerts = _alert_exprs()
    for title, alert in THRESHOLD_PANELS.items():
        assert title in panels, f"{path.name} has no panel {title!r}"
        defaults = panels[title]["fieldConfig"]["defaults"]
        assert defaults["custom"]["thresholdsStyle"]["mode"] != "off", f"{title!r} draws no threshold line"
        lines = [step["value"] for step in defaults["thresholds"]["steps"] if step["value"] is not None]
        assert lines == [_threshold_of(alerts[alert])], f"{title!r} draws {lines}, {alert} fires above its own"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_alerts_named_in_panel_descriptions_exist(path: Path) -> None:
    alerts = set(_alert_exprs())
    for panel in _panels(json.loads(path.read_text())):
        named = set(re.findall(r"\bShelfSight[A-Z]\w+", panel.get("description", "")))
        assert named <= alerts, f"{path.name} panel {panel.get('title')!r} names unknown alerts {named - alerts}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_panels_do_not_overlap(path: Path) -> None:
    boxes = [(p.get("title"), p["gridPos"]) for p in json.loads(path.read_text())["panels"]]
    for (a, ga), (b, gb) in combinations(boxes, 2):
        apart = (
            ga["x"] + ga["w"] <= gb["x"]
            or gb["x"] + gb["w"] <= ga["x"]
            or ga["y"] + ga["h"] <= gb["y"]
            or gb["y"] + gb["h"] <= ga["y"]
        )
        assert apart, f"{path.name}: panels {a!r} {ga} and {b!r} {gb} overlap"
