# courier: deliver Kafka topics to HTTP destinations, progress kept in PostgreSQL.
# `make` lists the targets. Every target starts the local services it needs (idempotently).

.DEFAULT_GOAL := help
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

CARGO ?= cargo
# DATABASE_URL and KAFKA_BROKERS, when set, point everything at existing services instead; unset, the
# scripts start local ones and every tool defaults to them.

##@ Start here

.PHONY: demo
demo: ## Run the pipeline end to end: local services (stopped again after), a demo topic and destination, live progress
	scripts/demo.sh

.PHONY: test
test: services browser ## Run the whole test suite against real PostgreSQL, Kafka and HTTP (~10 min from a cold build on 2 cores)
	scripts/postgres.sh clean-test-databases
	$(CARGO) test --workspace --no-fail-fast

##@ Longer runs

.PHONY: chaos
chaos: services ## Full chaos gameday (~7 min): incident 8 naive vs courier, and the other faults of that day
	$(CARGO) run --release -p courier -- gameday --all --full

.PHONY: soak
soak: ## Randomized fault soak, one hour, on its own PostgreSQL (:54339) and Kafka (:9192) that it restarts; prints its seed
	$(CARGO) build --release -p courier
	env -u DATABASE_URL -u KAFKA_BROKERS COURIER_PG_CLUSTER=courier_soak COURIER_PG_PORT=54339 scripts/postgres.sh start >/dev/null
	env -u DATABASE_URL -u KAFKA_BROKERS COURIER_KAFKA_DIR=target/kafka-soak COURIER_KAFKA_PORT=9192 COURIER_KAFKA_CONTROLLER_PORT=9193 scripts/kafka.sh start
	RUST_LOG=$${RUST_LOG:-warn,courier=info,librdkafka=off} target/release/courier gameday --soak $${SOAK:-1h} $${SEED:+--seed $$SEED}

.PHONY: soak-stop
soak-stop: ## Stop the soak's own PostgreSQL cluster and Kafka broker
	env -u DATABASE_URL -u KAFKA_BROKERS COURIER_KAFKA_DIR=target/kafka-soak COURIER_KAFKA_PORT=9192 COURIER_KAFKA_CONTROLLER_PORT=9193 scripts/kafka.sh stop
	env -u DATABASE_URL -u KAFKA_BROKERS COURIER_PG_CLUSTER=courier_soak COURIER_PG_PORT=54339 scripts/postgres.sh stop

.PHONY: bench
bench: services ## Benchmarks against the raw pipe, a naive forwarder and pgbench, as ratios measured in one run
	$(CARGO) run --release -p courier-bench -- --out target/bench/report.md

##@ Services

.PHONY: services
services: postgres kafka ## Start PostgreSQL and Kafka on 127.0.0.1 (no-op when DATABASE_URL / KAFKA_BROKERS answer)

.PHONY: postgres
postgres: ## Install (if missing) and start a PostgreSQL cluster on 127.0.0.1:54329
	scripts/postgres.sh start >/dev/null

.PHONY: kafka
kafka: ## Fetch the broker from Maven Central (once) and start Kafka in KRaft mode on 127.0.0.1:9092
	scripts/kafka.sh start

.PHONY: browser
browser: ## Install (if missing) Debian's chromium, in which a test loads the status page headless
	scripts/chromium.sh >/dev/null

.PHONY: stop
stop: ## Stop the local Kafka broker and PostgreSQL cluster
	scripts/kafka.sh stop
	scripts/postgres.sh stop

##@ Development

.PHONY: build
build: ## Build the courier binary (release)
	$(CARGO) build --release -p courier

.PHONY: lint
lint: ## rustfmt and clippy, warnings as errors
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make \033[36m<target>\033[0m\n"} \
	/^[a-zA-Z_-]+:.*?##/ { printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2 } \
	/^##@/ { printf "\n\033[1m%s\033[0m\n", substr($$0, 5) }' $(MAKEFILE_LIST)
