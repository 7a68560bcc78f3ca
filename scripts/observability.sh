#!/usr/bin/env bash
# A tracing backend and Prometheus on this machine, for a person looking at rpaflow:
#
#   scripts/observability.sh start        # Jaeger v2 and Prometheus, in the background
#   eval "$(scripts/observability.sh env)"
#   cargo run -- dev examples/customer-service.yaml --keep-running
#   scripts/observability.sh trace RUN_ID # the run's trace, from Jaeger's query API
#   scripts/observability.sh stop
#
# - Jaeger v2 (the OpenTelemetry-collector-based Jaeger) is built from its Go module with the
#   Go toolchain (scripts/observability/go.mod pins it; the first build takes minutes) and runs
#   its all-in-one configuration: OTLP/gRPC on 127.0.0.1:4317, OTLP/HTTP on :4318, traces kept
#   in memory, the query API and UI on http://127.0.0.1:16686.
# - Prometheus is Debian's (scripts/setup-prometheus.sh installs it), on http://127.0.0.1:9090,
#   scraping the admin listeners in RPAFLOW_SCRAPE (default 127.0.0.1:9464, where `env` tells
#   `rpaflow dev` to serve its admin listener; add a worker's and an inference node's, comma
#   separated, for the distributed services).
#
# Jaeger's Go module carries no build of its web UI (that is a separate JavaScript project, in no
# registry this project can reach), so http://127.0.0.1:16686 shows Jaeger's placeholder page
# unless JAEGER_UI_ASSETS names a directory holding a jaeger-ui build; the query API
# (http://127.0.0.1:16686/api/traces/TRACE_ID) and `trace RUN_ID` below work either way.
#
# Everything lives under target/observability (logs, pids, data), so `stop` and a rebuild are
# all it takes to start over. Ports can be moved with JAEGER_UI_PORT, OTLP_GRPC_PORT,
# OTLP_HTTP_PORT and PROMETHEUS_PORT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="${RPAFLOW_OBSERVABILITY_DIR:-$ROOT/target/observability}"
JAEGER="$DIR/bin/jaeger"
JAEGER_UI_PORT="${JAEGER_UI_PORT:-16686}"
OTLP_GRPC_PORT="${OTLP_GRPC_PORT:-4317}"
OTLP_HTTP_PORT="${OTLP_HTTP_PORT:-4318}"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
RPAFLOW_SCRAPE="${RPAFLOW_SCRAPE:-127.0.0.1:9464}"

log() { echo "observability: $*" >&2; }
die() {
    echo "observability: error: $*" >&2
    exit 1
}

# Waits until `url` answers, or fails naming the log to read.
wait_http() {
    local url="$1" what="$2" logfile="$3"
    for _ in $(seq 1 100); do
        if curl -fsS -o /dev/null "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    tail -n 20 "$logfile" >&2 || true
    die "$what did not answer on $url; its log is $logfile"
}

