#!/usr/bin/env bash
# Load benchmark (not a test): GET /v1/accounts/{id}/balance over loopback with wrk, beside a
# trivial axum handler (api/examples/trivial_http.rs, same runtime) measured in the same run.
# Figures and their reading: docs/performance.md. Needs wrk (apt-get install -y wrk).
#
#   scripts/bench-api.sh                       # 15 s each, 2 threads, 64 connections
#   BENCH_DURATION=30s BENCH_CONNECTIONS=128 scripts/bench-api.sh
#   BENCH_RUST_LOG=info scripts/bench-api.sh   # with the per-request log line (to a file)
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION="${BENCH_DURATION:-15s}"
THREADS="${BENCH_THREADS:-2}"
CONNECTIONS="${BENCH_CONNECTIONS:-64}"
ACCOUNTS="${BENCH_ACCOUNTS:-100}"
SERVE_LOG_LEVEL="${BENCH_RUST_LOG:-warn}"

command -v wrk >/dev/null || { echo "bench-api: wrk not found (apt-get install -y wrk)" >&2; exit 2; }
cargo build --release --bin dcu --example trivial_http

DATA="$(mktemp -d)"
TOKEN="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT="$(free_port)"
TRIVIAL_PORT="$(free_port)"
SERVER=""
TRIVIAL=""

cleanup() {
    for pid in "$SERVER" "$TRIVIAL"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$DATA"
}
trap cleanup EXIT

wait_up() {
    for _ in $(seq 100); do
        curl -s -o /dev/null "$1" && return 0
        sleep 0.1
    done
    echo "bench-api: $1 did not come up" >&2
    exit 1
}

DCU_ADMIN_TOKEN="$TOKEN" RUST_LOG="$SERVE_LOG_LEVEL" \
    "${CARGO_TARGET_DIR:-target}"/release/dcu serve --data "$DATA/log" --listen "127.0.0.1:$PORT" 2>"$DATA/serve.log" &
SERVER=$!
"${CARGO_TARGET_DIR:-target}"/release/examples/trivial_http "127.0.0.1:$TRIVIAL_PORT" 2>/dev/null &
TRIVIAL=$!
BASE="http://127.0.0.1:$PORT"
wait_up "$BASE/healthz"
wait_up "http://127.0.0.1:$TRIVIAL_PORT/"

# Seed: accounts with a plan (and an extension pack on every other one) and a few usage records.
echo "seeding $ACCOUNTS accounts..."
auth=(-H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json')
plans=(trial basic advanced)
for i in $(seq 0 $((ACCOUNTS - 1))); do
    id="bench-$i"
    curl -sf -o /dev/null -X POST "$BASE/v1/accounts" "${auth[@]}" -d "{\"id\":\"$id\",\"edu\":true}"
    curl -sf -o /dev/null -X POST "$BASE/v1/accounts/$id/orders" "${auth[@]}" \
        -d "{\"order\":\"o-$i\",\"plan\":\"${plans[$((i % 3))]}\"}"
    [ $((i % 2)) -eq 0 ] && curl -sf -o /dev/null -X POST "$BASE/v1/accounts/$id/orders" "${auth[@]}" \
        -d "{\"order\":\"x-$i\",\"plan\":\"extension\"}"
    for r in 1 2 3; do
        curl -sf -o /dev/null -X POST "$BASE/v1/accounts/$id/usage" "${auth[@]}" \
            -d "{\"record\":\"r-$i-$r\",\"model\":\"dc100-40g\",\"cards\":1,\"seconds\":$((60 * r))}"
    done
done
curl -sf "$BASE/v1/accounts/bench-0/balance" -H "Authorization: Bearer $TOKEN"
echo

# wrk spreads requests over the seeded accounts.
LUA="$DATA/balance.lua"
cat >"$LUA" <<LUA
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", "/v1/accounts/bench-" .. (n % $ACCOUNTS) .. "/balance")
end
LUA

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(date -u +%FT%TZ)"
echo "== warm-up"
wrk -t"$THREADS" -c"$CONNECTIONS" -d3s "http://127.0.0.1:$TRIVIAL_PORT/" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d3s -H "Authorization: Bearer $TOKEN" -s "$LUA" "$BASE" >/dev/null
echo "== trivial handler: GET / (wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$TRIVIAL_PORT/" | tee "$DATA/trivial.txt"
echo "== balance: GET /v1/accounts/{id}/balance (wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency -H "Authorization: Bearer $TOKEN" -s "$LUA" "$BASE" | tee "$DATA/balance.txt"

rps() { awk '/^Requests\/sec/ {print $2}' "$1"; }
echo "== ratio balance/trivial: $(python3 -c "print(round($(rps "$DATA/balance.txt") / $(rps "$DATA/trivial.txt"), 3))")"
if grep -q 'Non-2xx' "$DATA/balance.txt"; then
    echo "bench-api: some balance requests were not 2xx" >&2
    exit 1
fi
