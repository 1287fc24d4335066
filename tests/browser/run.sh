#!/usr/bin/env bash
# Browser tests of the demo purchase page (GET /), in headless Chromium.
#
#   tests/browser/run.sh          (tests/run calls it after `cargo test`)
#
# Meant for a fresh Debian machine, run as root, with Node 20+ and npm. It:
#   1. installs Debian's `chromium` with apt-get if /usr/bin/chromium is missing;
#   2. installs the pinned playwright-core from tests/browser/package-lock.json
#      into target/browser-test/ (`npm ci`; playwright-core never downloads a
#      browser: the tests drive /usr/bin/chromium);
#   3. builds the `entitlements` binary (a no-op when it is up to date), starts
#      it on a free port with a throw-away config and store, waits for /readyz;
#   4. runs tests/browser/purchase.test.mjs with node's test runner;
#   5. always stops the server and removes its temporary files (the logs are
#      kept and their path printed when something failed).
# Screenshots land in target/screenshots/.
#
# Environment knobs (all optional):
#   ENTITLEMENTS_BIN     use this binary instead of building target/debug/entitlements
#   BROWSER_TEST_KEEP=1  keep the temporary directory (config, store, logs)
set -euo pipefail

cd "$(dirname "$0")/../.."
ROOT=$PWD

CHROMIUM=/usr/bin/chromium
DEPS_DIR=$ROOT/target/browser-test
SCREENSHOT_DIR=$ROOT/target/screenshots
READY_TIMEOUT_S=30
# A graceful stop ends the open event streams first; actix itself would wait
# up to 30 s for open connections.
STOP_TIMEOUT_S=45
TEST_TIMEOUT_S=180

say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'tests/browser/run.sh: %s\n' "$*" >&2; exit 1; }

# --- prerequisites ----------------------------------------------------------
command -v node >/dev/null || die "node not found: install Node.js 20 or newer"
command -v npm >/dev/null || die "npm not found: install npm"
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 20)) || die "Node.js 20 or newer is needed (found $(node --version))"
command -v curl >/dev/null || die "curl not found"

if [[ ! -x $CHROMIUM ]]; then
    [[ $(id -u) == 0 ]] || die "missing $CHROMIUM; install it (apt-get install chromium) or run as root"
    command -v apt-get >/dev/null || die "missing $CHROMIUM, and there is no apt-get to install it"
    say "installing chromium with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    [[ -x $CHROMIUM ]] || die "apt-get installed chromium, but $CHROMIUM is still missing"
fi
echo "using $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")" >&2

# --- playwright-core, pinned by the committed lock file ---------------------
# Reinstalled only when package.json or the lock file changed since the last
# install (the stamp holds their checksum).
deps_stamp=$(cat tests/browser/package.json tests/browser/package-lock.json 2>/dev/null | sha256sum | cut -d' ' -f1)
if [[ -f $DEPS_DIR/.stamp && $(cat "$DEPS_DIR/.stamp") == "$deps_stamp" &&
    -f $DEPS_DIR/node_modules/playwright-core/package.json ]]; then
    say "using playwright-core in ${DEPS_DIR#"$ROOT"/}"
else
    say "installing playwright-core into ${DEPS_DIR#"$ROOT"/}"
    rm -rf "$DEPS_DIR"
    mkdir -p "$DEPS_DIR"
    cp tests/browser/package.json "$DEPS_DIR/"
    if [[ -f tests/browser/package-lock.json ]]; then
        cp tests/browser/package-lock.json "$DEPS_DIR/"
        npm_cmd=(ci)
    else
        npm_cmd=(install)
    fi
    # --ignore-scripts: nothing may download a browser (or anything else).
    (cd "$DEPS_DIR" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 \
        npm "${npm_cmd[@]}" --ignore-scripts --no-audit --no-fund --loglevel=error)
    echo "$deps_stamp" >"$DEPS_DIR/.stamp"
fi
pw_version=$(node -p "require('$DEPS_DIR/node_modules/playwright-core/package.json').version")
echo "playwright-core $pw_version" >&2

# --- the service binary -----------------------------------------------------
if [[ -n ${ENTITLEMENTS_BIN:-} ]]; then
    BIN=$ENTITLEMENTS_BIN
    [[ -x $BIN ]] || die "ENTITLEMENTS_BIN=$BIN is not an executable"
else
    command -v cargo >/dev/null || die "cargo not found (or set ENTITLEMENTS_BIN)"
    say "cargo build --bin entitlements"
    cargo build --quiet --bin entitlements
    BIN=$ROOT/target/debug/entitlements
fi

# --- cleanup, whatever happens from here on ---------------------------------
RUN_TMP=$(mktemp -d "${TMPDIR:-/tmp}/entitlements-browser.XXXXXX")
SERVER_PID=""

