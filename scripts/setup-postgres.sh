#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 (starting the machine's cluster when it does
# not), then prints the DSN the tests use:
#   eval "$(scripts/setup-postgres.sh)"
# Idempotent: a running server is left alone. The machines this project runs on have a cluster
# named `main` with trust authentication for local TCP connections and a database `test`.
set -euo pipefail

host=127.0.0.1
port=5432

if ! pg_isready -q -h "$host" -p "$port"; then
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    if [[ -z "$version" ]]; then
        echo "no PostgreSQL cluster under /etc/postgresql" >&2
        exit 1
    fi
    echo "starting PostgreSQL $version/main" >&2
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 60); do
        pg_isready -q -h "$host" -p "$port" && break
        sleep 0.5
    done
    if ! pg_isready -q -h "$host" -p "$port"; then
        echo "PostgreSQL does not answer on $host:$port" >&2
        exit 1
    fi
fi

echo "export RPAFLOW_TEST_PG=postgresql://postgres@$host:$port/test"
