#!/usr/bin/env bash
# Installs Debian's Chromium (package `chromium`, /usr/bin/chromium) for the browser test of the HTML report
# (tests/daemon/test_report_browser.py drives it headless through Playwright's Python client, which is told to use
# this binary: Playwright's own browser download cannot work on a machine without internet access).
# Idempotent: does nothing when chromium is already on PATH. Needs root (or sudo) and apt.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null

echo "installed: $(chromium --version 2>/dev/null | head -n1)"