running() {
    local pidfile="$DIR/$1.pid"
    [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

build_jaeger() {
    if [[ -x "$JAEGER" ]]; then
        return 0
    fi
    command -v go >/dev/null || die "Jaeger is built with Go, and there is no \`go\` on PATH"
    log "building Jaeger v2 from its Go module (once; this takes a few minutes)"
    mkdir -p "$DIR/bin"
    (cd "$ROOT/scripts/observability" && go build -o "$JAEGER" github.com/jaegertracing/jaeger/cmd/jaeger) \
        || die "building Jaeger failed"
}

jaeger_config() {
    # Jaeger's all-in-one pipeline, with the ports above and loopback only.
    cat >"$DIR/jaeger.yaml" <<EOF
service:
  extensions: [jaeger_storage, jaeger_query, healthcheckv2]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    metrics:
      level: none
    logs:
      level: info

extensions:
  healthcheckv2:
    use_v2: true
    http:
      endpoint: 127.0.0.1:13133
  jaeger_query:
    storage:
      traces: memstore
$(if [[ -n "${JAEGER_UI_ASSETS:-}" ]]; then printf '    ui:\n      assets_path: %s\n' "$JAEGER_UI_ASSETS"; fi)
    http:
      endpoint: 127.0.0.1:$JAEGER_UI_PORT
    grpc:
      endpoint: 127.0.0.1:16685
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000

receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:$OTLP_GRPC_PORT
      http:
        endpoint: 127.0.0.1:$OTLP_HTTP_PORT

processors:
  batch:

exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
EOF
}

prometheus_config() {
    local targets="" target
    IFS=',' read -ra list <<<"$RPAFLOW_SCRAPE"
    for target in "${list[@]}"; do
        targets+="'${target// /}', "
    done
    cat >"$DIR/prometheus.yml" <<EOF
global:
  scrape_interval: 5s
  evaluation_interval: 5s
scrape_configs:
  - job_name: rpaflow
    static_configs:
      - targets: [${targets%, }]
EOF
}

start() {
    mkdir -p "$DIR"
    build_jaeger
    if running jaeger; then
        log "Jaeger already runs (pid $(cat "$DIR/jaeger.pid"))"
    else
        jaeger_config
        "$JAEGER" --config "file:$DIR/jaeger.yaml" >"$DIR/jaeger.log" 2>&1 &
        echo $! >"$DIR/jaeger.pid"
        wait_http "http://127.0.0.1:$JAEGER_UI_PORT/api/services" Jaeger "$DIR/jaeger.log"
    fi

    local promtool prometheus
    promtool="$("$ROOT/scripts/setup-prometheus.sh")"
    prometheus="$(dirname "$promtool")/prometheus"
    [[ -x "$prometheus" ]] || prometheus="$(command -v prometheus)"
    if running prometheus; then
        log "Prometheus already runs (pid $(cat "$DIR/prometheus.pid"))"
    else
        prometheus_config
        "$promtool" check config "$DIR/prometheus.yml" >&2
        mkdir -p "$DIR/prometheus-data"
        "$prometheus" --config.file="$DIR/prometheus.yml" \
            --storage.tsdb.path="$DIR/prometheus-data" \
            --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >"$DIR/prometheus.log" 2>&1 &
        echo $! >"$DIR/prometheus.pid"
        wait_http "http://127.0.0.1:$PROMETHEUS_PORT/-/ready" Prometheus "$DIR/prometheus.log"
    fi

    cat >&2 <<EOF
observability: Jaeger     http://127.0.0.1:$JAEGER_UI_PORT  (OTLP/gRPC 127.0.0.1:$OTLP_GRPC_PORT, OTLP/HTTP 127.0.0.1:$OTLP_HTTP_PORT)
observability: Prometheus http://127.0.0.1:$PROMETHEUS_PORT  (scraping $RPAFLOW_SCRAPE)
observability: now: eval "\$(scripts/observability.sh env)" and start rpaflow; a run's trace id
observability: is its run id without dashes: scripts/observability.sh trace RUN_ID
EOF
}

stop() {
    local name
    for name in prometheus jaeger; do
        if running "$name"; then
            kill "$(cat "$DIR/$name.pid")" 2>/dev/null || true
            log "stopped $name"
        fi
        rm -f "$DIR/$name.pid"
    done
}

status() {
    local name
    for name in jaeger prometheus; do
        if running "$name"; then
            echo "$name: running (pid $(cat "$DIR/$name.pid"))"
        else
            echo "$name: stopped"
        fi
    done
}

# What to set for rpaflow to export to Jaeger and serve the admin listener Prometheus scrapes.
env_lines() {
    echo "export OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$OTLP_GRPC_PORT"
    echo "export RPAFLOW_ADMIN__LISTEN=${RPAFLOW_SCRAPE%%,*}"
}

# A run's trace from Jaeger's query API, as one line per span: service, span, parent, duration.
trace() {
    local run="${1:-}"
    [[ -n "$run" ]] || die "usage: scripts/observability.sh trace RUN_ID"
    local id="${run//-/}"
    curl -fsS "http://127.0.0.1:$JAEGER_UI_PORT/api/traces/$id" | python3 -c '
import json, sys
data = json.load(sys.stdin)["data"]
if not data:
    sys.exit("no such trace (yet): spans leave in batches, try again in a few seconds")
trace = data[0]
processes = {k: v["serviceName"] for k, v in trace["processes"].items()}
spans = {s["spanID"]: s for s in trace["spans"]}
def parent(s):
    refs = [r for r in s.get("references", []) if r["refType"] == "CHILD_OF"]
    return refs[0]["spanID"] if refs else None
children = {}
for s in trace["spans"]:
    children.setdefault(parent(s) if parent(s) in spans else None, []).append(s)
def show(s, depth):
    print("%s%-*s %-22s %8.1f ms" % ("  " * depth, 60 - 2 * depth, s["operationName"],
          processes.get(s["processID"], "?"), s["duration"] / 1000))
    for c in sorted(children.get(s["spanID"], []), key=lambda c: c["startTime"]):
        show(c, depth + 1)
for root in sorted(children.get(None, []), key=lambda c: c["startTime"]):
    show(root, 0)
print("%d spans, trace %s" % (len(spans), trace["traceID"]))
'
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) env_lines ;;
    trace) trace "${2:-}" ;;
    build) build_jaeger ;;
    *) die "usage: scripts/observability.sh start|stop|status|env|trace RUN_ID|build" ;;
esac
