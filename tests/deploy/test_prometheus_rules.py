"""The Prometheus rules and scrape configurations under deploy/prometheus/, checked by Debian's promtool.

- `promtool check rules` / `check config` accept the files;
- `promtool test rules` passes the unit tests in deploy/prometheus/tests/ (an alert that fires on the wrong
  data, or not at all, fails there);
- every alert has a unit test where it fires and one where it stays quiet, and a runbook section in
  deploy/README.md that its `runbook` annotation points to;
- the unit tests depend on the rules' thresholds: a rule file with a loosened threshold fails them.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import DEPLOY, ROOT

PROMETHEUS_DIR = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
UNIT_TEST_FILES = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
SCRAPE_CONFIGS = sorted(PROMETHEUS_DIR.glob("prometheus*.yml"))
README = DEPLOY / "README.md"


def _alerts() -> dict[str, dict]:
    return {
        rule["alert"]: rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def _promtool(promtool: str, *args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_rule_files_are_accepted_by_promtool(promtool: str) -> None:
    assert RULE_FILES, "no rule files in deploy/prometheus/rules"
    result = _promtool(promtool, "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("unit_tests", UNIT_TEST_FILES, ids=lambda p: p.name)
def test_rule_unit_tests_pass(promtool: str, unit_tests: Path) -> None:
    result = _promtool(promtool, "test", "rules", str(unit_tests.relative_to(PROMETHEUS_DIR)))
    assert result.returncode == 0, result.stdout + result.stderr


def test_unit_tests_fail_when_alert_thresholds_are_loosened(promtool: str, tmp_path: Path) -> None:
    # A copy of deploy/prometheus with every alert threshold multiplied by 100: some firing case must break,
    # or the unit tests do not actually pin the rules down.
    copy = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, copy)
    for path in (copy / "rules").glob("*.yml"):
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    rule["expr"] = re.sub(
                        r"([<>]=?) (\d+(?:\.\d+)?)\b", lambda m: f"{m[1]} {float(m[2]) * 100 + 1}", rule["expr"]
                    )
        path.write_text(yaml.safe_dump(doc))
    for unit_tests in UNIT_TEST_FILES:
        result = _promtool(promtool, "test", "rules", f"tests/{unit_tests.name}", cwd=copy)
        if result.returncode != 0:
            assert "FAILED" in result.stdout + result.stderr
            return
    pytest.fail("promtool unit tests still pass with every alert threshold loosened a hundredfold")


def test_every_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(_alerts())
    assert alerts, "no alerting rules found"
    assert not alerts - firing, f"alerts without a unit test where they fire: {sorted(alerts - firing)}"
    assert not alerts - quiet, f"alerts without a unit test where they stay quiet: {sorted(alerts - quiet)}"


def _github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_links_to_a_runbook_section_of_the_deploy_readme() -> None:
    anchors = {_github_anchor(line.lstrip("#")) for line in README.read_text().splitlines() if line.startswith("#")}
    for name, rule in _alerts().items():
        runbook = rule.get("annotations", {}).get("runbook", "")
        target, _, anchor = runbook.partition("#")
        assert target == str(README.relative_to(ROOT)), (
            f"{name}: runbook annotation {runbook!r} is not in deploy/README.md"
        )
        assert anchor == name.lower(), f"{name}: runbook anchor should be #{name.lower()}, is #{anchor}"
        assert anchor in anchors, f"{name}: deploy/README.md has no heading '{name}' (anchor #{anchor})"


def test_every_alert_has_severity_summary_and_description() -> None:
    for name, rule in _alerts().items():
        assert rule.get("labels", {}).get("severity") in {"warning", "critical"}, name
        assert rule.get("annotations", {}).get("summary"), name
        assert rule.get("annotations", {}).get("description"), name
        assert rule.get("for"), f"{name}: an alert without `for` pages on one bad scrape"


def _with_repo_rule_files(config: dict) -> dict:
    """The configuration with rule_files pointing at this repository's rules (they are mounted elsewhere)."""
    return {**config, "rule_files": [str(p) for p in RULE_FILES]}


def _without_kubernetes_discovery(config: dict) -> dict:
    """Debian builds Prometheus without Kubernetes service discovery (promtool rejects kubernetes_sd_configs):
    the discovery block is swapped for a file discovery so that promtool still checks the rest of the job, its
    relabelling rules included."""
    jobs = []
    for job in config.get("scrape_configs", []):
        job = dict(job)
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["file_sd_configs"] = [{"files": ["targets/*.json"]}]
        jobs.append(job)
    return {**config, "scrape_configs": jobs}


@pytest.mark.parametrize("config_path", SCRAPE_CONFIGS, ids=lambda p: p.name)
def test_scrape_config_is_accepted_by_promtool(promtool: str, config_path: Path, tmp_path: Path) -> None:
    config = _with_repo_rule_files(yaml.safe_load(config_path.read_text()))
    checked = tmp_path / config_path.name
    checked.write_text(yaml.safe_dump(config))
    result = _promtool(promtool, "check", "config", str(checked))
    if "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        checked.write_text(yaml.safe_dump(_without_kubernetes_discovery(config)))
        result = _promtool(promtool, "check", "config", str(checked))
    assert result.returncode == 0, result.stdout + result.stderr
    # the rules are checked as part of the configuration: a glob that matches nothing would also pass
    assert f"SUCCESS: {len(RULE_FILES)} rule files found" in result.stdout + result.stderr, result.stdout


@pytest.mark.parametrize("config_path", SCRAPE_CONFIGS, ids=lambda p: p.name)
def test_scrape_config_scrapes_the_daemon_as_job_shelfsight(config_path: Path) -> None:
    # The alert rules select up{job="shelfsight"}: a renamed job silently disables ShelfSightTargetDown.
    config = yaml.safe_load(config_path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "shelfsight" in jobs
    assert jobs["shelfsight"].get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


@pytest.mark.parametrize("config_path", SCRAPE_CONFIGS, ids=lambda p: p.name)
def test_scrape_config_scrapes_review_worker_and_learner_under_the_jobs_target_down_watches(config_path: Path) -> None:
    # ShelfSightTargetDown selects the jobs by name: a review worker or learner scraped under another job name
    # could be down without anyone paged.
    jobs = {job["job_name"]: job for job in yaml.safe_load(config_path.read_text())["scrape_configs"]}
    watched = re.search(r'up\{job=~"([^"]*)"\}', _alerts()["ShelfSightTargetDown"]["expr"])
    assert watched, 'ShelfSightTargetDown should select up{job=~"..."}'
    for job in ("shelfsight", "shelfsight-review", "shelfsight-learner"):
        assert job in jobs, f"{config_path.name} has no job {job}"
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"
        assert re.fullmatch(watched.group(1), job), f"ShelfSightTargetDown does not watch job {job}"
