"""The configuration we ship is the configuration the daemon reads: every SHELFSIGHT_ variable and TOML file under
deploy/ (Compose, Kubernetes, Dockerfiles) is accepted by the daemon's own settings (daemon/config.py), and on both
platforms the services agree on the model registry, Label Studio and its credentials."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from .conftest import ROOT
from .manifests import (
    COMPOSE,
    COMPOSE_DIR,
    COMPOSE_FILES,
    DOCKERFILES,
    HTTP_PORT,
    NON_SETTING_VARIABLES,
    REVIEW_PORT,
    SERVICES,
    bind_mounts,
    daemon_setting_variables,
    interpolate_defaults,
    k8s_documents,
    k8s_object,
    load_yaml,
    parse_dockerfile,
    pod_spec,
    unknown_setting_keys,
)


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


def _k8s_environment(deployment: str) -> dict[str, str]:
    """What the container of `deployment` gets: its envFrom ConfigMaps and Secrets in order, then its env."""
    (container,) = pod_spec(deployment)["containers"]
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
            for host, target, read_only in bind_mounts(load_yaml(COMPOSE)["services"][service])
            if host == (ROOT / "models").resolve()
        ]
        return mount
    (container,) = pod_spec(SERVICES[service])["containers"]
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
