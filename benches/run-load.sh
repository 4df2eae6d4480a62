#!/usr/bin/env bash
# The end-to-end load bench: one run, four arms, one upstream, all on loopback.
#
#   direct           wrk -> bench-upstream
#   bare-pingora     wrk -> bare-proxy (benches/src/bin/bare-proxy.rs) -> bench-upstream
#   gateway-redis    wrk -> creditgate-gateway --redis (real redis-server) -> bench-upstream
#   gateway-embedded wrk -> creditgate-gateway (embedded in-process store) -> bench-upstream
#
# Every gateway request hits `GET /bench`, a fixed-cost route (1 credit, mode enforce) of a
# customer with 10^12 credits, so every request is reserved, proxied and settled.
#
# Usage (from anywhere; results go to stdout, logs to a temporary folder it prints):
#
#   bash benches/run-load.sh
#
# Knobs (environment):
#   CONNS="1 32 128"   connection counts to run, each against every arm
#   DURATION_S=10      measured seconds per arm and connection count
#   WARMUP_S=2         unmeasured seconds before each measured run
#   ROUNDS=1           repeat every (connections, arm) this often; the table shows medians
#   THREADS=1          worker threads of the bare proxy and of both gateways (the same)
#   PIN=1              pin the proxy under test to CPU 0, and wrk, the upstream and Redis
#                      to CPU 1 (needs 2 CPUs; PIN=0 lets the scheduler place everything)
#   NICE=-10           nice level of everything the bench starts (root only; 0 = leave
#                      as is): keeps builds running beside the bench off its cores
#   BUILD=1            build the release binaries first (BUILD=0 reuses them)
#   CARGO_TARGET_DIR   where the release binaries are built (default target-bench/ in the checkout)
#   KEEP_LOGS=0        keep the temporary folder with every log and wrk output
#
# Needs: cargo, wrk, redis-server, redis-cli, curl, taskset (apt-get install -y wrk
# redis-server redis-tools curl util-linux). It starts everything on free loopback ports
# and kills everything it started when it exits, however it exits.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONNS="${CONNS:-1 32 128}"
DURATION_S="${DURATION_S:-10}"
WARMUP_S="${WARMUP_S:-2}"
ROUNDS="${ROUNDS:-1}"
THREADS="${THREADS:-1}"
PIN="${PIN:-1}"
NICE="${NICE:--10}"
BUILD="${BUILD:-1}"
KEEP_LOGS="${KEEP_LOGS:-0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target-bench}"
BIN="$CARGO_TARGET_DIR/release"

# The bench key and its customer; the config holds only the key's SHA-256.
BENCH_KEY="bench-load-key"
BENCH_CUSTOMER="bench"
# Credits of the bench customer: far more than any run can burn (about 10^5 requests per
# second for minutes is below 10^8), and below the protocol's MAX_AMOUNT (2^53 - 1).
BENCH_CREDITS=1000000000000

for tool in wrk redis-server redis-cli curl taskset sha256sum; do
    command -v "$tool" >/dev/null || { echo "run-load.sh: $tool is missing" >&2; exit 1; }
done

WORK="$(mktemp -d /tmp/creditgate-load.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [[ "$KEEP_LOGS" == 1 ]]; then
        echo "logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ "$PIN" == 1 && "$(nproc)" -lt 2 ]]; then
    echo "run-load.sh: PIN=1 needs 2 CPUs; running unpinned" >&2
    PIN=0
fi
# The proxy under test gets CPU 0 to itself; the load generator, the upstream and Redis
# share CPU 1.
if [[ "$PIN" == 1 ]]; then
    ON_SUT=(taskset -c 0)
    ON_LOAD=(taskset -c 1)
else
    ON_SUT=()
    ON_LOAD=()
fi
# A negative nice level needs root; other users run at their own level.
if [[ "$NICE" != 0 && "$(id -u)" == 0 ]]; then
    ON_SUT=(nice -n "$NICE" "${ON_SUT[@]}")
    ON_LOAD=(nice -n "$NICE" "${ON_LOAD[@]}")
else
    NICE=0
fi

