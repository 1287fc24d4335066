#!/usr/bin/env bash
# Schemathesis (every check) against the running service's /openapi.json.
#
#   tests/conformance/run.sh     run by tests/run, which provides:
#     LOCALSTRIPE_URL            the Stripe emulator the service talks to
#     SCHEMATHESIS               the schemathesis CLI (from tests/run's venv)
#     ENTITLEMENTS_BIN           the service binary (default target/debug/entitlements)
#     CONFORMANCE_EXAMPLES       examples per operation and phase (default 200)
#
# It starts the service on the embedded store in a temporary directory,
# points it at localstripe, and runs schemathesis with a token of one org;
# tests/conformance/hooks.py signs the webhooks schemathesis means to be
# valid. It fails if schemathesis finds anything, or if no signed webhook
# was accepted (the run would then not have tested the webhook's real path).
set -euo pipefail

cd "$(dirname "$0")/../.."
: "${LOCALSTRIPE_URL:?set by tests/run}"
: "${SCHEMATHESIS:?set by tests/run}"
BIN=${ENTITLEMENTS_BIN:-target/debug/entitlements}
EXAMPLES=${CONFORMANCE_EXAMPLES:-200}
WEBHOOK_SECRET=whsec_conformance

work=$(mktemp -d "${TMPDIR:-/tmp}/entitlements-conformance.XXXXXX")
service_pid=""
stop_service() {
    if [[ -n $service_pid ]] && kill -0 "$service_pid" 2>/dev/null; then
        kill -TERM "$service_pid"
        wait "$service_pid" 2>/dev/null || true
    fi
}
trap 'status=$?; stop_service; if ((status == 0)); then rm -rf "$work"; else echo "conformance: logs in $work" >&2; fi; exit $status' EXIT

# Built now, so that a stale binary from an earlier build is never tested.
[[ -n ${ENTITLEMENTS_BIN:-} ]] || cargo build --quiet --bin entitlements
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$work/config.toml" <<EOF
[server]
bind = "127.0.0.1:$port"
[auth]
jwt_secret = "conformance-jwt-secret"
[stripe]
secret_key = "sk_test_conformance"
publishable_key = "pk_test_conformance"
webhook_secrets = ["$WEBHOOK_SECRET"]
api_base = "$LOCALSTRIPE_URL"
reconcile_interval_secs = 0
[store]
path = "$work/actions.db"
[[products]]
sku = "compliance-pack"
name = "Compliance Pack"
amount = 99900
currency = "usd"
[[products]]
sku = "audit-pack"
name = "Audit Pack"
amount = 25000
currency = "usd"
EOF

"$BIN" --config "$work/config.toml" >"$work/service.log" 2>&1 &
service_pid=$!
base=http://127.0.0.1:$port
for _ in $(seq 150); do
    curl -fsS --max-time 1 "$base/readyz" >/dev/null 2>&1 && break
    kill -0 "$service_pid" 2>/dev/null || { tail -n 20 "$work/service.log" >&2; exit 1; }
    sleep 0.2
done
curl -fsS --max-time 1 "$base/readyz" >/dev/null
token=$("$BIN" --config "$work/config.toml" token --org conformance)

status=0
# From the temporary directory: schemathesis keeps a cache (.schemathesis/)
# where it runs, which does not belong in the tree.
here=$PWD
(cd "$work" &&
    CONFORMANCE_WEBHOOK_SECRET=$WEBHOOK_SECRET \
        SCHEMATHESIS_HOOKS=hooks PYTHONPATH=$here/tests/conformance \
        "$SCHEMATHESIS" --config-file "$here/tests/conformance/schemathesis.toml" \
        run "$base/openapi.json" --checks all --max-examples "$EXAMPLES" \
        -H "Authorization: Bearer $token") || status=$?

accepted=$(curl -fsS "$base/metrics" |
    awk '/^entitlements_webhooks_total\{outcome="(recorded|ignored|duplicate)"\}/ { n += $2 } END { print n + 0 }')
echo "conformance: $accepted signed webhooks accepted by the service" >&2
if ((status == 0 && accepted == 0)); then
    echo "conformance: no signed webhook was accepted; the signing hook did not work" >&2
    status=1
fi
exit "$status"
