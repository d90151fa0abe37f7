"""The Compose files under deploy/compose/: they validate against the Compose Specification JSON schema (vendored in
tests/deploy/schemas/; shown to reject a misspelled key, so the check is not vacuous), run the whole stack, mount
files of this repository (model and configuration read-only) and provision Prometheus and Grafana from it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from .conftest import ROOT
from .manifests import (
    COMPOSE,
    COMPOSE_FILES,
    DEPLOY,
    HTTP_PORT,
    REVIEW_PORT,
    bind_mounts,
    compose_validator,
    load_yaml,
)


# -- Compose -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_validates_against_the_compose_spec_schema(compose_file: Path) -> None:
    errors = sorted(compose_validator().iter_errors(load_yaml(compose_file)), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_schema_rejects_a_misspelled_service_key() -> None:
    compose = load_yaml(COMPOSE)
    compose["services"]["daemon"]["enviroment"] = compose["services"]["daemon"].pop("environment")
    assert not compose_validator().is_valid(compose)


def test_compose_stack_runs_kafka_kraft_postgres_label_studio_daemon_learner_prometheus_grafana() -> None:
    services = load_yaml(COMPOSE)["services"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft, no ZooKeeper
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["label-studio"]["image"].startswith("heartexlabs/label-studio:")
    assert services["daemon"]["command"] == ["run"]
    assert services["learner"]["command"] == ["learn"]
    assert services["review-worker"]["command"] == ["review", "run"]
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    for name, service in services.items():
        image = service.get("image", "")
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image tag ({image!r})"
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"


def test_compose_creates_the_event_and_dead_letter_topics() -> None:
    script = "\n".join(load_yaml(COMPOSE)["services"]["kafka-init"]["command"])
    assert "products.new products.new.dlq" in script and "--create --if-not-exists" in script


def test_compose_bind_mounts_point_at_files_of_this_repository() -> None:
    for name, service in load_yaml(COMPOSE)["services"].items():
        for host, _, _ in bind_mounts(service):
            if host == (ROOT / "models").resolve():
                continue  # the operator's model directory, git-ignored
            assert host.exists(), f"{name} mounts {host}, which does not exist"


def test_compose_daemon_reads_the_model_and_config_from_read_only_mounts() -> None:
    services = load_yaml(COMPOSE)["services"]
    daemon_mounts = {target: read_only for _, target, read_only in bind_mounts(services["daemon"])}
    assert daemon_mounts == {"/models": True, "/etc/shelfsight/shelfsight.toml": True}
    environment = services["daemon"]["environment"]
    assert environment["SHELFSIGHT_REGISTRY_DIR"].startswith("/models/")
    assert environment["SHELFSIGHT_CONFIG"] == "/etc/shelfsight/shelfsight.toml"


def test_compose_prometheus_and_grafana_use_this_repositorys_monitoring_files() -> None:
    services = load_yaml(COMPOSE)["services"]
    prometheus = {target: host for host, target, _ in bind_mounts(services["prometheus"])}
    assert prometheus["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus" / "prometheus.yml"
    assert prometheus["/etc/prometheus/rules"] == DEPLOY / "prometheus" / "rules"
    grafana = {target: host for host, target, _ in bind_mounts(services["grafana"])}
    provisioning = DEPLOY / "grafana" / "provisioning"
    assert grafana["/etc/grafana/provisioning/datasources"] == provisioning / "datasources"
    assert grafana["/etc/grafana/provisioning/dashboards"] == provisioning / "dashboards"
    (provider,) = load_yaml(provisioning / "dashboards" / "shelfsight.yml")["providers"]
    assert grafana[provider["options"]["path"]] == DEPLOY / "grafana" / "dashboards"
    (datasource,) = load_yaml(provisioning / "datasources" / "prometheus.yml")["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    scrape = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]
    (daemon_job,) = [job for job in scrape if job["job_name"] == "shelfsight"]
    assert daemon_job["dns_sd_configs"][0]["names"] == ["daemon"]
    assert daemon_job["dns_sd_configs"][0]["port"] == HTTP_PORT


def test_compose_review_worker_and_learner_are_healthchecked_and_scraped_on_their_ports() -> None:
    services = load_yaml(COMPOSE)["services"]
    review, learner = services["review-worker"], services["learner"]
    assert int(review["environment"]["SHELFSIGHT_REVIEW__WEBHOOK_PORT"]) == REVIEW_PORT
    assert review["expose"] == [str(REVIEW_PORT)]
    # the image's HEALTHCHECK probes 9108, where the review worker serves nothing: compose probes its own port
    assert f"http://127.0.0.1:{REVIEW_PORT}/healthz" in " ".join(review["healthcheck"]["test"])
    assert not learner.get("healthcheck", {}).get("disable"), "the learner serves /healthz on the image's port"
    assert learner["expose"] == [str(HTTP_PORT)]
    scrape = {job["job_name"]: job for job in load_yaml(DEPLOY / "prometheus" / "prometheus.yml")["scrape_configs"]}
    assert scrape["shelfsight-review"]["static_configs"] == [{"targets": [f"review-worker:{REVIEW_PORT}"]}]
    assert scrape["shelfsight-learner"]["static_configs"] == [{"targets": [f"learner:{HTTP_PORT}"]}]


def test_grafana_dashboard_is_provisionable() -> None:
    for path in sorted((DEPLOY / "grafana" / "dashboards").glob("*.json")):
        dashboard = json.loads(path.read_text())
        assert dashboard["uid"] and dashboard["title"]
        panels = [p for p in dashboard["panels"] if p["type"] != "row"]
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in panels:
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            grid = panel["gridPos"]
            assert grid["x"] + grid["w"] <= 24, f"{panel['title']} is wider than the dashboard"
            assert panel["targets"], f"{panel['title']} has no query"
