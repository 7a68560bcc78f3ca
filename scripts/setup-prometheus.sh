#!/usr/bin/env bash
# Makes sure Debian's Prometheus is installed (the `prometheus` package: the server and
# `promtool`), for the observability tests, and prints where promtool is:
#   scripts/setup-prometheus.sh
#
# Installs with apt-get only when `prometheus` or `promtool` is missing; starts nothing (the
# tests start their own server, on a free port, with their own configuration). Idempotent.
set -euo pipefail

log() { echo "setup-prometheus: $*" >&2; }
die() {
    echo "setup-prometheus: error: $*" >&2
    exit 1
}
as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}

if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
    command -v apt-get >/dev/null || die "Prometheus is not installed and there is no apt-get to install it"
    log "installing Prometheus (Debian's prometheus package)"
    {
        as_root apt-get update -qq
        # Only the programs: the package's service is not started by the tests.
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
    } >&2
fi
command -v promtool >/dev/null || die "promtool is missing after installing prometheus"
command -v promtool
