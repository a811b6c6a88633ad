#!/usr/bin/env bash
# A single-node Kafka (KRaft, broker + controller in one JVM) for courier's tests and demo.
#
#   scripts/kafka.sh start                        resolve jars (once), format (once), boot, wait until it answers
#   scripts/kafka.sh stop                         SIGTERM, bounded wait, then SIGKILL
#   scripts/kafka.sh restart                      stop, then start (picks up a changed server.properties)
#   scripts/kafka.sh status                       exit 0 when a broker answers, 1 otherwise
#   scripts/kafka.sh create-topic NAME PARTITIONS idempotent
#
# With KAFKA_BROKERS set (host:port[,host:port...]), the broker is someone else's: `start` only checks that
# it answers, `stop` does nothing, `create-topic` uses it.
#
# Everything lives under target/kafka/ (override with COURIER_KAFKA_DIR): libs/ (jars, from
# scripts/kafka/pom.xml), data/ (the log dir), server.properties, kafka.pid, kafka.log.
# The broker listens on 127.0.0.1:9092 (clients), 127.0.0.1:9093 (controller) and 127.0.0.1:9094
# (SASL_PLAINTEXT: PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for the test user courier / courier-secret, for
# courier's SASL tests) only; a second checkout can run its own with COURIER_KAFKA_DIR, COURIER_KAFKA_PORT,
# COURIER_KAFKA_CONTROLLER_PORT and COURIER_KAFKA_SASL_PORT (default: the client port + 2; clients then
# need KAFKA_BROKERS=127.0.0.1:<port>, and the SASL tests find the listener at that port + 2, or at
# KAFKA_SASL_BROKERS).
#
# Needs: bash, java 17+, mvn (first start, or after the pom changes), coreutils, od, flock.
# JVM start-up costs seconds on 2 cores, so readiness is checked in bash (a raw Kafka ApiVersions and
# Metadata request over /dev/tcp), and the Java admin tools run only for create-topic.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
POM="$ROOT/scripts/kafka/pom.xml"
# Absolute, so Maven (which resolves paths against the POM) and the pid checks see the same folder.
KDIR=$(realpath -m "${COURIER_KAFKA_DIR:-$ROOT/target/kafka}")
LIBS="$KDIR/libs"
STAMP="$KDIR/libs.stamp"
DATA="$KDIR/data"
PROPS="$KDIR/server.properties"
LOG4J="$KDIR/log4j2.properties"
TOOLS_LOG4J="$KDIR/log4j2-tools.properties"
PIDFILE="$KDIR/kafka.pid"
LOG="$KDIR/kafka.log"
LOCK="$KDIR/kafka.lock"
HOST=127.0.0.1
PORT=${COURIER_KAFKA_PORT:-9092}
CONTROLLER_PORT=${COURIER_KAFKA_CONTROLLER_PORT:-9093}
# Two above the client port by default, so a second broker moved with COURIER_KAFKA_PORT (the soak's)
# moves its SASL listener along.
SASL_PORT=${COURIER_KAFKA_SASL_PORT:-$((PORT + 2))}
# The SASL listener's test user: a development broker's throwaway credentials, not a secret.
SASL_USER=courier
SASL_PASSWORD=courier-secret
START_DEADLINE_S=${KAFKA_START_TIMEOUT_S:-90}
STOP_DEADLINE_S=${KAFKA_STOP_TIMEOUT_S:-30}

