"""The deployment files under deploy/ read as data, for the deployment tests (test_compose.py, test_deploy_settings.py,
test_kubernetes.py, test_dockerfiles.py): paths, YAML documents, the Compose schema, the daemon's setting names, a
parsed Dockerfile and the .dockerignore rule.

Readers only: nothing started, nothing written.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from .conftest import DEPLOY, ROOT

COMPOSE_DIR = DEPLOY / "compose"
COMPOSE = COMPOSE_DIR / "compose.yaml"
COMPOSE_FILES = sorted(COMPOSE_DIR.glob("compose*.yaml"))
COMPOSE_SCHEMA = Path(__file__).parent / "schemas" / "compose-spec.json"
K8S_DIR = DEPLOY / "k8s"
K8S_FILES = sorted(p for p in K8S_DIR.rglob("*.yaml") if p.name != "kustomization.yaml")
DOCKERFILES = sorted((DEPLOY / "docker").glob("Dockerfile*"))
DOCKERIGNORE = ROOT / ".dockerignore"
HTTP_PORT = 9108
REVIEW_PORT = 9111  # the review worker's webhook port, which also serves /metrics and /healthz
NON_SETTING_VARIABLES = {"SHELFSIGHT_CONFIG", "SHELFSIGHT_HOME"}  # read by daemon/config.py outside Settings
SERVICES = {  # compose service -> Kubernetes Deployment
    "daemon": "shelfsight-daemon",
    "review-worker": "shelfsight-review-worker",
    "learner": "shelfsight-learner",
}


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


def bind_mounts(service: dict) -> list[tuple[Path, str, bool]]:
    mounts = []
    for volume in service.get("volumes", []):
        parts = interpolate_defaults(volume).split(":")
        if parts[0].startswith((".", "/")):
            mounts.append(((COMPOSE_DIR / parts[0]).resolve(), parts[1], parts[2:] == ["ro"]))
    return mounts


def pod_spec(name: str) -> dict:
    return k8s_object("Deployment", name)["spec"]["template"]["spec"]
