#!/usr/bin/env bash
# Sets up a development environment from a fresh clone: a Python 3.11 virtual environment in .venv with
# ShelfSight and its development extras installed (editable). Idempotent and quick when nothing changed.
# Services (Kafka, PostgreSQL, Prometheus, Label Studio) are installed and started by the test fixtures
# and the scripts beside this one, not here.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1 &&
            "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
            PYTHON="$candidate"
            break
        fi
    done
fi
if [ -z "$PYTHON" ]; then
    echo "ShelfSight needs Python 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi

# reinstall only when the dependency list changed
stamp=".venv/.shelfsight-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! .venv/bin/python -c 'import daemon.cli' 2>/dev/null; then
    echo "installing ShelfSight and its dependencies into .venv (torch is large: a few minutes the first time)"
    .venv/bin/python -m pip install --quiet --upgrade pip
    # setuptools warns on every editable install that folders named like the packages in the working directory
    # "may take precedence during imports": here they are the packages themselves (daemon/, learner/, connectors/),
    # which is what an editable install points at, so the banner is noise and is filtered out
    PYTHONWARNINGS="ignore:Editable installation" \
        .venv/bin/python -m pip install --quiet --progress-bar off -e ".[dev]"
    echo "$want" > "$stamp"
fi
echo "ready: .venv/bin/shelfsight --help"
