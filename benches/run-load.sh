#!/usr/bin/env bash
# The end-to-end load bench: one run, up to five arms, one upstream, all on loopback.
#
#   direct           wrk -> bench-upstream
#   nginx            wrk -> nginx proxy_pass (keep-alive upstream) -> bench-upstream
#   bare-pingora     wrk -> bare-proxy (benches/src/bin/bare-proxy.rs) -> bench-upstream
#   gateway-redis    wrk -> creditgate-gateway --redis (real redis-server) -> bench-upstream
#   gateway-embedded wrk -> creditgate-gateway (embedded in-process store) -> bench-upstream
#
# Every gateway request hits `GET /bench`, a fixed-cost route (1 credit, mode enforce) of a
# customer with 10^12 credits, so every request is reserved, proxied and settled.
#
# Honesty checks: before every measured run the arm must answer 200 (a gateway with
# `x-credits-charged: 1`; the Redis arm must also burn exactly 1 credit for it); after the
# run the Redis balance must have gone down by the responses wrk counted, give or take the
# requests in flight when each wrk run stopped (at most N per run), or the script says
# FAILED. Each row carries the CPU time the proxy under test (and Redis, for its arm) spent
# per request, from /proc over the measured run, and the load average at its start.
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
#   WORK_STEALING=false  Pingora's work stealing between worker threads, for the bare proxy
#                      and both gateways alike (the gateway's default is off)
#   NGINX=auto         the nginx arm: 1 = required, 0 = skipped, auto = when nginx is installed
#   PIN=1              pin the proxy under test to CPU 0, and wrk, the upstream and Redis
#                      to CPU 1 (needs 2 CPUs; PIN=0 lets the scheduler place everything)
#   NICE=-10           nice level of everything the bench starts (root only; 0 = leave
#                      as is): keeps builds running beside the bench off its cores
#   BUILD=1            build the release binaries first (BUILD=0 reuses them)
#   CARGO_TARGET_DIR   where the release binaries are built (default target/ in the checkout)
#   KEEP_LOGS=0        keep the temporary folder with every log and wrk output
#   GATEWAY_BIN        the gateway binary of both gateway arms (default: the one built),
#                      to measure an older build in the same conditions
#   PROFILE=""         arms to profile after the measured rounds (e.g. "gateway-redis"):
#                      one more run each at the first connection count under `perf stat`
#                      (CPU, context switches and system calls per request), then one under
#                      `perf record`, drawn as a flame graph (needs perf, inferno-collapse-perf
#                      and inferno-flamegraph: `cargo install inferno`)
#   PROFILE_DIR        where the flame graphs go (default benches/flamegraphs/), named
#                      ARM[-PROFILE_TAG].svg
#
# Needs: cargo, wrk, redis-server, redis-cli, curl, taskset (apt-get install -y wrk
# redis-server redis-tools curl util-linux); nginx for its arm; perf and inferno for
# PROFILE. It starts everything on free loopback ports and kills everything it started
# when it exits, however it exits.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONNS="${CONNS:-1 32 128}"
DURATION_S="${DURATION_S:-10}"
WARMUP_S="${WARMUP_S:-2}"
ROUNDS="${ROUNDS:-1}"
THREADS="${THREADS:-1}"
WORK_STEALING="${WORK_STEALING:-false}"
NGINX="${NGINX:-auto}"
PIN="${PIN:-1}"
NICE="${NICE:--10}"
BUILD="${BUILD:-1}"
KEEP_LOGS="${KEEP_LOGS:-0}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
GATEWAY_BIN="${GATEWAY_BIN:-$BIN/creditgate-gateway}"
PROFILE="${PROFILE:-}"
PROFILE_DIR="${PROFILE_DIR:-$ROOT/benches/flamegraphs}"
PROFILE_TAG="${PROFILE_TAG:-}"

# The bench key and its customer; the config holds only the key's SHA-256.
BENCH_KEY="bench-load-key"
BENCH_CUSTOMER="bench"
# Credits of the bench customer: far more than any run can burn (about 10^5 requests per
# second for minutes is below 10^8), and below the protocol's MAX_AMOUNT (2^53 - 1).
BENCH_CREDITS=1000000000000

for tool in wrk redis-server redis-cli curl taskset sha256sum getconf; do
    command -v "$tool" >/dev/null || { echo "run-load.sh: $tool is missing" >&2; exit 1; }