stop_server() {
    [[ -n $SERVER_PID ]] || return 0
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        local started=$SECONDS
        for _ in $(seq $((STOP_TIMEOUT_S * 10))); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$SERVER_PID" 2>/dev/null; then
            echo "server (pid $SERVER_PID) did not stop on SIGTERM within ${STOP_TIMEOUT_S}s; killing it" >&2
            kill -KILL "$SERVER_PID" 2>/dev/null || true
        elif ((SECONDS - started > 5)); then
            echo "note: the server took $((SECONDS - started))s to stop on SIGTERM" \
                "(were open event streams holding its graceful shutdown?)" >&2
        fi
    fi
    SERVER_EXIT=0
    wait "$SERVER_PID" 2>/dev/null || SERVER_EXIT=$?
    SERVER_PID=""
}

cleanup() {
    local status=$?
    set +e
    if [[ -n $SERVER_PID ]]; then
        say "stopping the server (pid $SERVER_PID)"
        stop_server
    fi
    if ((status == 0)) && [[ -z ${BROWSER_TEST_KEEP:-} ]]; then
        rm -rf "$RUN_TMP"
    else
        printf '\ntests/browser/run.sh: exit %d; server config, store and logs kept in %s\n' "$status" "$RUN_TMP" >&2
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- the server -------------------------------------------------------------
free_port() {
    node -e 'const s = require("net").createServer();
s.listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); });'
}

# Keys from the environment would override the test config.
while IFS= read -r var; do unset "$var"; done < <(compgen -e | grep '^ENTITLEMENTS__' || true)

start_server() {
    local port=$1 try=$2
    local dir=$RUN_TMP/server-$try
    mkdir -p "$dir"
    cat >"$dir/config.toml" <<EOF
[server]
bind = "127.0.0.1:$port"
environment = "development"

[store]
backend = "embedded"
path = "$dir/actions.db"

[stripe]
# Unreachable on purpose: payment-intents answers 502 and the page's
# development fallback (simulate-success) is what gets exercised.
api_base = "http://127.0.0.1:9"
reconcile_interval_secs = 0

[logging]
format = "json"
EOF
    SERVER_LOG=$dir/server.log
    "$BIN" --config "$dir/config.toml" </dev/null >"$SERVER_LOG" 2>&1 &
    SERVER_PID=$!
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    until curl -fsS --max-time 2 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then
            wait "$SERVER_PID" 2>/dev/null || true
            SERVER_PID=""
            echo "the server exited during start-up; its log:" >&2
            tail -n 20 "$SERVER_LOG" >&2
            return 1
        fi
        if ((SECONDS >= deadline)); then
            echo "the server was not ready after ${READY_TIMEOUT_S}s; its log:" >&2
            tail -n 20 "$SERVER_LOG" >&2
            stop_server
            return 1
        fi
        sleep 0.1
    done
    BASE_URL=http://127.0.0.1:$port
}

say "starting the server"
started=""
# The free port can be taken between probing and binding: try a few.
for try in 1 2 3; do
    if start_server "$(free_port)" "$try"; then
        started=1
        break
    fi
done
[[ -n $started ]] || die "could not start the server"
echo "server ready at $BASE_URL (pid $SERVER_PID, log $SERVER_LOG)" >&2

# --- the tests --------------------------------------------------------------
mkdir -p "$SCREENSHOT_DIR"
rm -f "$SCREENSHOT_DIR"/purchase-*.png "$SCREENSHOT_DIR"/failure-*.png

say "node --test tests/browser/purchase.test.mjs"
test_status=0
BASE_URL=$BASE_URL \
    CHROMIUM_PATH=$CHROMIUM \
    PLAYWRIGHT_CORE_DIR=$DEPS_DIR/node_modules/playwright-core \
    SCREENSHOT_DIR=$SCREENSHOT_DIR \
    BROWSER_TMP=$RUN_TMP \
    timeout --kill-after=10 "$TEST_TIMEOUT_S" \
    node --test --test-reporter=spec --test-concurrency=1 tests/browser/purchase.test.mjs ||
    test_status=$?
if ((test_status == 124 || test_status == 137)); then
    echo "the browser tests did not finish within ${TEST_TIMEOUT_S}s" >&2
fi

# The server must have survived the tests and must stop cleanly on SIGTERM.
if kill -0 "$SERVER_PID" 2>/dev/null; then
    say "stopping the server (pid $SERVER_PID)"
    stop_server
    if ((SERVER_EXIT != 0)); then
        echo "the server exited with status $SERVER_EXIT on SIGTERM (expected 0); its log:" >&2
        tail -n 30 "$SERVER_LOG" >&2
        ((test_status != 0)) || test_status=1
    fi
else
    echo "the server died during the browser tests; its log:" >&2
    tail -n 30 "$SERVER_LOG" >&2
    SERVER_PID=""
    ((test_status != 0)) || test_status=1
fi
say "screenshots: ${SCREENSHOT_DIR#"$ROOT"/}/"
ls -1 "$SCREENSHOT_DIR"/*.png 2>/dev/null | sed "s|^$ROOT/|  |" >&2 || true
exit "$test_status"
