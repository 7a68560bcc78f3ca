#!/usr/bin/env bash
# Runs a coverage-guided fuzzer (cargo-fuzz, libFuzzer) over the user code rpaflow accepts.
#
#   scripts/fuzz.sh [TARGET] [SECONDS]
#
# TARGET: `expr` (expressions and templates under the default budget), `flow` (the flow parser and
# checker), or `all` (the default: each in turn). SECONDS: how long each runs (default 60).
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). libFuzzer needs nightly-only compiler
# flags; on a stable toolchain RUSTC_BOOTSTRAP=1 enables them. Any crash, timeout (an input
# running over 10 s) or memory blow-up (over 2 GiB) fails the run and leaves the input under
# fuzz/artifacts/TARGET/. New corpus entries go to fuzz/corpus/TARGET/ (shrink with
# `cargo fuzz cmin TARGET` before committing), or, with FUZZ_SCRATCH=1 (CI), to a temporary
# copy that is thrown away. See docs/fuzzing.md.
set -euo pipefail

target="${1:-all}"
seconds="${2:-60}"
cd "$(dirname "$0")/../fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz is missing (cargo install cargo-fuzz --locked)" >&2
    exit 1
fi
export RUSTC_BOOTSTRAP="${RUSTC_BOOTSTRAP:-1}"

run() {
    local name="$1"
    local corpus="corpus/${name}"
    if [[ "${FUZZ_SCRATCH:-0}" == 1 ]]; then
        corpus="$(mktemp -d)"
        cp -r "corpus/${name}/." "$corpus"
    fi
    echo "fuzz.sh: ${name} for ${seconds} s"
    # No sanitizer: the code under test is safe Rust, and speed finds more; libFuzzer still
    # catches panics, stack overflows, slow inputs and memory growth.
    cargo fuzz run --sanitizer none --release "$name" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=4096 \
        -print_final_stats=1
    if [[ "${FUZZ_SCRATCH:-0}" == 1 ]]; then
        rm -rf "$corpus"
    fi
}

case "$target" in
    all) run expr && run flow ;;
    expr | flow) run "$target" ;;
    *)
        echo "fuzz.sh: unknown target ${target} (expr, flow or all)" >&2
        exit 2
        ;;
esac
