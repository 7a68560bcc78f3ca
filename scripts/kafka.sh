#!/usr/bin/env bash
# Apache Kafka 4.4 in KRaft mode (no ZooKeeper) for the tests, the benchmarks and
# `rpaflow dev --kafka`: the jars come from Maven Central (scripts/kafka/pom.xml) and run with
# `java -cp`; each node is a combined broker and controller.
#
#   scripts/kafka.sh install                  copies the jars into the cache once, prints their folder
#   scripts/kafka.sh start [--port N] [--nodes K] [--data DIR] [--sasl USER:PASSWORD]...
#                                             starts K nodes (1 or 3, default 1), waits until each
#                                             answers, prints BROKERS=127.0.0.1:N,...
#   scripts/kafka.sh stop [--data DIR]        stops every node (SIGTERM, SIGKILL after 20 s)
#   scripts/kafka.sh kill NODE|all [--data DIR]     kills a node (or all) with SIGKILL
#   scripts/kafka.sh restart NODE|all [--data DIR]  starts a killed node again on its data
#   scripts/kafka.sh status [--data DIR]      says whether it is installed and what runs
#                                             (exit status 3 when no node runs)
#   scripts/kafka.sh perf [--data DIR] [--records N] [--size BYTES]
#                                             Kafka's own producer and consumer performance tools
#                                             against the running cluster (a calibration)
#
# Ports: node K (1-based) listens for clients on N+2(K-1) and for its controller quorum on
# N+2(K-1)+1; with --sasl a SASL_PLAINTEXT listener (mechanism PLAIN, the given users) is added on
# N+2K' (K' the node count) of node 1, printed as SASL_BROKERS=. Default N is 9092.
# DIR (default .rpaflow/kafka) holds cluster.env and node-K/ (server.properties, data/, kafka.log,
# kafka.pid). The jars (about 55 MB) are cached in ${RPAFLOW_CACHE:-$HOME/.cache/rpaflow}/kafka.
# A cluster is formatted once (kafka.tools.StorageTool); starting it again on DIR keeps its topics.
# Idempotent: installed jars and running nodes are left alone. KAFKA_HEAP_OPTS overrides the heap
# (default -Xms256m -Xmx512m, enough for tests and benchmarks on two cores).
set -euo pipefail

KAFKA_VERSION=4.4.0
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${RPAFLOW_CACHE:-$HOME/.cache/rpaflow}
LIBS=$CACHE/kafka/$KAFKA_VERSION/libs
START_TIMEOUT_S=${RPAFLOW_KAFKA_START_TIMEOUT_S:-120}
STOP_TIMEOUT_S=20

