#!/usr/bin/env bash
# Starts / stops a local ClickHouse server (HTTP on 127.0.0.1:8123) for the
# test suite. Meant to run as root on a fresh Debian machine.
#
#   clickhouse-server.sh start   install if missing, start, wait until ready
#   clickhouse-server.sh stop    stop the server `start` started, if any
#
# RUN_DIR (default /tmp/entitlements-test) holds the pid file and server log.
# A server that already answers on 8123 is reused and never stopped here.
set -euo pipefail

RUN_DIR="${RUN_DIR:-/tmp/entitlements-test}"
PID_FILE="$RUN_DIR/clickhouse-server.pid"
LOG_FILE="$RUN_DIR/clickhouse-server.log"
CONFIG=/etc/clickhouse-server/config.xml
PING_URL=http://127.0.0.1:8123/ping
READY_TIMEOUT_S=60
# The package installs into /usr/sbin, which sudo/cron PATHs may lack.
PATH="$PATH:/usr/sbin:/sbin"

answers() { curl -fsS --max-time 2 "$PING_URL" >/dev/null 2>&1; }

install_server() {
    echo "clickhouse-server not found; installing it with apt-get" >&2
    # Keep the package's postinst from starting the system service: that
    # fails in containers and would leave a server `stop` doesn't own.
    # An existing policy (Docker images ship one) is left as it is.
    local policy=/usr/sbin/policy-rc.d added_policy=""
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    local rc=0
    { apt-get update -q && apt-get install -y -q clickhouse-server clickhouse-client; } || rc=$?
    if [[ -n $added_policy ]]; then rm -f "$policy"; fi
    return "$rc"
}

start() {
    mkdir -p "$RUN_DIR"
    if answers; then
        echo "reusing the ClickHouse server already answering on 8123" >&2
        return 0
    fi
    if ! command -v clickhouse-server >/dev/null; then
        install_server
        # In case the install started a service after all.
        if answers; then
            echo "reusing the ClickHouse server started by the package" >&2
            return 0
        fi
    fi

    # Run as the package's `clickhouse` user: root works for 18.16 but leaves
    # root-owned files behind that break the system service, and newer
    # releases refuse to run as a user other than the data directory's owner.
    # setpriv execs (unlike su/runuser), so $! is the server's own pid.
    local run_as=()
    if [[ $(id -u) == 0 ]] && id clickhouse >/dev/null 2>&1; then
        mkdir -p /var/lib/clickhouse /var/log/clickhouse-server
        chown -R clickhouse:clickhouse /var/lib/clickhouse /var/log/clickhouse-server
        run_as=(setpriv --reuid=clickhouse --regid=clickhouse --init-groups)
    fi
    # cd / so the server never holds the caller's directory; stdio goes to
    # the log so the caller's pipes close when it returns.
    (cd / && exec "${run_as[@]}" clickhouse-server --config-file="$CONFIG") \
        </dev/null >"$LOG_FILE" 2>&1 &
    local pid=$!
    echo "$pid" >"$PID_FILE"

    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until answers; do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "clickhouse-server exited during startup; log $LOG_FILE:" >&2
            tail -n 30 "$LOG_FILE" /var/log/clickhouse-server/clickhouse-server.err.log >&2 || true
            rm -f "$PID_FILE"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "clickhouse-server not ready after ${READY_TIMEOUT_S}s; stopping it" >&2
            stop
            return 1
        fi
        sleep 0.5
    done
    echo "clickhouse-server ready (pid $pid)" >&2
}

stop() {
    # No pid file: `start` reused a server (or never ran); leave it alone.
    [[ -f $PID_FILE ]] || return 0
    local pid
    pid=$(<"$PID_FILE")
    # Guard against a recycled pid: only signal a clickhouse process.
    if [[ $pid =~ ^[0-9]+$ ]] && grep -qs clickhouse "/proc/$pid/cmdline"; then
        kill -TERM "$pid" 2>/dev/null || true
        # A clean shutdown takes a few seconds; don't wait forever.
        for _ in $(seq 60); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.5
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$PID_FILE"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *)
        echo "usage: $0 start|stop" >&2
        exit 2
        ;;
esac
