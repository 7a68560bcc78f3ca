#!/usr/bin/env bash
# The Kafka-protocol broker of the tests and of `rpaflow dev --kafka`: tansu, a single-process
# broker written in Rust, keeping its topics and consumer-group offsets in one SQLite file.
#
#   scripts/kafka.sh install                         installs tansu when missing, prints its path
#   scripts/kafka.sh start [--port N] [--data DIR]   starts it on 127.0.0.1:N (default 9092) in the
#                                                    background, prints BROKERS=127.0.0.1:N
#   scripts/kafka.sh stop [--data DIR]               stops the broker started on DIR
#   scripts/kafka.sh status [--data DIR]             says whether it is installed and running
#                                                    (exit status 3 when it is not running)
#
# DIR (default .rpaflow/kafka, relative to the current directory) holds tansu.db, tansu.log,
# tansu.pid and tansu.port. The build (over ten minutes on two cores) is cached in
# ${RPAFLOW_CACHE:-$HOME/.cache/rpaflow}/tansu, with its own cargo target directory beside it so
# that it never waits on the workspace's. Idempotent: an installed binary and a running broker are
# left alone. Never the `memory://` storage engine: it misreports high watermarks.
set -euo pipefail

TANSU_VERSION=0.6.0
CACHE=${RPAFLOW_CACHE:-$HOME/.cache/rpaflow}
TANSU=$CACHE/tansu/bin/tansu
START_TIMEOUT_S=30

usage() {
    sed -n '4,10p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

install() {
    if [[ -x "$TANSU" ]]; then
        return
    fi
    command -v cargo >/dev/null || { echo "error: cargo is needed to install tansu" >&2; exit 1; }
    mkdir -p "$CACHE"
    # Two callers at once (test binaries, a developer's shell) build it once.
    exec 9>"$CACHE/tansu.lock"
    flock 9
    if [[ ! -x "$TANSU" ]]; then
        echo "installing tansu $TANSU_VERSION into $CACHE/tansu (takes a while)" >&2
        CARGO_TARGET_DIR="$CACHE/tansu-target" \
            cargo install tansu --version "$TANSU_VERSION" --locked --features libsql \
            --root "$CACHE/tansu" >&2
    fi
    exec 9>&-
}

# Whether something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The pid in $1/tansu.pid when that process still runs, else nothing.
running_pid() {
    local pid
    [[ -f "$1/tansu.pid" ]] || return 0
    pid=$(<"$1/tansu.pid")
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

start() {
    local port=$1 data=$2 pid
    install
    mkdir -p "$data"
    data=$(cd "$data" && pwd)
    pid=$(running_pid "$data")
    if [[ -n "$pid" ]]; then
        port=$(<"$data/tansu.port")
        echo "tansu already runs on 127.0.0.1:$port (pid $pid, $data)" >&2
        echo "BROKERS=127.0.0.1:$port"
        return
    fi
    if port_open "$port"; then
        echo "error: something else listens on 127.0.0.1:$port" >&2
        exit 1
    fi
    # tansu resolves the SQLite path against its working directory (even `sqlite:///abs/path`), so it
    # runs from the data directory. Variables it would read instead of a default are cleared.
    (
        cd "$data"
        exec env -u SCHEMA_REGISTRY -u OTEL_EXPORTER_OTLP_ENDPOINT setsid "$TANSU" broker \
            --cluster-id rpaflow \
            --listener-url "tcp://127.0.0.1:$port" \
            --advertised-listener-url "tcp://127.0.0.1:$port" \
            --storage-engine "sqlite://./tansu.db" \
            </dev/null >>"$data/tansu.log" 2>&1
    ) &
    pid=$!
    echo "$pid" >"$data/tansu.pid"
    echo "$port" >"$data/tansu.port"
    for _ in $(seq 1 $((START_TIMEOUT_S * 10))); do
        port_open "$port" && break
        if ! kill -0 "$pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    if ! port_open "$port" || ! kill -0 "$pid" 2>/dev/null; then
        echo "error: tansu does not answer on 127.0.0.1:$port; $data/tansu.log ends with:" >&2
        tail -n 20 "$data/tansu.log" >&2 || true
        kill -9 "$pid" 2>/dev/null || true
        rm -f "$data/tansu.pid"
        exit 1
    fi
    echo "tansu runs on 127.0.0.1:$port (pid $pid, $data)" >&2
    echo "BROKERS=127.0.0.1:$port"
}

stop() {
    local data=$1 pid
    [[ -d "$data" ]] || { echo "tansu is not running ($data does not exist)" >&2; return; }
    data=$(cd "$data" && pwd)
    pid=$(running_pid "$data")
    if [[ -z "$pid" ]]; then
        echo "tansu is not running ($data)" >&2
        rm -f "$data/tansu.pid"
        return
    fi
    kill "$pid"
    for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "tansu (pid $pid) ignored SIGTERM for 10 s; killing it" >&2
        kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$data/tansu.pid"
    echo "tansu stopped (pid $pid, $data)" >&2
}

status() {
    local data=$1 pid
    if [[ -x "$TANSU" ]]; then
        echo "installed: $TANSU"
    else
        echo "installed: no (scripts/kafka.sh install)"
    fi
    pid=""
    if [[ -d "$data" ]]; then
        data=$(cd "$data" && pwd)
        pid=$(running_pid "$data")
    fi
    if [[ -z "$pid" ]]; then
        echo "running: no ($data)"
        exit 3
    fi
    local port
    port=$(<"$data/tansu.port")
    echo "running: pid $pid on 127.0.0.1:$port ($data)"
    echo "BROKERS=127.0.0.1:$port"
}

[[ $# -ge 1 ]] || usage
command=$1
shift
port=9092
data=.rpaflow/kafka
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) [[ $# -ge 2 ]] || usage; port=$2; shift 2 ;;
        --data) [[ $# -ge 2 ]] || usage; data=$2; shift 2 ;;
        *) usage ;;
    esac
done
[[ "$port" =~ ^[0-9]+$ ]] || { echo "error: --port wants a number, not \`$port\`" >&2; exit 2; }

case "$command" in
    install) install; echo "$TANSU" ;;
    start) start "$port" "$data" ;;
    stop) stop "$data" ;;
    status) status "$data" ;;
    *) usage ;;
esac
