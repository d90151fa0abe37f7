"""The Kubernetes manifests under deploy/k8s/: they validate against the Kubernetes OpenAPI-derived JSON schemas in
their strict variant (unknown fields rejected), as shipped by the `kubernetes-validate` package, for the oldest and
newest Kubernetes versions it knows (shown to reject a broken Deployment, so the check is not vacuous); and the
objects fit together: kustomizations, GPUs and probes, replicas, references, security contexts, scrape jobs."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, in_ci
from .manifests import (
    COMPOSE,
    DEPLOY,
    HTTP_PORT,
    K8S_DIR,
    K8S_FILES,
    REVIEW_PORT,
    SERVICES,
    k8s_documents,
    k8s_object,
    load_yaml,
    pod_spec,
)

try:
    import kubernetes_validate
except ImportError:
    if in_ci():
        raise
    pytest.skip("needs kubernetes-validate: pip install kubernetes-validate", allow_module_level=True)

K8S_VERSIONS = (kubernetes_validate.utils.all_versions()[0], kubernetes_validate.utils.latest_version())


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


def test_daemon_pods_take_one_gpu_each_and_probe_healthz_and_readyz() -> None:
    (container,) = pod_spec("shelfsight-daemon")["containers"]
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
    spec = pod_spec(deployment)
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
    spec = pod_spec(deployment)
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
        m for m in pod_spec("shelfsight-daemon")["containers"][0]["volumeMounts"] if m["name"] == "models"
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
    (container,) = pod_spec(deployment)["containers"]
    assert [p["name"] for p in container["ports"]] == ["http"]  # the port the job keeps
