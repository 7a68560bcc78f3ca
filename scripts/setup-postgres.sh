#!/usr/bin/env bash
# Makes sure PostgreSQL answers on 127.0.0.1:5432 with a database `test` that user `postgres`
# reaches without a password over local TCP, then prints the DSN the tests use:
#   eval "$(scripts/setup-postgres.sh)"
#
# On a machine without PostgreSQL it installs Debian's `postgresql` (apt), creates a cluster when
# there is none, lets 127.0.0.1 in with trust authentication (a line of its own at the top of
# pg_hba.conf, marked `rpaflow tests`), starts the cluster and creates the database. Idempotent: a
# server that already answers and lets the tests in is left alone.
set -euo pipefail

host=127.0.0.1
port=5432
dsn=postgresql://postgres@$host:$port/test

log() { echo "setup-postgres: $*" >&2; }
die() {
    echo "setup-postgres: error: $*" >&2
    exit 1
}
as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi
}
as_postgres() {
    if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

# Whether the tests can use the server as it is.
usable() {
    command -v psql >/dev/null &&
        PGCONNECT_TIMEOUT=3 psql -w -q -X -h "$host" -p "$port" -U postgres -d test \
            -c 'select 1' >/dev/null 2>&1
}

if usable; then
    echo "export RPAFLOW_TEST_PG=$dsn"
    exit 0
fi

# The server programs: Debian's packages when missing.
if ! command -v pg_ctlcluster >/dev/null || ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    command -v apt-get >/dev/null || die "PostgreSQL is not installed and there is no apt-get to install it"
    log "installing PostgreSQL (Debian's postgresql package)"
    {
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql
    } >&2
fi

version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
[[ -n "$version" ]] || die "no PostgreSQL version under /usr/lib/postgresql"

# A cluster to run: the newest version's `main`, made when there is none.
if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -qx "$version main"; then
    log "creating the PostgreSQL $version cluster main"
    as_root pg_createcluster --port "$port" "$version" main >&2
fi

# Trust for local TCP connections, ahead of every other rule.
hba=/etc/postgresql/$version/main/pg_hba.conf
hba_changed=0
if ! grep -q 'rpaflow tests' "$hba"; then
    log "letting 127.0.0.1 in without a password ($hba)"
    as_root sed -i "1i host all all 127.0.0.1/32 trust # rpaflow tests: local TCP without a password" "$hba"
    hba_changed=1
fi

if pg_isready -q -h "$host" -p "$port"; then
    [[ $hba_changed -eq 0 ]] || as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload >&2
else
    log "starting PostgreSQL $version/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
    for _ in $(seq 1 60); do
        pg_isready -q -h "$host" -p "$port" && break
        sleep 0.5
    done
    pg_isready -q -h "$host" -p "$port" || die "PostgreSQL does not answer on $host:$port"
fi

if [[ -z $(as_postgres psql -X -tA -c "select 1 from pg_database where datname = 'test'") ]]; then
    log "creating the database test"
    as_postgres createdb test
fi
usable || die "PostgreSQL answers on $host:$port but user postgres cannot reach the database test"
echo "export RPAFLOW_TEST_PG=$dsn"
