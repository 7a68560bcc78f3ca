#!/usr/bin/env bash
# The distributed benchmark of docs/benchmarks.md: a fresh Apache Kafka (one node, or three with
# --nodes 3), two `rpaflow worker` processes and `rpaflow bench --kafka ... --external-workers`
# (the orchestrator in the bench process), 1,000 runs x 10 steps at concurrency 100 by default.
# Warm-up rounds (3,000 runs in rounds of 1,000, not counted) come first: a new broker's JVM
# compiles its hot code over its first tens of thousands of requests (measured: the broker's CPU
# per step fell from 1.3 ms to 0.22 ms over six rounds), and a production broker is warm. Prints the measured round's figures, then the
# CPU each process used during it (user + system seconds) and per step.
#
#   scripts/bench-kafka.sh [--bin PATH] [--nodes 1|3] [--port N] [--warmup RUNS] [-- BENCH ARGS...]
#
# --bin is the rpaflow binary to measure (default target/release/rpaflow: `cargo build --release`
# first); any other bench arguments after `--` (default: --flows 1000 --steps 10 --concurrency 100).
set -euo pipefail
cd "$(dirname "$0")/.."

bin=target/release/rpaflow
nodes=1
port=19300
warmup=3000
bench_args=(--flows 1000 --steps 10 --concurrency 100)
while [[ $# -gt 0 ]]; do
    case "$1" in
        --bin) bin=$2; shift 2 ;;
        --nodes) nodes=$2; shift 2 ;;
        --port) port=$2; shift 2 ;;
        --warmup) warmup=$2; shift 2 ;;
        --) shift; bench_args=("$@"); break ;;
        *) sed -n '2,13p' "$0" >&2; exit 2 ;;
    esac
done
[[ -x $bin ]] || { echo "error: $bin is not built (cargo build --release)" >&2; exit 1; }

data=$(mktemp -d -t rpaflow-bench-kafka-XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    scripts/kafka.sh stop --data "$data/kafka" >/dev/null 2>&1 || true
    rm -rf "$data"
}
trap cleanup EXIT

eval "$(scripts/kafka.sh start --nodes "$nodes" --port "$port" --data "$data/kafka" 2>/dev/null)"
for id in w1 w2; do
    RPAFLOW_TELEMETRY__LOG_LEVEL=warn "$bin" worker --kafka "$BROKERS" --id "$id" \
        --concurrency 128 >"$data/$id.log" 2>&1 &
    pids+=($!)
done
# Until both have joined their pool.
for _ in $(seq 1 600); do
    [[ $(grep -l "serving queues" "$data"/w*.log 2>/dev/null | wc -l) -eq 2 ]] && break
    sleep 0.1
done

round=0
while [[ $warmup -gt 0 ]]; do
    round=$((round + 1))
    runs=$((warmup < 1000 ? warmup : 1000))
    warmup=$((warmup - runs))
    echo -n "warm-up round $round ($runs runs): "
    "$bin" bench --kafka "$BROKERS" --external-workers --data "$data/warmup-$round" \
        --flows "$runs" --steps 10 --concurrency 100 2>&1 | tail -n 1 || true
done

# user + system CPU seconds of a process so far.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat"; }
broker_pids=$(cat "$data"/kafka/node-*/kafka.pid)
declare -A before
for pid in $broker_pids "${pids[@]}"; do before[$pid]=$(cpu "$pid"); done

/usr/bin/time -f "bench process: %U s user, %S s system, %M KB max resident" \
    "$bin" bench --kafka "$BROKERS" --external-workers --data "$data/orchestrator" \
    "${bench_args[@]}" 2>&1

steps=$(( $(echo "${bench_args[*]}" | sed -n 's/.*--flows \([0-9]*\).*/\1/p') *
          $(echo "${bench_args[*]}" | sed -n 's/.*--steps \([0-9]*\).*/\1/p') ))
echo "CPU during the bench (seconds; per step in microseconds, $steps steps):"
for pid in $broker_pids; do
    used=$(echo "$(cpu "$pid") - ${before[$pid]}" | bc)
    echo "  kafka node (pid $pid): $used s, $(echo "$used * 1000000 / $steps" | bc) us/step"
done
for pid in "${pids[@]}"; do
    used=$(echo "$(cpu "$pid") - ${before[$pid]}" | bc)
    echo "  worker (pid $pid): $used s, $(echo "$used * 1000000 / $steps" | bc) us/step"
done
