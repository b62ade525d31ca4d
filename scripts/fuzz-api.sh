#!/usr/bin/env bash
# Fuzzes `dcu serve` from its own OpenAPI document with schemathesis: builds the release
# binary, starts a server on a free loopback port with a throwaway data directory, runs
# schemathesis (check: no 5xx), then checks the server is still alive and that /metrics
# counted no 5xx. Exits non-zero on any failure. Not run by CI (CI has no schemathesis).
#
#   pip install schemathesis        # once
#   scripts/fuzz-api.sh             # FUZZ_EXAMPLES=100 per operation by default
#   FUZZ_EXAMPLES=500 FUZZ_SEED=1 scripts/fuzz-api.sh
#   FUZZ_CHECKS=all scripts/fuzz-api.sh   # also schema/status conformance (informative)
set -euo pipefail

cd "$(dirname "$0")/.."
EXAMPLES="${FUZZ_EXAMPLES:-100}"
CHECKS="${FUZZ_CHECKS:-not_a_server_error}"

command -v st >/dev/null || { echo "fuzz-api: schemathesis not found (pip install schemathesis)" >&2; exit 2; }
cargo build --release --bin dcu

DATA="$(mktemp -d)"
LOG="$DATA/serve.log"
TOKEN="fuzz-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
PORT="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
BASE="http://127.0.0.1:$PORT"
SERVER=""

cleanup() {
    if [ -n "$SERVER" ] && kill -0 "$SERVER" 2>/dev/null; then
        kill -TERM "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
    fi
    rm -rf "$DATA"
}
trap cleanup EXIT

DCU_ADMIN_TOKEN="$TOKEN" RUST_LOG="${RUST_LOG:-warn}" \
    "${CARGO_TARGET_DIR:-target}"/release/dcu serve --data "$DATA" --listen "127.0.0.1:$PORT" 2>"$LOG" &
SERVER=$!
for _ in $(seq 100); do
    curl -sf "$BASE/healthz" >/dev/null 2>&1 && break
    kill -0 "$SERVER" 2>/dev/null || { echo "fuzz-api: the server did not start:" >&2; cat "$LOG" >&2; exit 1; }
    sleep 0.1
done

# A few accounts with short ids (the ones generators try first), so that some generated
# requests get past 404 into the account's state.
auth=(-H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json')
for id in 0 a A 00; do
    curl -sf -o /dev/null -X POST "$BASE/v1/accounts" "${auth[@]}" -d "{\"id\":\"$id\",\"edu\":true}"
    curl -sf -o /dev/null -X POST "$BASE/v1/accounts/$id/orders" "${auth[@]}" -d '{"order":"seed-'"$id"'","plan":"basic"}'
done

status=0
seed=()
[ -n "${FUZZ_SEED:-}" ] && seed=(--seed "$FUZZ_SEED")
# From the throwaway directory: schemathesis and hypothesis keep their caches in the cwd.
(cd "$DATA" && st run "$BASE/openapi.json" \
    --header "Authorization: Bearer $TOKEN" \
    --checks "$CHECKS" \
    --max-examples "$EXAMPLES" \
    --workers 2 \
    --generation-database none \
    "${seed[@]}") || status=$?

if ! kill -0 "$SERVER" 2>/dev/null; then
    echo "fuzz-api: the server died during the run:" >&2
    cat "$LOG" >&2
    exit 1
fi
fives="$(curl -sf "$BASE/metrics" | grep '^dcu_http_requests_total{.*status="5' || true)"
if [ -n "$fives" ]; then
    echo "fuzz-api: the server answered 5xx:" >&2
    echo "$fives" >&2
    status=1
fi
if [ "$status" -ne 0 ]; then
    echo "fuzz-api: FAILED (server log: errors below)" >&2
    grep -iE 'error|panic' "$LOG" | tail -n 20 >&2 || true
    exit "$status"
fi
echo "fuzz-api: no 5xx, no crash ($EXAMPLES examples per operation, checks: $CHECKS)"
