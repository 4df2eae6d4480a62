#!/usr/bin/env bash
# The SSE inspection bench: what settling a streamed route from its final usage event costs.
#
# One gateway (real redis-server), one fake model server (benches/src/bin/model-server.rs),
# two routes to the same stream, measured alternately in the same run:
#
#   fixed     GET /fixed/stream    kind = "fixed": the body passes through uninspected
#   metered   GET /metered/stream  kind = "from_response": every chunk goes through the SSE
#                                  reader and the hold is settled from the usage event
#
# Each response is an OpenAI-style stream of CHUNKS content events (one HTTP chunk each),
# then the usage event and `data: [DONE]`.
#
#   bash benches/run-sse.sh
#
# Knobs (environment): CONNS="32" DURATION_S=10 WARMUP_S=2 ROUNDS=3 CHUNKS=20 THREADS=1
# PIN=1 (gateway on CPU 0, wrk + model server + Redis on CPU 1) BUILD=1 KEEP_LOGS=0
# CARGO_TARGET_DIR (default target-bench/ in the checkout).
#
# Needs: cargo, wrk, redis-server, redis-cli, curl, taskset, sha256sum.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONNS="${CONNS:-32}"
DURATION_S="${DURATION_S:-10}"
WARMUP_S="${WARMUP_S:-2}"
ROUNDS="${ROUNDS:-3}"
CHUNKS="${CHUNKS:-20}"
THREADS="${THREADS:-1}"
PIN="${PIN:-1}"
BUILD="${BUILD:-1}"
KEEP_LOGS="${KEEP_LOGS:-0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target-bench}"
BIN="$CARGO_TARGET_DIR/release"
KEY="bench-sse-key"
CUSTOMER="bench"
# Far more than any run burns, below the protocol's MAX_AMOUNT (2^53 - 1).
CREDITS=1000000000000