# A port nothing listens on, from a random range above the usual ephemeral ones' start.
USED_PORTS=" "
free_port() {
    local port
    while true; do
        port=$((20000 + RANDOM % 30000))
        [[ "$USED_PORTS" == *" $port "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            USED_PORTS+="$port "
            echo "$port"
            return
        fi
    done
}

# Runs a command in the background, remembered for cleanup; output goes to $WORK/NAME.log.
start() {
    local name="$1"
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
}

# Waits up to 10 s for URL to answer 200, with the bench key.
wait_http_200() {
    local url="$1" i
    for i in $(seq 1 200); do
        if [[ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $BENCH_KEY" "$url" || true)" == 200 ]]; then
            return 0
        fi
        sleep 0.05
    done
    echo "run-load.sh: $url never answered 200; logs:" >&2
    tail -n 20 "$WORK"/*.log >&2
    exit 1
}

if [[ "$BUILD" == 1 ]]; then
    echo "building release binaries into $CARGO_TARGET_DIR ..." >&2
    (cd "$ROOT" && cargo build --release -p creditgate-gateway -p creditgate-benches) >&2
fi

UPSTREAM_PORT="$(free_port)"
BARE_PORT="$(free_port)"
REDIS_PORT="$(free_port)"
GW_REDIS_PORT="$(free_port)"
GW_REDIS_ADMIN="$(free_port)"
GW_EMBED_PORT="$(free_port)"
GW_EMBED_ADMIN="$(free_port)"
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/"

KEY_SHA256="$(printf %s "$BENCH_KEY" | sha256sum | cut -d' ' -f1)"
cat >"$WORK/bench.toml" <<EOF
# The load bench's pricing config: one fixed-cost route, enforced, on one upstream.
[defaults]
mode = "enforce"
# A store failure answers 503, which wrk counts as a non-2xx response: failures show up in
# the results instead of being admitted for free.
failure_policy = "fail_closed"
unmatched = "not_found"

[credit_types.api]
scale = 0

[upstreams.default]
address = "127.0.0.1:$UPSTREAM_PORT"

[features.bench]
credit_type = "api"
cost = { kind = "fixed", amount = 1 }

[[routes]]
method = "GET"
path = "/bench"
feature = "bench"

[[api_keys]]
customer = "$BENCH_CUSTOMER"
sha256 = "$KEY_SHA256"
name = "load bench key"

# Only the embedded arm applies this; the Redis arm is granted by seed-grant.
[[embedded_grants]]
grant_id = "load-bench"
customer = "$BENCH_CUSTOMER"
credit_type = "api"
amount = $BENCH_CREDITS
EOF

start redis "${ON_LOAD[@]}" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 \
    --save "" --appendonly no --daemonize no
for _ in $(seq 1 200); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.05
done
redis-cli -p "$REDIS_PORT" ping >/dev/null
"$BIN/seed-grant" grant --redis "$REDIS_URL" --customer "$BENCH_CUSTOMER" --amount "$BENCH_CREDITS" >&2

start upstream "${ON_LOAD[@]}" "$BIN/bench-upstream" --listen "127.0.0.1:$UPSTREAM_PORT"
start bare "${ON_SUT[@]}" "$BIN/bare-proxy" --listen "127.0.0.1:$BARE_PORT" \
    --upstream "127.0.0.1:$UPSTREAM_PORT" --threads "$THREADS"
export RUST_LOG=warn
start gateway-redis "${ON_SUT[@]}" "$BIN/creditgate-gateway" run --config "$WORK/bench.toml" \
    --listen "127.0.0.1:$GW_REDIS_PORT" --admin-listen "127.0.0.1:$GW_REDIS_ADMIN" \
    --redis "$REDIS_URL" --threads "$THREADS" --shutdown-grace-s 0 --shutdown-timeout-s 1
start gateway-embedded "${ON_SUT[@]}" "$BIN/creditgate-gateway" run --config "$WORK/bench.toml" \
    --listen "127.0.0.1:$GW_EMBED_PORT" --admin-listen "127.0.0.1:$GW_EMBED_ADMIN" \
    --threads "$THREADS" --shutdown-grace-s 0 --shutdown-timeout-s 1

wait_http_200 "http://127.0.0.1:$UPSTREAM_PORT/bench"
wait_http_200 "http://127.0.0.1:$BARE_PORT/bench"
wait_http_200 "http://127.0.0.1:$GW_REDIS_ADMIN/readyz"
wait_http_200 "http://127.0.0.1:$GW_EMBED_ADMIN/readyz"

# Each gateway charges the bench request: a 200 with `x-credits-charged: 1`.
for port in "$GW_REDIS_PORT" "$GW_EMBED_PORT"; do
    headers="$(curl -s -D - -o /dev/null -H "Authorization: Bearer $BENCH_KEY" "http://127.0.0.1:$port/bench")"
    if ! grep -q '^HTTP/1.1 200' <<<"$headers" || ! grep -qi '^x-credits-charged: 1' <<<"$headers"; then
        echo "run-load.sh: the gateway on port $port does not charge the bench route:" >&2
        echo "$headers" >&2
        exit 1
    fi
done

declare -A ARM_URL=(
    [direct]="http://127.0.0.1:$UPSTREAM_PORT/bench"
    [bare-pingora]="http://127.0.0.1:$BARE_PORT/bench"
    [gateway-redis]="http://127.0.0.1:$GW_REDIS_PORT/bench"
    [gateway-embedded]="http://127.0.0.1:$GW_EMBED_PORT/bench"
)
ARMS=(direct bare-pingora gateway-redis gateway-embedded)

# wrk's latency figures ("161.00us", "1.23ms", "1.00s") in milliseconds.
to_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /m$/) n *= 60000; else if (v ~ /s$/) n *= 1000
        printf "%.3f", n
    }'
}

# Requests wrk counted in one output file (completed responses).
wrk_requests() {
    awk '/ requests in / { print $1 }' "$1"
}

# One wrk run: prints "rps p50_ms p99_ms bad" where bad counts non-2xx answers and socket
# errors, which make a row invalid.
run_wrk() {
    local url="$1" conns="$2" seconds="$3" out="$4"
    "${ON_LOAD[@]}" wrk -t1 -c"$conns" -d"${seconds}s" --latency \
        -H "Authorization: Bearer $BENCH_KEY" "$url" >"$out"
    local rps p50 p99 non2xx sockerr
    rps="$(awk '/^Requests\/sec:/ { print $2 }' "$out")"
    p50="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")"
    p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")"
    sockerr="$(awk -F'[ ,]+' '/Socket errors:/ { print $5 + $7 + $9 + $11 }' "$out")"
    echo "$rps $p50 $p99 $((${non2xx:-0} + ${sockerr:-0}))"
}

REDIS_ARM_REQUESTS=0
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
BEFORE="$("$BIN/seed-grant" balance --redis "$REDIS_URL" --customer "$BENCH_CUSTOMER")"
RAW="$WORK/raw.txt"
: >"$RAW"
echo "measuring: connections [$CONNS], arms [${ARMS[*]}], ${WARMUP_S}s warm-up + ${DURATION_S}s each, $ROUNDS round(s)" >&2
for conns in $CONNS; do
    for round in $(seq 1 "$ROUNDS"); do
        for arm in "${ARMS[@]}"; do
            url="${ARM_URL[$arm]}"
            run_wrk "$url" "$conns" "$WARMUP_S" "$WORK/wrk-$arm-c$conns-r$round-warmup.txt" >/dev/null
            row="$(run_wrk "$url" "$conns" "$DURATION_S" "$WORK/wrk-$arm-c$conns-r$round.txt")"
            if [[ "$arm" == gateway-redis ]]; then
                for f in "$WORK/wrk-$arm-c$conns-r$round-warmup.txt" "$WORK/wrk-$arm-c$conns-r$round.txt"; do
                    REDIS_ARM_REQUESTS=$((REDIS_ARM_REQUESTS + $(wrk_requests "$f")))
                done
            fi
            echo "$conns $arm $round $row" >>"$RAW"
            echo "  c=$conns round=$round $arm: $row (req/s p50_ms p99_ms bad)" >&2
        done
    done
done
sleep 1
AFTER="$("$BIN/seed-grant" balance --redis "$REDIS_URL" --customer "$BENCH_CUSTOMER")"

# The median of the numbers on stdin.
median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

echo
echo "## creditgate load bench, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "- machine: $(nproc) CPUs, $(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2; exit }')"
echo "- wrk -t1 -cN -d${DURATION_S}s --latency after a ${WARMUP_S}s warm-up; proxies --threads $THREADS; PIN=$PIN; NICE=$NICE; ROUNDS=$ROUNDS (medians)"
echo "- load average before the run: $LOAD_BEFORE; after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| connections | arm | req/s | p50 ms | p99 ms | throughput vs bare | p99 vs bare (ms) | bad answers |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|"
for conns in $CONNS; do
    bare_rps="$(awk -v c="$conns" '$1 == c && $2 == "bare-pingora" { print $4 }' "$RAW" | median)"
    bare_p99="$(awk -v c="$conns" '$1 == c && $2 == "bare-pingora" { print $6 }' "$RAW" | median)"
    for arm in "${ARMS[@]}"; do
        rps="$(awk -v c="$conns" -v a="$arm" '$1 == c && $2 == a { print $4 }' "$RAW" | median)"
        p50="$(awk -v c="$conns" -v a="$arm" '$1 == c && $2 == a { print $5 }' "$RAW" | median)"
        p99="$(awk -v c="$conns" -v a="$arm" '$1 == c && $2 == a { print $6 }' "$RAW" | median)"
        bad="$(awk -v c="$conns" -v a="$arm" '$1 == c && $2 == a { s += $7 } END { print s + 0 }' "$RAW")"
        awk -v c="$conns" -v a="$arm" -v r="$rps" -v p50="$p50" -v p99="$p99" -v br="$bare_rps" -v bp="$bare_p99" -v bad="$bad" \
            'BEGIN { printf "| %s | %s | %.0f | %.3f | %.3f | %.2f× | %+.3f | %d |\n", c, a, r, p50, p99, r / br, p99 - bp, bad }'
    done
done
read -r before_available _ <<<"$BEFORE"
read -r after_available after_held after_debt <<<"$AFTER"
echo
echo "- Redis arm accounting: $((before_available - after_available)) credits burned, $REDIS_ARM_REQUESTS responses counted by wrk (warm-ups included; wrk does not count the up to N requests in flight when it stops); held after the run: $after_held, debt: $after_debt"
for name in gateway-redis gateway-embedded bare; do
    lines="$(grep -c . "$WORK/$name.log" || true)"
    echo "- $name log lines at RUST_LOG=warn: $lines"
done
