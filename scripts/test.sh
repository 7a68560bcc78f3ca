#!/usr/bin/env bash
# Runs every test of the workspace: unit and property tests, and the end-to-end tests that start
# real rpaflow processes, real HTTP servers and a real Python gRPC client.
#
# It sets up what the tests need on its own (Python packages go into a cache directory,
# ${RPAFLOW_CACHE:-$HOME/.cache/rpaflow}); extra arguments go to `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "error: cargo is not installed" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 is needed by the end-to-end tests" >&2; exit 1; }

# PostgreSQL for the sql executor's tests (installed, configured and started when needed),
# Debian's Chromium and chromedriver for the browser executor's (installed with apt when missing),
# and Apache Kafka's jars from Maven Central for the distributed tests (each test starts its own
# broker or three-node cluster with scripts/kafka.sh).
scripts/setup-postgres.sh >/dev/null
scripts/setup-browser.sh >/dev/null
# Debian's Prometheus (promtool and the server) for the metrics tests (tests/tests/observability.rs).
scripts/setup-prometheus.sh >/dev/null
scripts/kafka.sh install >/dev/null

# The end-to-end tests run the rpaflow binary as a separate process. `cargo test --workspace`
# builds it (rpaflow-cli has integration tests) with the same features as everything else, so
# every dependency is compiled once; the tests are pointed at that binary.
cargo test --locked --workspace --no-run
RPAFLOW_BIN="${RPAFLOW_BIN:-${CARGO_TARGET_DIR:-$PWD/target}/debug/rpaflow}" \
    cargo test --locked --workspace --no-fail-fast "$@"

# A short run of each fuzzer over a throwaway copy of its corpus (docs/fuzzing.md). It needs
# cargo-fuzz and a toolchain that accepts libFuzzer's flags (RUSTC_BOOTSTRAP=1 on stable): when
# either is missing, this fails; it never skips.
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
FUZZ_SCRATCH=1 scripts/fuzz.sh all "${RPAFLOW_FUZZ_SECONDS:-30}"
