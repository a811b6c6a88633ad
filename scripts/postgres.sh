#!/usr/bin/env bash
# Starts the PostgreSQL that courier's tests and demo use, idempotently.
#
#   scripts/postgres.sh start   install Debian's postgresql if missing, create and start a cluster named
#                               ${COURIER_PG_CLUSTER:-courier} on 127.0.0.1:${COURIER_PG_PORT:-54329}, create
#                               the courier role and database; prints the DATABASE_URL on stdout
#   scripts/postgres.sh stop    stop that cluster
#   scripts/postgres.sh url     print the DATABASE_URL
#   scripts/postgres.sh status  exit 0 when the server answers (DATABASE_URL) or the cluster is online
#   scripts/postgres.sh clean-test-databases   drop databases left by earlier test runs
#
# With DATABASE_URL set, nothing is installed or started: the script only checks the server answers.
# COURIER_PG_CLUSTER and COURIER_PG_PORT together run a second cluster next to the first (the soak's,
# which it restarts: `courier gameday --soak` uses COURIER_PG_CLUSTER=courier_soak COURIER_PG_PORT=54339).
# Safe to run twice, as root on a bare machine, and while the server already runs.
set -euo pipefail

PORT="${COURIER_PG_PORT:-54329}"
CLUSTER="${COURIER_PG_CLUSTER:-courier}"
URL="postgres://courier:courier@127.0.0.1:${PORT}/courier"

say() { echo "postgres: $*" >&2; }
die() { echo "postgres: error: $*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root (or sudo) to run: $*"; fi
}

as_postgres() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi
}

pg_version() {
    # The newest installed server major version.
    ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1
}

install() {
    if [ -n "$(pg_version)" ] && command -v pg_createcluster >/dev/null; then return; fi
    say "installing Debian's postgresql package"
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql postgresql-contrib >&2
}

psql_admin() {
    PGOPTIONS="-c client_min_messages=warning" \
    as_postgres psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p "$PORT" -d postgres "$@"
}

start() {
    if [ -n "${DATABASE_URL:-}" ]; then
        command -v psql >/dev/null || install
        psql "$DATABASE_URL" -X -qtAc 'SELECT 1' >/dev/null ||
            die "DATABASE_URL is set but the server does not answer; unset it to let this script start one"
        echo "$DATABASE_URL"
        return
    fi
    install
    local version
    version="$(pg_version)"
    if ! pg_lsclusters -h | awk '{print $2}' | grep -qx "$CLUSTER"; then
        say "creating cluster $version/$CLUSTER on 127.0.0.1:$PORT"
        as_root pg_createcluster "$version" "$CLUSTER" --port "$PORT" >&2 -- --auth-local=peer --auth-host=scram-sha-256
        # A development cluster: loopback only, room for the chaos suite's connection storms, and the
        # statistics the status and chaos reports read.
        local conf="/etc/postgresql/$version/$CLUSTER/conf.d/courier.conf"
        as_root tee "$conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $PORT
max_connections = 400
shared_buffers = 256MB
log_lock_waits = on
deadlock_timeout = 200ms
track_activity_query_size = 4096
CONF
    fi
    if ! pg_lsclusters -h | awk -v c="$CLUSTER" '$2 == c {print $4}' | grep -qx online; then
        say "starting cluster $version/$CLUSTER"
        as_root pg_ctlcluster "$version" "$CLUSTER" start >&2
    fi
    for _ in $(seq 1 60); do
        if as_postgres pg_isready -q -h 127.0.0.1 -p "$PORT"; then break; fi
        sleep 0.5
    done
    as_postgres pg_isready -q -h 127.0.0.1 -p "$PORT" || die "cluster did not accept connections on 127.0.0.1:$PORT within 30 s; see /var/log/postgresql/"
    # The courier role may create the per-test databases, and read and end other sessions (status, chaos).
    psql_admin <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'courier') THEN
    CREATE ROLE courier LOGIN CREATEDB PASSWORD 'courier';
  END IF;
END $$;
GRANT pg_signal_backend, pg_read_all_stats TO courier;
SQL
    if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = 'courier'")" != 1 ]; then
        psql_admin -c "CREATE DATABASE courier OWNER courier"
    fi
    echo "$URL"
}

# Drops the per-test databases earlier test runs left behind.
clean_test_databases() {
    local url="${DATABASE_URL:-$URL}"
    psql "$url" -X -qtAc "SELECT datname FROM pg_database WHERE datname LIKE 'courier\_test\_%'" |
        while read -r db; do
            [ -n "$db" ] && psql "$url" -X -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null
        done
}

stop() {
    local version
    version="$(pg_version)"
    if [ -n "$version" ] && pg_lsclusters -h 2>/dev/null | awk '{print $2}' | grep -qx "$CLUSTER"; then
        as_root pg_ctlcluster "$version" "$CLUSTER" stop >&2 || true
    fi
}

case "${1:-start}" in
    start) start ;;
    stop) stop ;;
    url) echo "${DATABASE_URL:-$URL}" ;;
    status)
        if [ -n "${DATABASE_URL:-}" ]; then psql "$DATABASE_URL" -X -qtAc 'SELECT 1' >/dev/null 2>&1; exit; fi
        command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | awk -v c="$CLUSTER" '$2 == c {print $4}' | grep -qx online
        ;;
    clean-test-databases) clean_test_databases ;;
    *) die "usage: $0 start|stop|status|url|clean-test-databases" ;;
esac
