#!/usr/bin/env bash
# Installs what the `browser` executor drives: Debian's Chromium and ChromeDriver.
#
# Idempotent: does nothing when both binaries are already there. Prints the environment
# the worker and its tests read, so `eval "$(scripts/setup-browser.sh)"` sets it.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
CHROMEDRIVER=/usr/bin/chromedriver

if [[ ! -x "$CHROMIUM" || ! -x "$CHROMEDRIVER" ]]; then
    SUDO=""
    if [[ "$(id -u)" -ne 0 ]]; then
        SUDO="sudo"
    fi
    echo "installing chromium and chromium-driver with apt" >&2
    $SUDO apt-get update -q >&2
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >&2
fi

"$CHROMIUM" --version >&2
"$CHROMEDRIVER" --version >&2

echo "export RPAFLOW_CHROMIUM=$CHROMIUM"
echo "export RPAFLOW_CHROMEDRIVER=$CHROMEDRIVER"
