#!/usr/bin/env bash
# Rebuilds the web console (web/) into web/dist, which is committed and embedded in the
# orchestrator at compile time (orchestrator/build.rs): run it after changing web/ or the protos,
# then commit web/dist. `cargo build` and `cargo test` never need it, nor npm.
#   scripts/build-web.sh          # npm ci, generate the gRPC-Web client from proto/, type-check, build
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../web"
npm ci --no-audit --no-fund
npm run build
echo "web/dist: $(du -sh dist | cut -f1) ($(find dist -type f | wc -l) files)" >&2