usage() {
    sed -n '5,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

die() {
    echo "error: $*" >&2
    exit 1
}

# Java 17 and Maven come with the machines this project runs on; elsewhere Debian's packages.
need_tools() {
    local missing=()
    command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null || missing+=(maven)
    [[ ${#missing[@]} -eq 0 ]] && return
    command -v apt-get >/dev/null || die "Kafka needs ${missing[*]}: install them"
    echo "installing ${missing[*]} with apt" >&2
    if [[ $(id -u) -eq 0 ]]; then
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2
    else
        { sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } >&2
    fi
}

install() {
    [[ -f "$LIBS/.complete" ]] && return
    need_tools
    mkdir -p "$CACHE/kafka"
    # Two callers at once (test binaries, a developer's shell) download it once.
    exec 9>"$CACHE/kafka/install.lock"
    flock 9
    if [[ ! -f "$LIBS/.complete" ]]; then
        echo "installing Apache Kafka $KAFKA_VERSION into $LIBS (Maven Central)" >&2
        rm -rf "$LIBS"
        mvn -q -B -Dstyle.color=never -f "$HERE/kafka/pom.xml" dependency:copy-dependencies \
            -DincludeScope=runtime -DoutputDirectory="$LIBS" >&2 ||
            die "mvn could not fetch Apache Kafka $KAFKA_VERSION"
        ls "$LIBS"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null
        touch "$LIBS/.complete"
    fi
    exec 9>&-
}

# The java command line of every Kafka process (heap, GC, log configuration, the cached jars).
java_cmd() {
    # shellcheck disable=SC2206 # KAFKA_HEAP_OPTS is a list of flags
    JAVA=(java ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$HERE/kafka/log4j2.properties"
        -cp "$LIBS/*")
}

# Runs a Kafka tool (a class of the cached jars, then its arguments), logging warnings only.
java_run() {
    java_cmd
    "${JAVA[@]}" -Dlog4j2.configurationFile="$HERE/kafka/log4j2-tools.properties" "$@"
}

# Whether something accepts TCP connections on 127.0.0.1:$1.
port_open() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# The pid in $1/kafka.pid when that process still runs, else nothing.
running_pid() {
    local pid
    [[ -f "$1/kafka.pid" ]] || return 0
    pid=$(<"$1/kafka.pid")
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

client_port() { echo $((PORT + 2 * ($1 - 1))); }
controller_port() { echo $((PORT + 2 * ($1 - 1) + 1)); }
sasl_port() { echo $((PORT + 2 * NODES)); }

brokers_list() {
    local k list=()
    for k in $(seq 1 "$NODES"); do
        list+=("127.0.0.1:$(client_port "$k")")
    done
    (IFS=,; echo "${list[*]}")
}

# Reads cluster.env of an existing cluster on $DATA.
load_cluster() {
    [[ -f "$DATA/cluster.env" ]] || die "no Kafka cluster on $DATA (scripts/kafka.sh start)"
    # shellcheck disable=SC1091
    source "$DATA/cluster.env"
}

# server.properties of node $1.
write_properties() {
    local k=$1 dir=$DATA/node-$1 voters=() i replicas min_isr
    for i in $(seq 1 "$NODES"); do
        voters+=("$i@127.0.0.1:$(controller_port "$i")")
    done
    replicas=$((NODES < 3 ? NODES : 3))
    min_isr=$((replicas < 2 ? 1 : 2))
    local listeners="PLAINTEXT://127.0.0.1:$(client_port "$k"),CONTROLLER://127.0.0.1:$(controller_port "$k")"
    local advertised="PLAINTEXT://127.0.0.1:$(client_port "$k")"
    local protocols="CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    local sasl=""
    if [[ -n "$SASL_USERS" && $k -eq 1 ]]; then
        listeners+=",SASL_PLAINTEXT://127.0.0.1:$(sasl_port)"
        advertised+=",SASL_PLAINTEXT://127.0.0.1:$(sasl_port)"
        protocols+=",SASL_PLAINTEXT:SASL_PLAINTEXT"
        local users="" pair
        for pair in ${SASL_USERS//,/ }; do
            users+=" user_${pair%%:*}=\"${pair#*:}\""
        done
        sasl="sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.sasl.enabled.mechanisms=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required${users};"
    fi
    mkdir -p "$dir"
    cat >"$dir/server.properties" <<EOF
# Written by scripts/kafka.sh: node $k of $NODES, combined broker and controller.
process.roles=broker,controller
node.id=$k
controller.quorum.voters=$(IFS=,; echo "${voters[*]}")
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$protocols
log.dirs=$dir/data
# Topics are created by their users (rpaflow creates its own), as on a production cluster.
auto.create.topics.enable=false
num.partitions=1
default.replication.factor=$replicas
min.insync.replicas=$min_isr
offsets.topic.replication.factor=$replicas
offsets.topic.num.partitions=10
# Idempotent producers get their ids through the transaction coordinator: 50 partitions (the
# default) take seconds to create on two cores, and every producer waits for them.
transaction.state.log.num.partitions=4
transaction.state.log.replication.factor=$replicas
transaction.state.log.min.isr=$min_isr
share.coordinator.state.topic.replication.factor=$replicas
share.coordinator.state.topic.min.isr=$min_isr
unclean.leader.election.enable=false
# A new consumer group starts at once, and a killed node is noticed within seconds.
group.initial.rebalance.delay.ms=0
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000
# Two cores: fewer threads than the defaults.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
$sasl
EOF
}

# Formats the storage of every node that has none yet (all with the cluster's id), in parallel.
format_nodes() {
    local k pids=()
    for k in $(seq 1 "$NODES"); do
        [[ -f "$DATA/node-$k/data/meta.properties" ]] && continue
        java_run kafka.tools.StorageTool format --ignore-formatted -t "$CLUSTER_ID" \
            -c "$DATA/node-$k/server.properties" >>"$DATA/node-$k/kafka.log" 2>&1 &
        pids+=($!)
    done
    for k in "${pids[@]}"; do
        wait "$k" || die "formatting the storage failed; see $DATA/node-*/kafka.log"
    done
}

# Starts node $1 unless it runs (no wait).
launch() {
    local dir=$DATA/node-$1 pid port
    pid=$(running_pid "$dir")
    [[ -n "$pid" ]] && return
    port=$(client_port "$1")
    if port_open "$port"; then
        die "something else listens on 127.0.0.1:$port"
    fi
    echo "[scripts/kafka.sh] starting node $1 on 127.0.0.1:$port at $(date -u +%FT%TZ)" >>"$dir/kafka.log"
    java_cmd
    (
        cd "$dir"
        # setsid: the node outlives the shell that started it, leads a session of its own (so
        # `kill` reaches every process of it) and ignores its terminal's signals.
        exec setsid "${JAVA[@]}" kafka.Kafka server.properties </dev/null >>"$dir/kafka.log" 2>&1
    ) &
    echo "$!" >"$dir/kafka.pid"
}

# Waits until node $1 answers on its client port.
wait_ready() {
    local k=$1 dir=$DATA/node-$1 port pid
    port=$(client_port "$k")
    pid=$(running_pid "$dir")
    for _ in $(seq 1 $((START_TIMEOUT_S * 10))); do
        port_open "$port" && return
        [[ -n "$(running_pid "$dir")" ]] || break
        sleep 0.1
    done
    echo "error: Kafka node $k does not answer on 127.0.0.1:$port; $dir/kafka.log ends with:" >&2
    tail -n 30 "$dir/kafka.log" >&2 || true
    [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null
    rm -f "$dir/kafka.pid"
    exit 1
}

start() {
    install
    mkdir -p "$DATA"
    DATA=$(cd "$DATA" && pwd)
    if [[ -f "$DATA/cluster.env" ]]; then
        # An existing cluster starts again as it was made.
        local want_nodes=$NODES
        load_cluster
        [[ $want_nodes == "$NODES" || $NODES_GIVEN -eq 0 ]] ||
            die "$DATA holds a $NODES-node cluster; remove it to make a $want_nodes-node one"
    else
        CLUSTER_ID=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
        cat >"$DATA/cluster.env" <<EOF
NODES=$NODES
PORT=$PORT
CLUSTER_ID=$CLUSTER_ID
SASL_USERS='$SASL_USERS'
EOF
    fi
    local k
    for k in $(seq 1 "$NODES"); do
        write_properties "$k"
    done
    format_nodes
    for k in $(seq 1 "$NODES"); do
        launch "$k"
    done
    # A node's client listener opens once the quorum has a leader and the node joined it: the
    # nodes of a cluster come up together.
    for k in $(seq 1 "$NODES"); do
        wait_ready "$k"
    done
    echo "Apache Kafka $KAFKA_VERSION: $NODES node(s) on $(brokers_list) ($DATA)" >&2
    echo "BROKERS=$(brokers_list)"
    [[ -z "$SASL_USERS" ]] || echo "SASL_BROKERS=127.0.0.1:$(sasl_port)"
}

# The node numbers $1 names: a number or `all`.
nodes_of() {
    if [[ $1 == all ]]; then
        seq 1 "$NODES"
    elif [[ $1 =~ ^[0-9]+$ && $1 -ge 1 && $1 -le $NODES ]]; then
        echo "$1"
    else
        die "no node \`$1\`: the cluster on $DATA has nodes 1 to $NODES"
    fi
}

kill_nodes() {
    load_cluster
    local k pid
    for k in $(nodes_of "$1"); do
        pid=$(running_pid "$DATA/node-$k")
        if [[ -z "$pid" ]]; then
            echo "node $k is not running" >&2
            continue
        fi
        # The java process is the session leader's only child: kill the whole session.
        pkill -KILL -s "$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
        rm -f "$DATA/node-$k/kafka.pid"
        echo "[scripts/kafka.sh] node $k killed at $(date -u +%FT%TZ)" >>"$DATA/node-$k/kafka.log"
        echo "node $k killed (pid $pid)" >&2
    done
}

restart_nodes() {
    install
    load_cluster
    local k nodes
    nodes=$(nodes_of "$1")
    for k in $nodes; do
        launch "$k"
    done
    for k in $nodes; do
        wait_ready "$k"
    done
    echo "BROKERS=$(brokers_list)"
}

stop() {
    if [[ ! -f "$DATA/cluster.env" ]]; then
        echo "Kafka is not running ($DATA holds no cluster)" >&2
        return
    fi
    load_cluster
    local k pid pids=()
    for k in $(seq 1 "$NODES"); do
        pid=$(running_pid "$DATA/node-$k")
        [[ -n "$pid" ]] || continue
        pkill -TERM -s "$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
        pids+=("$k:$pid")
    done
    for _ in $(seq 1 $((STOP_TIMEOUT_S * 10))); do
        local alive=0 entry
        for entry in "${pids[@]}"; do
            kill -0 "${entry#*:}" 2>/dev/null && alive=1
        done
        [[ $alive -eq 0 ]] && break
        sleep 0.1
    done
    for entry in "${pids[@]}"; do
        k=${entry%%:*}
        pid=${entry#*:}
        if kill -0 "$pid" 2>/dev/null; then
            echo "node $k (pid $pid) did not stop within ${STOP_TIMEOUT_S}s; killing it" >&2
            pkill -KILL -s "$pid" 2>/dev/null || kill -9 "$pid" 2>/dev/null || true
        fi
        rm -f "$DATA/node-$k/kafka.pid"
        echo "node $k stopped (pid $pid)" >&2
    done
    [[ ${#pids[@]} -gt 0 ]] || echo "Kafka is not running ($DATA)" >&2
}

status() {
    if [[ -f "$LIBS/.complete" ]]; then
        echo "installed: Apache Kafka $KAFKA_VERSION in $LIBS"
    else
        echo "installed: no (scripts/kafka.sh install)"
    fi
    if [[ ! -f "$DATA/cluster.env" ]]; then
        echo "running: no ($DATA holds no cluster)"
        exit 3
    fi
    load_cluster
    local k pid running=0
    for k in $(seq 1 "$NODES"); do
        pid=$(running_pid "$DATA/node-$k")
        if [[ -n "$pid" ]]; then
            running=$((running + 1))
            echo "node $k: pid $pid on 127.0.0.1:$(client_port "$k")"
        else
            echo "node $k: not running"
        fi
    done
    [[ $running -gt 0 ]] || exit 3
    echo "BROKERS=$(brokers_list)"
}

# Kafka's own producer and consumer performance tools on a topic of their own: what the broker
# gives a plain Java client on this machine, to read rpaflow's figures against.
perf() {
    install
    load_cluster
    local topic=rpaflow.perf.$$ brokers
    brokers=$(brokers_list)
    java_run org.apache.kafka.tools.TopicCommand --bootstrap-server "$brokers" --create \
        --topic "$topic" --partitions 8 --replication-factor $((NODES < 3 ? NODES : 3)) >&2
    echo "producer (acks=all, idempotent, linger.ms=2, $RECORDS records of $SIZE bytes):"
    java_run org.apache.kafka.tools.ProducerPerformance --topic "$topic" \
        --num-records "$RECORDS" --record-size "$SIZE" --throughput -1 \
        --bootstrap-server "$brokers" \
        --command-property acks=all enable.idempotence=true linger.ms=2
    echo "consumer:"
    java_run org.apache.kafka.tools.ConsumerPerformance --bootstrap-server "$brokers" \
        --topic "$topic" --num-records "$RECORDS"
    java_run org.apache.kafka.tools.TopicCommand --bootstrap-server "$brokers" --delete \
        --topic "$topic" >&2
}

[[ $# -ge 1 ]] || usage
command=$1
shift
target=""
if [[ $command == kill || $command == restart ]]; then
    [[ $# -ge 1 ]] || usage
    target=$1
    shift
fi
PORT=9092
NODES=1
NODES_GIVEN=0
DATA=.rpaflow/kafka
SASL_USERS=""
RECORDS=200000
SIZE=200
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) [[ $# -ge 2 ]] || usage; PORT=$2; shift 2 ;;
        --nodes) [[ $# -ge 2 ]] || usage; NODES=$2; NODES_GIVEN=1; shift 2 ;;
        --data) [[ $# -ge 2 ]] || usage; DATA=$2; shift 2 ;;
        --sasl) [[ $# -ge 2 ]] || usage; SASL_USERS+="${SASL_USERS:+,}$2"; shift 2 ;;
        --records) [[ $# -ge 2 ]] || usage; RECORDS=$2; shift 2 ;;
        --size) [[ $# -ge 2 ]] || usage; SIZE=$2; shift 2 ;;
        *) usage ;;
    esac
done
[[ "$PORT" =~ ^[0-9]+$ ]] || die "--port wants a number, not \`$PORT\`"
[[ "$NODES" == 1 || "$NODES" == 3 ]] || die "--nodes is 1 or 3, not \`$NODES\`"
for pair in ${SASL_USERS//,/ }; do
    [[ $pair =~ ^[A-Za-z0-9_.-]+:[^\"\;\ ]+$ ]] ||
        die "--sasl wants USER:PASSWORD (no quotes, semicolons or spaces), not \`$pair\`"
done

case "$command" in
    install) install; echo "$LIBS" ;;
    start) start ;;
    stop) stop ;;
    kill) kill_nodes "$target" ;;
    restart) restart_nodes "$target" ;;
    status) status ;;
    perf) perf ;;
    *) usage ;;
esac