done
if [[ "$NGINX" == auto ]]; then
    if command -v nginx >/dev/null; then NGINX=1; else NGINX=0; fi
fi
if [[ "$NGINX" == 1 ]] && ! command -v nginx >/dev/null; then
    echo "run-load.sh: NGINX=1 but nginx is missing (apt-get install -y nginx)" >&2
    exit 1
fi

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

# Runs a command in the background, remembered for cleanup (and its pid as PID_OF[NAME]);
# output goes to $WORK/NAME.log. `nice` and `taskset` exec the command, so the pid is the
# command's own.
declare -A PID_OF=()
start() {
    local name="$1"
    shift
    "$@" >"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
    PID_OF[$name]="$!"
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
NGINX_PORT="$(free_port)"
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
    --upstream "127.0.0.1:$UPSTREAM_PORT" --threads "$THREADS" --work-stealing "$WORK_STEALING"
export RUST_LOG=warn
# Through the environment, which an older gateway build (GATEWAY_BIN) ignores.
export CREDITGATE_WORK_STEALING="$WORK_STEALING"
# Each worker thread on its own Redis connection (off by default in the gateway).
export CREDITGATE_THREAD_CONNECTIONS=true
start gateway-redis "${ON_SUT[@]}" "$GATEWAY_BIN" run --config "$WORK/bench.toml" \
    --listen "127.0.0.1:$GW_REDIS_PORT" --admin-listen "127.0.0.1:$GW_REDIS_ADMIN" \
    --redis "$REDIS_URL" --threads "$THREADS" --shutdown-grace-s 0 --shutdown-timeout-s 1
start gateway-embedded "${ON_SUT[@]}" "$GATEWAY_BIN" run --config "$WORK/bench.toml" \
    --listen "127.0.0.1:$GW_EMBED_PORT" --admin-listen "127.0.0.1:$GW_EMBED_ADMIN" \
    --threads "$THREADS" --shutdown-grace-s 0 --shutdown-timeout-s 1
if [[ "$NGINX" == 1 ]]; then
    # One nginx process (no master: the bench measures the one process that proxies) with
    # a keep-alive pool to the upstream, as Pingora keeps one.
    mkdir -p "$WORK/nginx"
    cat >"$WORK/nginx.conf" <<NGINX_CONF
worker_processes 1;
master_process off;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    upstream bench { server 127.0.0.1:$UPSTREAM_PORT; keepalive 256; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://bench;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX_CONF
    start nginx "${ON_SUT[@]}" nginx -p "$WORK/nginx" -c "$WORK/nginx.conf"
fi

wait_http_200 "http://127.0.0.1:$UPSTREAM_PORT/bench"
wait_http_200 "http://127.0.0.1:$BARE_PORT/bench"
wait_http_200 "http://127.0.0.1:$GW_REDIS_ADMIN/readyz"
wait_http_200 "http://127.0.0.1:$GW_EMBED_ADMIN/readyz"

declare -A ARM_URL=(
    [direct]="http://127.0.0.1:$UPSTREAM_PORT/bench"
    [nginx]="http://127.0.0.1:$NGINX_PORT/bench"
    [bare-pingora]="http://127.0.0.1:$BARE_PORT/bench"
    [gateway-redis]="http://127.0.0.1:$GW_REDIS_PORT/bench"
    [gateway-embedded]="http://127.0.0.1:$GW_EMBED_PORT/bench"
)
# The process whose CPU time an arm costs: the proxy under test (the upstream for direct).
declare -A ARM_PROCESS=(
    [direct]=upstream
    [nginx]=nginx
    [bare-pingora]=bare
    [gateway-redis]=gateway-redis
    [gateway-embedded]=gateway-embedded
)
ARMS=(direct)
if [[ "$NGINX" == 1 ]]; then
    wait_http_200 "${ARM_URL[nginx]}"
    ARMS+=(nginx)
fi
ARMS+=(bare-pingora gateway-redis gateway-embedded)

# The bench customer's balance in Redis, "available held debt", once no hold is pending
# (background settles of the requests just answered may still be running).
settled_balance() {
    local balance i
    for i in $(seq 1 100); do
        balance="$("$BIN/seed-grant" balance --redis "$REDIS_URL" --customer "$BENCH_CUSTOMER")"
        [[ "$(cut -d' ' -f2 <<<"$balance")" == 0 ]] && break
        sleep 0.05
    done
    echo "$balance"
}

# Checks, right before an arm is measured, that it answers the bench request as it should:
# 200 from every arm; `x-credits-charged: 1` from a gateway; and on the Redis arm exactly 1
# credit burned for it. Exits the bench otherwise.
CHECK_REQUESTS=0
check_arm() {
    local arm="$1" headers before after
    [[ "$arm" == gateway-redis ]] && before="$(settled_balance)"
    headers="$(curl -s -D - -o /dev/null -H "Authorization: Bearer $BENCH_KEY" "${ARM_URL[$arm]}")"
    if ! grep -q '^HTTP/1.1 200' <<<"$headers"; then
        echo "run-load.sh: $arm does not answer 200 before its run:" >&2
        echo "$headers" >&2
        exit 1
    fi
    if [[ "$arm" == gateway-* ]] && ! grep -qi '^x-credits-charged: 1' <<<"$headers"; then
        echo "run-load.sh: $arm does not charge the bench route 1 credit:" >&2
        echo "$headers" >&2
        exit 1
    fi
    if [[ "$arm" == gateway-redis ]]; then
        CHECK_REQUESTS=$((CHECK_REQUESTS + 1))
        after="$(settled_balance)"
        if (($(cut -d' ' -f1 <<<"$before") - $(cut -d' ' -f1 <<<"$after") != 1)); then
            echo "run-load.sh: one request on $arm did not burn exactly 1 credit (balance before: $before; after: $after)" >&2
            exit 1
        fi
    fi
}

# CPU time (user + system, every thread) a process has used, in clock ticks.
CLK_TCK="$(getconf CLK_TCK)"
cpu_ticks() {
    # Fields 14 and 15 of /proc/PID/stat; counted after the `(comm)` field, which may hold spaces.
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

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

# Responses in one wrk output file that were not 2xx or 3xx (a 503 is never charged).
wrk_non2xx() {
    awk '/Non-2xx or 3xx responses:/ { n = $NF } END { print n + 0 }' "$1"
}

# One wrk run against ARM: prints "rps p50_ms p99_ms bad cpu_us redis_us load1", where bad
# counts non-2xx answers and socket errors (they make a row invalid), cpu_us is the CPU
# time the arm's process used per response wrk counted, in microseconds, redis_us the same
# for redis-server (its arm only, else 0), and load1 the 1-minute load average at the start.
run_wrk() {
    local arm="$1" conns="$2" seconds="$3" out="$4"
    local pid="${PID_OF[${ARM_PROCESS[$arm]}]}" redis_pid="${PID_OF[redis]}"
    local load1 cpu0 redis0 cpu1 redis1
    load1="$(cut -d' ' -f1 /proc/loadavg)"
    cpu0="$(cpu_ticks "$pid")"
    redis0="$(cpu_ticks "$redis_pid")"
    "${ON_LOAD[@]}" wrk -t1 -c"$conns" -d"${seconds}s" --latency \
        -H "Authorization: Bearer $BENCH_KEY" "${ARM_URL[$arm]}" >"$out"
    cpu1="$(cpu_ticks "$pid")"
    redis1="$(cpu_ticks "$redis_pid")"
    [[ "$arm" == gateway-redis ]] || redis1="$redis0"
    local rps p50 p99 non2xx sockerr requests
    rps="$(awk '/^Requests\/sec:/ { print $2 }' "$out")"
    p50="$(to_ms "$(awk '$1 == "50%" { print $2 }' "$out")")"
    p99="$(to_ms "$(awk '$1 == "99%" { print $2 }' "$out")")"
    non2xx="$(awk '/Non-2xx or 3xx responses:/ { print $NF }' "$out")"
    sockerr="$(awk -F'[ ,]+' '/Socket errors:/ { print $5 + $7 + $9 + $11 }' "$out")"
    requests="$(wrk_requests "$out")"
    awk -v r="$rps" -v p50="$p50" -v p99="$p99" -v bad="$((${non2xx:-0} + ${sockerr:-0}))" \
        -v cpu="$((cpu1 - cpu0))" -v redis="$((redis1 - redis0))" -v n="$requests" -v hz="$CLK_TCK" -v load="$load1" \
        'BEGIN { printf "%s %s %s %d %.1f %.1f %s\n", r, p50, p99, bad, cpu * 1e6 / hz / n, redis * 1e6 / hz / n, load }'
}

REDIS_ARM_REQUESTS=0
REDIS_ARM_RUNS=0
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
BEFORE="$(settled_balance)"
RAW="$WORK/raw.txt"
: >"$RAW"
echo "measuring: connections [$CONNS], arms [${ARMS[*]}], ${WARMUP_S}s warm-up + ${DURATION_S}s each, $ROUNDS round(s)" >&2
for conns in $CONNS; do
    for round in $(seq 1 "$ROUNDS"); do
        for arm in "${ARMS[@]}"; do
            run_wrk "$arm" "$conns" "$WARMUP_S" "$WORK/wrk-$arm-c$conns-r$round-warmup.txt" >/dev/null
            check_arm "$arm"
            row="$(run_wrk "$arm" "$conns" "$DURATION_S" "$WORK/wrk-$arm-c$conns-r$round.txt")"
            if [[ "$arm" == gateway-redis ]]; then
                for f in "$WORK/wrk-$arm-c$conns-r$round-warmup.txt" "$WORK/wrk-$arm-c$conns-r$round.txt"; do
                    REDIS_ARM_REQUESTS=$((REDIS_ARM_REQUESTS + $(wrk_requests "$f") - $(wrk_non2xx "$f")))
                    REDIS_ARM_RUNS=$((REDIS_ARM_RUNS + conns))
                done
            fi
            echo "$conns $arm $round $row" >>"$RAW"
            echo "  c=$conns round=$round $arm: $row (req/s p50_ms p99_ms bad cpu_us/req redis_us/req load1)" >&2
        done
    done
done
AFTER="$(settled_balance)"
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# The median of the numbers on stdin.
median() {
    sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# The median of column COL of the raw rows of CONNS connections and ARM.
median_of() {
    awk -v c="$1" -v a="$2" -v col="$3" '$1 == c && $2 == a { print $col }' "$RAW" | median
}

echo
echo "## creditgate load bench, $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo "- machine: $(nproc) CPUs, $(lscpu | awk -F: '/Model name/ { gsub(/^ +/, "", $2); print $2; exit }')"
echo "- wrk -t1 -cN -d${DURATION_S}s --latency after a ${WARMUP_S}s warm-up; proxies --threads $THREADS --work-stealing $WORK_STEALING; PIN=$PIN; NICE=$NICE; ROUNDS=$ROUNDS (medians)"
echo "- load average before the run: $LOAD_BEFORE; after: $LOAD_AFTER"
echo
echo "| connections | arm | req/s | p50 ms | p99 ms | throughput vs bare | p50 vs bare (ms) | p99 vs bare (ms) | CPU us/req | Redis CPU us/req | load (1 min) | bad answers |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
# ROUNDS=0 (only PROFILE) measures nothing to tabulate.
TABLE_CONNS="$CONNS"
((ROUNDS > 0)) || TABLE_CONNS=""
for conns in $TABLE_CONNS; do
    bare_rps="$(median_of "$conns" bare-pingora 4)"
    bare_p50="$(median_of "$conns" bare-pingora 5)"
    bare_p99="$(median_of "$conns" bare-pingora 6)"
    for arm in "${ARMS[@]}"; do
        bad="$(awk -v c="$conns" -v a="$arm" '$1 == c && $2 == a { s += $7 } END { print s + 0 }' "$RAW")"
        awk -v c="$conns" -v a="$arm" -v r="$(median_of "$conns" "$arm" 4)" -v p50="$(median_of "$conns" "$arm" 5)" \
            -v p99="$(median_of "$conns" "$arm" 6)" -v cpu="$(median_of "$conns" "$arm" 8)" \
            -v redis="$(median_of "$conns" "$arm" 9)" -v load="$(median_of "$conns" "$arm" 10)" \
            -v br="$bare_rps" -v b50="$bare_p50" -v b99="$bare_p99" -v bad="$bad" \
            'BEGIN { printf "| %s | %s | %.0f | %.3f | %.3f | %.2fx | %+.3f | %+.3f | %.1f | %s | %.2f | %d |\n", c, a, r, p50, p99, r / br, p50 - b50, p99 - b99, cpu, (a == "gateway-redis" ? sprintf("%.1f", redis) : "-"), load, bad }'
    done
done
read -r before_available _ <<<"$BEFORE"
read -r after_available after_held after_debt <<<"$AFTER"
burned=$((before_available - after_available))
served=$((REDIS_ARM_REQUESTS + CHECK_REQUESTS))
# wrk counts completed responses only: each of its runs may stop with up to N requests in
# flight, which the gateway still answers and settles.
in_flight=$((burned - served))
if ((in_flight >= 0 && in_flight <= REDIS_ARM_RUNS && after_held == 0)); then
    verdict="OK"
else
    verdict="FAILED"
fi
echo
echo "- Redis arm accounting, $verdict: $burned credits burned; $served responses served ($REDIS_ARM_REQUESTS 2xx counted by wrk, warm-ups included, and $CHECK_REQUESTS checks), so $in_flight were in flight when a wrk run stopped (allowed: 0 to $REDIS_ARM_RUNS, N per run); held after the run: $after_held, debt: $after_debt"
for name in gateway-redis gateway-embedded bare; do
    lines="$(grep -c . "$WORK/$name.log" || true)"
    echo "- $name log lines at RUST_LOG=warn: $lines"
done
if [[ "$verdict" != OK ]]; then
    echo "run-load.sh: the Redis arm's accounting does not add up" >&2
    exit 1
fi

# One profiled arm: a wrk run under `perf stat` for per-request figures, then one under
# `perf record` for the flame graph. perf itself runs on the load generator's CPU.
profile_arm() {
    local arm="$1" conns="$2" pid="${PID_OF[${ARM_PROCESS[$arm]}]}"
    local stat="$WORK/perf-stat-$arm.txt" data="$WORK/perf-$arm.data"
    local svg="$PROFILE_DIR/$arm${PROFILE_TAG:+-$PROFILE_TAG}.svg"
    run_wrk "$arm" "$conns" "$WARMUP_S" "$WORK/wrk-$arm-profile-warmup.txt" >/dev/null
    "${ON_LOAD[@]}" perf stat -x, -e task-clock,context-switches,raw_syscalls:sys_enter \
        -p "$pid" -o "$stat" -- sleep "$DURATION_S" &
    local perf_pid=$!
    run_wrk "$arm" "$conns" "$DURATION_S" "$WORK/wrk-$arm-profile-stat.txt" >/dev/null
    wait "$perf_pid"
    local n
    n="$(wrk_requests "$WORK/wrk-$arm-profile-stat.txt")"
    awk -F, -v n="$n" -v a="$arm" -v c="$conns" '
        $3 == "task-clock" { cpu = $1 } $3 == "context-switches" { cs = $1 } $3 ~ /sys_enter/ { sc = $1 }
        END { printf "- perf stat of %s at %s connections (%d responses): %.1f us CPU, %.2f context switches, %.2f system calls per response\n", a, c, n, cpu * 1000 / n, cs / n, sc / n }' "$stat"
    "${ON_LOAD[@]}" perf record -F 499 -g --call-graph dwarf,16384 -p "$pid" -o "$data" \
        -- sleep "$DURATION_S" 2>"$WORK/perf-record-$arm.log" &
    perf_pid=$!
    run_wrk "$arm" "$conns" "$DURATION_S" "$WORK/wrk-$arm-profile-record.txt" >/dev/null
    wait "$perf_pid"
    mkdir -p "$PROFILE_DIR"
    perf script -i "$data" 2>/dev/null | inferno-collapse-perf >"$WORK/folded-$arm.txt"
    inferno-flamegraph --title "$arm, $conns connections, wrk on loopback" \
        <"$WORK/folded-$arm.txt" >"$svg"
    echo "- flame graph of $arm: $svg"
}

for arm in ${PROFILE//,/ }; do
    for tool in perf inferno-collapse-perf inferno-flamegraph; do
        command -v "$tool" >/dev/null || { echo "run-load.sh: PROFILE needs $tool" >&2; exit 1; }
    done
    [[ -n "${ARM_URL[$arm]:-}" ]] || { echo "run-load.sh: PROFILE names no arm $arm" >&2; exit 1; }
    profile_arm "$arm" "${CONNS%% *}"
done
