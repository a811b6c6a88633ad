#!/usr/bin/env bash
# `make demo`: start PostgreSQL and Kafka if they are not running (or use DATABASE_URL / KAFKA_BROKERS),
# run `courier demo`, and stop again whatever this script started.
set -euo pipefail
cd "$(dirname "$0")/.."

started=()
stop_started() {
    for service in "${started[@]}"; do
        echo "demo: stopping $service (started for the demo)" >&2
        "scripts/$service.sh" stop >/dev/null 2>&1 || true
    done
}
trap stop_started EXIT

if ! scripts/postgres.sh status 2>/dev/null; then
    scripts/postgres.sh start >/dev/null
    [ -n "${DATABASE_URL:-}" ] || started+=(postgres)
fi
if ! scripts/kafka.sh status 2>/dev/null; then
    scripts/kafka.sh start
    [ -n "${KAFKA_BROKERS:-}" ] || started+=(kafka)
fi

cargo run --quiet -p courier -- demo "$@"
