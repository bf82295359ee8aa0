#!/usr/bin/env bash
# Install the headless browser used by tests/test_console_browser.py (Debian/Ubuntu).
# Idempotent: does nothing when chromium and chromedriver are already on PATH.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }

if have chromium && have chromedriver; then
    echo "browser.sh: chromium and chromedriver already installed"
else
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
fi

# the Python driver (also in pyproject's dev extra)
python3 -c "import selenium" 2>/dev/null || python3 -m pip install -q "selenium>=4.20"

chromium --version
chromedriver --version
