"""Fixtures for the deployment tests: the Prometheus binaries (Debian's `prometheus` package, installed by
deploy/dev/install_prometheus.sh) and paths to the files under deploy/.

Outside CI a missing binary skips the tests that need it, with the command that installs it. In CI (env CI set)
the install script is run once, and a binary still missing fails the test: CI must never pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
INSTALL_PROMETHEUS = DEPLOY / "dev" / "install_prometheus.sh"


def in_ci() -> bool:
    return bool(os.environ.get("CI"))


def require_tool(name: str, install_hint: str) -> str:
    """Path of executable `name`; skips (outside CI) or fails (in CI) when it is missing."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))  # venv not activated
    if path:
        return path
    if in_ci():
        pytest.fail(f"{name} is not installed and CI is set: {install_hint}")
    pytest.skip(f"{name} is not installed; {install_hint}")


def _prometheus_tool(name: str) -> str:
    if shutil.which(name) is None and in_ci() and os.geteuid() == 0:
        subprocess.run(["bash", str(INSTALL_PROMETHEUS)], check=False, timeout=600)
    return require_tool(name, f"install it with `bash {INSTALL_PROMETHEUS.relative_to(ROOT)}`")


@pytest.fixture(scope="session")
def promtool() -> str:
    return _prometheus_tool("promtool")


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    return _prometheus_tool("prometheus")