for tool in wrk redis-server redis-cli curl taskset sha256sum; do
    command -v "$tool" >/dev/null || { echo "run-sse.sh: $tool is missing" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/creditgate-sse.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [[ "$KEEP_LOGS" == 1 ]]; then echo "logs kept in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ "$PIN" == 1 && "$(nproc)" -ge 2 ]]; then
    ON_SUT=(taskset -c 0)
    ON_LOAD=(taskset -c 1)
else
    ON_SUT=()
    ON_LOAD=()
fi

free_port() {
    local port
    while true; do
        port=$((20000 + RANDOM % 30000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
    done
}

start() {
    local name="$1"
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
}

wait_http_200() {
    local url="$1" i
    for i in $(seq 1 200); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $KEY" "$url" || true)" == 200 ]] && return 0
        sleep 0.05
    done
    echo "run-sse.sh: $url never answered 200" >&2
    tail -n 20 "$WORK"/*.log >&2
    exit 1
}

if [[ "$BUILD" == 1 ]]; then
    (cd "$ROOT" && cargo build --release -p creditgate-gateway -p creditgate-benches) >&2
fi

MODEL_PORT="$(free_port)"
REDIS_PORT="$(free_port)"
GW_PORT="$(free_port)"
GW_ADMIN="$(free_port)"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"
KEY_SHA256="$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"
cat >"$WORK/sse.toml" <<EOF
[defaults]
mode = "enforce"
failure_policy = "fail_closed"
# The bench measures body inspection, not store timeouts: on a shared machine a 50 ms
# timeout turns scheduling stalls into 503s that would skew one arm.
store_timeout_ms = 1000

[credit_types.api]
scale = 0

[upstreams.default]
address = "127.0.0.1:$MODEL_PORT"

[features.fixed]
credit_type = "api"
cost = { kind = "fixed", amount = 100 }

[features.metered]
credit_type = "api"
cost = { kind = "from_response", estimate = 300, max = 1000000, usage = { "usage.prompt_tokens" = 1, "usage.completion_tokens" = 3 } }

[[routes]]
method = "GET"
path = "/fixed/stream"
feature = "fixed"

[[routes]]
method = "GET"
path = "/metered/stream"
feature = "metered"

[[api_keys]]
customer = "$CUSTOMER"
sha256 = "$KEY_SHA256"
EOF

start redis "${ON_LOAD[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no
for _ in $(seq 1 200); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
"$BIN/seed-grant" grant --redis "$REDIS_URL" --customer "$CUSTOMER" --amount "$CREDITS" >&2
start model "${ON_LOAD[@]}" "$BIN/model-server" --listen-port "$MODEL_PORT"
export RUST_LOG=warn
start gateway "${ON_SUT[@]}" "$BIN/creditgate-gateway" run --config "$WORK/sse.toml" \
    --listen "127.0.0.1:$GW_PORT" --admin-listen "127.0.0.1:$GW_ADMIN" \
    --redis "$REDIS_URL" --threads "$THREADS" --shutdown-grace-s 0 --shutdown-timeout-s 1
wait_http_200 "http://127.0.0.1:$GW_ADMIN/readyz"
QUERY="chunks=$CHUNKS&prompt=100&completion=50"
wait_http_200 "http://127.0.0.1:$GW_PORT/fixed/stream?$QUERY"

# The metered route must settle from the stream: 100 × 1 + 50 × 3 = 250 per request.
before="$("$BIN/seed-grant" balance --redis "$REDIS_URL" --customer "$CUSTOMER" | cut -d' ' -f1)"
curl -s -o /dev/null -H "Authorization: Bearer $KEY" "http://127.0.0.1:$GW_PORT/metered/stream?$QUERY"
sleep 0.3
after="$("$BIN/seed-grant" balance --redis "$REDIS_URL" --customer "$CUSTOMER" | cut -d' ' -f1)"
if [[ $((before - after)) != 250 ]]; then
    echo "run-sse.sh: the metered route burned $((before - after)), expected 250" >&2
    exit 1
fi

to_ms() {
    awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.3f", n }'
}

run_wrk() {
    local url="$1" seconds="$2" out="$3"
    "${ON_LOAD[@]}" wrk -t1 -c"$CONNS" -d"${seconds}s" --latency \
        -H "Authorization: Bearer $KEY" "$url" >"$out"
    local rps p99 non2xx
    rps="$(awk '/^Requests\/sec:/ { print $2 }' "$out")"
    p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")"
    echo "$rps $p99 ${non2xx:-0}"
}

RAW="$WORK/raw.txt"
: >"$RAW"
for round in $(seq 1 "$ROUNDS"); do
    for arm in fixed metered; do
        url="http://127.0.0.1:$GW_PORT/$arm/stream?$QUERY"
        run_wrk "$url" "$WARMUP_S" "$WORK/warmup.txt" >/dev/null
        row="$(run_wrk "$url" "$DURATION_S" "$WORK/wrk-$arm-$round.txt")"
        echo "$arm $round $row" >>"$RAW"
        echo "  round $round $arm: $row (req/s p99_ms non-2xx)" >&2
    done
done

median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
metric() {
    curl -s "http://127.0.0.1:$GW_ADMIN/metrics" | awk -v m="$1" 'index($0, m) == 1 { s += $NF } END { print s + 0 }'
}

echo
echo "## creditgate SSE inspection bench, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "- machine: $(nproc) CPUs; load average $(cut -d' ' -f1-3 /proc/loadavg) after the run"
echo "- wrk -t1 -c$CONNS -d${DURATION_S}s --latency after ${WARMUP_S}s warm-up, $ROUNDS alternating rounds (medians); gateway --threads $THREADS; PIN=$PIN"
echo "- each response: $CHUNKS content events + usage event + [DONE], chunked, about $(curl -s -H "Authorization: Bearer $KEY" "http://127.0.0.1:$GW_PORT/fixed/stream?$QUERY" | wc -c) bytes"
echo
echo "| route | req/s | p99 ms | non-2xx |"
echo "|---|---:|---:|---:|"
for arm in fixed metered; do
    rps="$(awk -v a="$arm" '$1 == a { print $3 }' "$RAW" | median)"
    p99="$(awk -v a="$arm" '$1 == a { print $4 }' "$RAW" | median)"
    bad="$(awk -v a="$arm" '$1 == a { s += $5 } END { print s + 0 }' "$RAW")"
    printf '| %s | %.0f | %.3f | %d |\n' "$arm" "$rps" "$p99" "$bad"
done
fixed="$(awk '$1 == "fixed" { print $3 }' "$RAW" | median)"
metered="$(awk '$1 == "metered" { print $3 }' "$RAW" | median)"
echo
awk -v f="$fixed" -v m="$metered" 'BEGIN { printf "- throughput of the metered route vs the fixed one: %.1f%% (loss %.1f%%)\n", 100 * m / f, 100 * (1 - m / f) }'
echo "- creditgate_response_costs_total{outcome=\"sse\"}: $(metric 'creditgate_response_costs_total{outcome="sse"')"
