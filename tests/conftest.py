"""Shared pytest configuration. Fixtures for each real service live in `tests/plugins/<service>.py`;
they start the real thing through the scripts in `deploy/dev/` (nothing is mocked)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT / "deploy" / "dev"))  # service launchers: kafka_server, postgres_server, ...

pytest_plugins = [
    "tests.plugins.models",
    "tests.plugins.http",
    "tests.plugins.postgres",
    "tests.plugins.kafka",
    "tests.plugins.labelstudio",
    "tests.plugins.browser",
]
