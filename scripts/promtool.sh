#!/usr/bin/env bash
# Makes `promtool` available for the alert-rule unit tests (tests/observe/test_dashboards.py):
# Debian's prometheus package ships it. Idempotent, no stdin; the Prometheus server the
# package also installs is not started (no systemd in CI containers; `policy-rc.d` keeps
# it stopped where there is one).
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then
  promtool --version 2>&1 | head -n 1
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "[promtool] needs root to install Debian's prometheus package" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
trap 'rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends prometheus >/dev/null
promtool --version 2>&1 | head -n 1