say() { echo "kafka.sh: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# ---------------------------------------------------------------------------------------------------------
# Talking Kafka from bash: one request on a fresh connection, the first bytes of the answer as hex.
# ---------------------------------------------------------------------------------------------------------

# kafka_request HOST PORT HEX_REQUEST BYTES: prints the first BYTES bytes of the response as hex, or fails.
kafka_request() {
    local host=$1 port=$2 request=$3 bytes=$4
    # The subshell owns fd 3; `timeout` bounds a broker that accepts and never answers.
    timeout 3 bash -c '
        exec 3<>"/dev/tcp/$0/$1" || exit 1
        printf "%b" "$2" >&3
        head -c "$3" <&3 | od -An -v -tx1 | tr -d " \n"
    ' "$host" "$port" "$request" "$bytes" 2>/dev/null
}

# client id "kafka.sh" (8 bytes), correlation id "cour" (0x636f7572).
readonly CLIENT_ID='\x00\x08kafka.sh'
readonly CORRELATION='\x63\x6f\x75\x72'

# ApiVersions v0 (api key 18): answered only once the broker processes requests, which a KRaft broker
# enables after it has caught up with the metadata log and been unfenced.
# Response: size(4) correlation(4) error_code(2).
answers_api_versions() {
    local out
    out=$(kafka_request "$1" "$2" "\x00\x00\x00\x12\x00\x12\x00\x00${CORRELATION}${CLIENT_ID}" 10) || return 1
    [[ ${out:8:12} == 636f75720000 ]]
}

# Metadata v4 (api key 3), all topics: the broker list must name at least one broker.
# Response: size(4) correlation(4) throttle_ms(4) broker_count(4).
answers_metadata() {
    local out
    out=$(kafka_request "$1" "$2" \
        "\x00\x00\x00\x17\x00\x03\x00\x04${CORRELATION}${CLIENT_ID}\xff\xff\xff\xff\x00" 16) || return 1
    [[ ${#out} -ge 32 && ${out:8:8} == 636f7572 ]] || return 1
    local brokers=$((16#${out:24:8}))
    ((brokers >= 1 && brokers < 1000))
}

answers() { answers_api_versions "$1" "$2" && answers_metadata "$1" "$2"; }

# port_owner PORT: "pid=123 java" of whoever listens on 127.0.0.1:PORT, or nothing.
port_owner() {
    command -v ss >/dev/null || return 0
    ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/pid=\2 \1/p' | head -1
}

port_open() { timeout 1 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$HOST" "$1" 2>/dev/null; }

# ---------------------------------------------------------------------------------------------------------
# Our broker: the pid file, checked against /proc so a recycled pid is never signalled.
# ---------------------------------------------------------------------------------------------------------

our_pid() {
    [[ -f $PIDFILE ]] || return 1
    local pid
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [[ -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF "kafka.Kafka $PROPS" || return 1
    echo "$pid"
}

java_bin() {
    if [[ -n ${JAVA_HOME:-} && -x $JAVA_HOME/bin/java ]]; then
        echo "$JAVA_HOME/bin/java"
    else
        command -v java || die "java not found: install a JDK 17+ (Debian: apt-get install openjdk-17-jre-headless)"
    fi
}

# Tools are short-lived: a small heap, no JIT warm-up, warnings only.
run_tool() {
    "$(java_bin)" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Xshare:auto \
        -Dlog4j2.configurationFile="$TOOLS_LOG4J" -cp "$LIBS/*" "$@"
}

resolve_jars() {
    local want have=""
    want=$(sha256sum "$POM" | cut -d' ' -f1)
    [[ -f $STAMP ]] && have=$(<"$STAMP")
    if [[ -d $LIBS && $want == "$have" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found: install Maven (Debian: apt-get install maven) to fetch the Kafka jars"
    say "resolving Kafka jars with Maven into $LIBS (first start, or scripts/kafka/pom.xml changed)"
    rm -rf "$LIBS" "$STAMP"
    mkdir -p "$KDIR"
    if ! mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DoutputDirectory="$LIBS" \
        >"$KDIR/mvn.log" 2>&1; then
        cat "$KDIR/mvn.log" >&2
        die "Maven could not resolve the Kafka jars (see above); is Maven Central reachable?"
    fi
    echo "$want" >"$STAMP"
}

write_config() {
    mkdir -p "$DATA"
    cat >"$PROPS" <<EOF
# Written by scripts/kafka.sh: a single-node KRaft cluster for tests and the demo. Edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT,SASL_PLAINTEXT://$HOST:$SASL_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT,SASL_PLAINTEXT://$HOST:$SASL_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_PLAINTEXT:SASL_PLAINTEXT
# courier's SASL tests: PLAIN users are listed here, SCRAM credentials live in the metadata log (added
# by ensure_scram_user after the first start). No authorizer: authentication only.
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
listener.name.sasl_plaintext.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$SASL_USER="$SASL_PASSWORD";
listener.name.sasl_plaintext.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
log.dirs=$DATA
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
# Tests create every topic they use; a typo must be an error, not a new topic.
auto.create.topics.enable=false
delete.topic.enable=true
# Retention is applied within a second, not Kafka's 5 minutes: courier-kafka's tests of real retention
# (segments deleted under a range) wait for it. Costs a scan of the segment list per second.
log.retention.check.interval.ms=1000
# Two cores: fewer threads than the defaults.
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
background.threads=2
EOF
    cat >"$LOG4J" <<'EOF'
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = out
logger.kafka.name = kafka
logger.kafka.level = info
logger.state.name = state.change.logger
logger.state.level = warn
logger.request.name = kafka.request.logger
logger.request.level = warn
EOF
    cat >"$TOOLS_LOG4J" <<'EOF'
status = error
appender.err.type = Console
appender.err.name = err
appender.err.target = SYSTEM_ERR
appender.err.layout.type = PatternLayout
appender.err.layout.pattern = %p %m%n
rootLogger.level = warn
rootLogger.appenderRef.err.ref = err
EOF
}

# A base64url UUID as Kafka writes them; never starting with '-', which the tool would read as a flag.
random_cluster_id() {
    local id
    while :; do
        id=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
        [[ $id != -* ]] && break
    done
    echo "$id"
}

format_once() {
    [[ -f $DATA/meta.properties ]] && return 0
    local id
    id=$(random_cluster_id)
    say "formatting $DATA (cluster id $id)"
    run_tool kafka.tools.StorageTool format --ignore-formatted -t "$id" -c "$PROPS" >&2 ||
        die "formatting $DATA failed (see above); if the data dir is from another Kafka version, run: scripts/kafka.sh stop && rm -rf $DATA"
}

wait_ready() {
    local pid=$1 deadline=$((SECONDS + START_DEADLINE_S))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "the broker exited during start-up; last lines of $LOG:"
            tail -n 30 "$LOG" >&2 || true
            rm -f "$PIDFILE"
            exit 1
        fi
        if answers "$HOST" "$PORT"; then
            return 0
        fi
        sleep 0.25
    done
    say "the broker (pid $pid) did not answer on $HOST:$PORT within ${START_DEADLINE_S}s; last lines of $LOG:"
    tail -n 30 "$LOG" >&2 || true
    say "it is still running: inspect $LOG, then scripts/kafka.sh stop"
    exit 1
}

first_broker() {
    local first=${KAFKA_BROKERS%%,*}
    first=${first#*://}
    [[ $first == *:* ]] || die "KAFKA_BROKERS=$KAFKA_BROKERS: expected host:port[,host:port...]"
    echo "$first"
}

check_external() {
    local hp host port
    hp=$(first_broker)
    host=${hp%:*}
    port=${hp##*:}
    if answers "$host" "$port"; then
        say "KAFKA_BROKERS=$KAFKA_BROKERS answers; not starting a local broker"
        return 0
    fi
    die "KAFKA_BROKERS=$KAFKA_BROKERS does not answer Kafka requests on $host:$port; start that broker, or unset KAFKA_BROKERS to let this script run one on $HOST:$PORT"
}

cmd_start() {
    if [[ -n ${KAFKA_BROKERS:-} ]]; then
        check_external
        return
    fi
    mkdir -p "$KDIR"
    exec 9>"$LOCK"
    flock -w "$((START_DEADLINE_S + 60))" 9 || die "another scripts/kafka.sh holds $LOCK for too long"

    local pid
    if pid=$(our_pid); then
        if answers "$HOST" "$PORT"; then
            say "already running (pid $pid) on $HOST:$PORT"
            port_open "$SASL_PORT" ||
                say "warning: it has no SASL listener on $HOST:$SASL_PORT (started by an older scripts/kafka.sh); courier's SASL tests fail until you run: scripts/kafka.sh restart"
            ensure_scram_user
            return 0
        fi
        say "broker pid $pid is running but not answering yet; waiting"
        wait_ready "$pid"
        say "ready on $HOST:$PORT (pid $pid)"
        return 0
    fi
    rm -f "$PIDFILE"

    local p owner
    for p in "$PORT" "$CONTROLLER_PORT" "$SASL_PORT"; do
        if port_open "$p"; then
            owner=$(port_owner "$p")
            if [[ $p == "$PORT" ]] && answers "$HOST" "$PORT"; then
                die "a Kafka broker not started by this script (${owner:-owner unknown}) already listens on $HOST:$PORT; use it with KAFKA_BROKERS=$HOST:$PORT, or stop it"
            fi
            die "port $HOST:$p is taken by another process (${owner:-owner unknown}); stop it, then retry"
        fi
    done

    resolve_jars
    write_config
    format_once

    local java
    java=$(java_bin)
    say "starting Kafka on $HOST:$PORT (log: $LOG)"
    # 9>&-: the broker must not inherit the lock, or it would hold it for its whole life.
    # setsid: the broker outlives this script and an interrupted `make` (Ctrl-C reaches the whole process
    # group). Without job control a background child is not a group leader, so setsid execs in place and
    # $! is the JVM's pid.
    nohup setsid "$java" -Xmx512m -Xms512m -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        -Dlog4j2.configurationFile="$LOG4J" -Dkafka.logs.dir="$KDIR/logs" \
        -cp "$LIBS/*" kafka.Kafka "$PROPS" >"$LOG" 2>&1 </dev/null 9>&- &
    pid=$!
    echo "$pid" >"$PIDFILE"
    wait_ready "$pid"
    ensure_scram_user
    say "ready on $HOST:$PORT, SASL on $HOST:$SASL_PORT (pid $pid)"
}

# The SCRAM credentials of the SASL test user, once per data dir (they live in the metadata log, so a
# data dir formatted by an older script gets them on its next start). A JVM tool run: seconds, once.
ensure_scram_user() {
    local stamp="$DATA/courier-scram-user"
    [[ -f $stamp ]] && return 0
    say "adding SCRAM-SHA-256/512 credentials for the SASL test user '$SASL_USER'"
    local mechanism
    # One mechanism per request: the broker refuses two changes of one user's credentials in one.
    for mechanism in SCRAM-SHA-256 SCRAM-SHA-512; do
        run_tool kafka.admin.ConfigCommand --bootstrap-server "$HOST:$PORT" --alter --entity-type users \
            --entity-name "$SASL_USER" --add-config "$mechanism=[password=$SASL_PASSWORD]" >&2 ||
            die "could not add the $mechanism credentials of '$SASL_USER' (see above); the broker runs, SASL tests will fail"
    done
    touch "$stamp"
}

cmd_stop() {
    if [[ -n ${KAFKA_BROKERS:-} ]]; then
        say "KAFKA_BROKERS is set: that broker is not ours to stop"
        return 0
    fi
    mkdir -p "$KDIR"
    exec 9>"$LOCK"
    flock -w "$((STOP_DEADLINE_S + 30))" 9 || die "another scripts/kafka.sh holds $LOCK for too long"
    local pid
    if ! pid=$(our_pid); then
        rm -f "$PIDFILE"
        say "not running"
        return 0
    fi
    say "stopping Kafka (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local deadline=$((SECONDS + STOP_DEADLINE_S))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "still running after ${STOP_DEADLINE_S}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PIDFILE"
    say "stopped"
}

cmd_status() {
    if [[ -n ${KAFKA_BROKERS:-} ]]; then
        local hp
        hp=$(first_broker)
        if answers "${hp%:*}" "${hp##*:}"; then
            say "KAFKA_BROKERS=$KAFKA_BROKERS answers"
            return 0
        fi
        say "KAFKA_BROKERS=$KAFKA_BROKERS does not answer"
        return 1
    fi
    local pid
    if pid=$(our_pid); then
        if answers "$HOST" "$PORT"; then
            say "running (pid $pid) on $HOST:$PORT"
            return 0
        fi
        say "pid $pid is running but $HOST:$PORT does not answer (starting, or stuck: see $LOG)"
        return 1
    fi
    if port_open "$PORT"; then
        say "not started by this script, but $HOST:$PORT is taken by $(port_owner "$PORT")"
        return 1
    fi
    say "not running"
    return 1
}

cmd_create_topic() {
    (($# == 2)) || die "usage: scripts/kafka.sh create-topic NAME PARTITIONS"
    local name=$1 partitions=$2 bootstrap
    [[ $partitions =~ ^[1-9][0-9]*$ ]] || die "PARTITIONS must be a positive integer, got '$partitions'"
    bootstrap=${KAFKA_BROKERS:-$HOST:$PORT}
    # Fail in milliseconds, not after the admin client's 60 s of retries.
    local hp
    hp=$(KAFKA_BROKERS=$bootstrap first_broker)
    answers "${hp%:*}" "${hp##*:}" ||
        die "no Kafka broker answers on $hp: run scripts/kafka.sh start first (or fix KAFKA_BROKERS)"
    [[ -d $LIBS ]] || resolve_jars
    [[ -f $TOOLS_LOG4J ]] || { mkdir -p "$KDIR" && write_config; }
    local out
    out=$(run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --create --if-not-exists \
        --topic "$name" --partitions "$partitions" --replication-factor 1) ||
        die "could not create topic '$name' on $bootstrap (see above); is the broker up? (scripts/kafka.sh status)"
    if [[ $out == *"Created topic"* ]]; then
        say "created topic '$name' with $partitions partition(s)"
        return 0
    fi
    # It already existed: say so, and warn when its partition count is not the one asked for.
    local have
    have=$(run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$bootstrap" --describe --topic "$name" |
        sed -n 's/.*PartitionCount: *\([0-9]*\).*/\1/p' | head -1)
    if [[ $have == "$partitions" ]]; then
        say "topic '$name' already exists with $partitions partition(s)"
    else
        say "warning: topic '$name' already exists with ${have:-an unknown number of} partition(s), not $partitions"
    fi
}

usage() {
    sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
restart)
    cmd_stop
    cmd_start
    ;;
status) cmd_status ;;
create-topic)
    shift
    cmd_create_topic "$@"
    ;;
*) usage ;;
esac
