#!/usr/bin/env bash
# Installs Prometheus and promtool from Debian's `prometheus` package, for the tests in tests/deploy/
# (`promtool test rules`, and a real Prometheus evaluating the dashboard and rule expressions).
# Idempotent: does nothing when both binaries are already on PATH. Needs root (or sudo) and apt.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
    echo "prometheus and promtool already installed: $(command -v prometheus), $(command -v promtool)"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends: skips the node exporter and other extras; policy-rc.d is not touched, so on a
# machine with a running init the packaged service may start: stop it, the tests run their own server.
$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null

if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

echo "installed: $(prometheus --version 2>&1 | head -n1)"
echo "installed: $(promtool --version 2>&1 | head -n1)"
