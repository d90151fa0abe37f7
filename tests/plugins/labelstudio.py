"""Pytest fixtures for a real Label Studio 1.23.2 server (deploy/dev/labelstudio_server.py; nothing is mocked).

* `label_studio` (session): one server on 127.0.0.1 started from a copy of the template data directory (the
  first run on a machine installs Label Studio into its own venv under ~/.cache/shelfsight, about 1.5 minutes,
  and initialises the template, about 30 s; later sessions start in a few seconds). `url`, `token`,
  `document_root` (the CC0 demo photos: tests show them to annotators through a local files storage), and
  `stop()` / `start()` for outage tests: same port, same data. Tests that stop it start it again; the fixture
  also restarts it if a test left it stopped.

Tests using it get the `label_studio` marker (`pytest -m "not label_studio"` skips them). Where Label Studio cannot
be installed or started, the tests skip with the reason, except in CI (the CI environment variable is set), where
that is a failure.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from labelstudio_server import (  # deploy/dev, on sys.path via tests/conftest.py
    LabelStudioServer,
    LabelStudioStartError,
    LabelStudioUnavailable,
)

CC0_DIR = Path(__file__).resolve().parents[2] / "deploy" / "demo" / "clothing-cc0"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "label_studio: needs the real Label Studio server (tests/plugins)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "label_studio" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.label_studio)


@pytest.fixture(scope="session")
def label_studio_server() -> Iterator[LabelStudioServer]:
    # a directory of its own (not pytest's tmp tree): the server may outlive a crashed session's cleanup
    workdir = Path(tempfile.mkdtemp(prefix="shelfsight-ls-"))
    server = LabelStudioServer(workdir, document_root=CC0_DIR, die_with_parent=True)
    try:
        server.start()
    except (LabelStudioUnavailable, LabelStudioStartError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        message = f"Label Studio is unavailable here: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def label_studio(label_studio_server: LabelStudioServer) -> LabelStudioServer:
    """The session's server, running (restarted if an earlier test stopped it)."""
    label_studio_server.start()
    return label_studio_server
