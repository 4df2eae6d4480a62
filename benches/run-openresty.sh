#!/usr/bin/env bash
# The OpenResty module against creditgate-gateway and plain nginx, one run, one upstream,
# all on loopback:
#
#   nginx-proxy    wrk -> nginx proxy_pass (keep-alive upstream) -> upstream
#   nginx-module   wrk -> nginx with lua-compat/openresty (Redis) -> upstream
#   gateway-redis  wrk -> creditgate-gateway --redis -> upstream
#
# The upstream is a plain nginx answering `{"ok":true}`. Both metering arms serve `GET
# /bench`, a fixed-cost route (1 credit, enforce, fail_closed) for a customer with 10^12
# credits in the same redis-server, so every request is identified, reserved, proxied and
# settled. Each arm must answer 200 with `x-credits-charged: 1` (the proxy arm: 200) before
# it is measured; afterwards the Redis balance must have gone down by at least the 200s wrk
# counted for both metering arms (settles run after the response), or the script says
# FAILED. Each arm starts with nothing held (the previous arm's settles all landed), and
# the table shows what was still held when its run ended (settles not done yet).
#
# Usage:  bash benches/run-openresty.sh
# Knobs (environment):
#   CONNS="1 32"      connection counts, each against every arm
#   DURATION_S=10     measured seconds per arm and connection count (after WARMUP_S=2)
#   ROUNDS=1          rounds of every arm in turn per connection count; medians shown
#   PIN=1             proxies under test on CPU 0; wrk, upstream and Redis on CPU 1
#   GATEWAY_BIN       the gateway binary (default target/release/creditgate-gateway when it
#                     exists, else target/debug/creditgate-gateway; the table says which)
# Needs: nginx, libnginx-mod-http-lua, lua-nginx-redis, lua-cjson, wrk, redis-server,
# redis-cli, curl, taskset. Everything it starts is killed when it exits.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONNS="${CONNS:-1 32}"
DURATION_S="${DURATION_S:-10}"
WARMUP_S="${WARMUP_S:-2}"
ROUNDS="${ROUNDS:-1}"
PIN="${PIN:-1}"
if [[ -z "${GATEWAY_BIN:-}" ]]; then
    GATEWAY_BIN="$ROOT/target/release/creditgate-gateway"
    [[ -x "$GATEWAY_BIN" ]] || GATEWAY_BIN="$ROOT/target/debug/creditgate-gateway"
fi
BENCH_KEY="bench-openresty-key"
BENCH_CUSTOMER="bench"
BENCH_CREDITS=1000000000000

for tool in nginx wrk redis-server redis-cli curl taskset sha256sum; do
    command -v "$tool" >/dev/null || { echo "run-openresty.sh: $tool is missing (.ci/run installs it)" >&2; exit 1; }
done
[[ -x "$GATEWAY_BIN" ]] || { echo "run-openresty.sh: no gateway binary at $GATEWAY_BIN (cargo build -p creditgate-gateway)" >&2; exit 1; }

WORK="$(mktemp -d /tmp/creditgate-openresty.XXXXXX)"
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [[ "$PIN" == 1 && "$(nproc)" -ge 2 ]]; then
    ON_SUT=(taskset -c 0); ON_LOAD=(taskset -c 1)
else
    ON_SUT=(); ON_LOAD=()
fi

USED_PORTS=" "
free_port() {
    local port
    while true; do
        port=$((20000 + RANDOM % 30000))
        [[ "$USED_PORTS" == *" $port "* ]] && continue
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            USED_PORTS+="$port "; echo "$port"; return
        fi
    done
}
wait_port() {
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    echo "run-openresty.sh: nothing listens on $1; logs in $WORK" >&2; exit 1
}
# One nginx in the foreground (one worker) from an http block.
start_nginx() {
    local name="$1" http="$2" pin=("${@:3}")
    mkdir -p "$WORK/$name/logs"
    cat > "$WORK/$name/nginx.conf" <<EOF
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
daemon off; master_process off; worker_processes 1;
error_log $WORK/$name/logs/error.log warn; pid $WORK/$name/logs/nginx.pid;
events { worker_connections 4096; }
http { access_log off; $http }
EOF
    "${pin[@]}" nginx -p "$WORK/$name" -c "$WORK/$name/nginx.conf" &
    PIDS+=($!)
}

UP=$(free_port); REDIS=$(free_port); PROXY=$(free_port); MODULE=$(free_port); GW=$(free_port); ADMIN=$(free_port)
"${ON_LOAD[@]}" redis-server --port "$REDIS" --save "" --appendonly no --dir "$WORK" > "$WORK/redis.log" 2>&1 &
PIDS+=($!)
start_nginx upstream "server { listen 127.0.0.1:$UP; location / { default_type application/json; return 200 '{\"ok\":true}'; } }" "${ON_LOAD[@]}"
cat > "$WORK/pricing.toml" <<EOF
[defaults]
mode = "enforce"
failure_policy = "fail_closed"
store_timeout_ms = 500
[credit_types.api]
scale = 0
[upstreams.default]
address = "127.0.0.1:$UP"
[features.bench]
credit_type = "api"
cost = { kind = "fixed", amount = 1 }
[[routes]]
method = "GET"
path = "/bench"
feature = "bench"
[[api_keys]]
customer = "$BENCH_CUSTOMER"
sha256 = "$(printf %s "$BENCH_KEY" | sha256sum | cut -d' ' -f1)"
EOF
# A release binary built before `export-pricing` existed cannot export: the debug one can.
EXPORT_BIN="$GATEWAY_BIN"
"$EXPORT_BIN" export-pricing --help > /dev/null 2>&1 || EXPORT_BIN="$ROOT/target/debug/creditgate-gateway"
"$EXPORT_BIN" export-pricing "$WORK/pricing.toml" --output "$WORK/pricing.json"
LIB="$ROOT/lua-compat/openresty/lib"
start_nginx proxy "upstream up { server 127.0.0.1:$UP; keepalive 64; }
server { listen 127.0.0.1:$PROXY; location / { proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass http://up; } }" "${ON_SUT[@]}"
start_nginx module "lua_package_path \"$LIB/?.lua;$LIB/?/init.lua;/usr/share/lua/5.1/?.lua;;\";
init_by_lua_block { require(\"creditgate\").configure({ pricing_file = \"$WORK/pricing.json\", scripts_dir = \"$ROOT/lua-compat/lua\", redis_port = $REDIS }) }
init_worker_by_lua_block { require(\"creditgate\").init_worker() }
upstream up { server 127.0.0.1:$UP; keepalive 64; }
server { listen 127.0.0.1:$MODULE; location / {
  access_by_lua_block { require(\"creditgate\").access() }
  header_filter_by_lua_block { require(\"creditgate\").header_filter() }
  body_filter_by_lua_block { require(\"creditgate\").body_filter() }
  log_by_lua_block { require(\"creditgate\").log() }
  proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_pass http://up; } }" "${ON_SUT[@]}"
"${ON_SUT[@]}" "$GATEWAY_BIN" run --config "$WORK/pricing.toml" --listen "127.0.0.1:$GW" \
    --admin-listen "127.0.0.1:$ADMIN" --redis "redis://127.0.0.1:$REDIS/" --threads 1 > "$WORK/gateway.log" 2>&1 &
PIDS+=($!)
for port in "$REDIS" "$UP" "$PROXY" "$MODULE" "$GW"; do wait_port "$port"; done

# The bench customer's credits, through the canonical grant script.
SHARD=$(python3 -c "import zlib; print(zlib.crc32(b'$BENCH_CUSTOMER') % 16)")
K="cg:{s$SHARD}:cust:$BENCH_CUSTOMER"
{ cat "$ROOT/lua-compat/lua/prelude.lua"; echo; cat "$ROOT/lua-compat/lua/grant.lua"; } > "$WORK/grant.lua"
redis-cli -p "$REDIS" --eval "$WORK/grant.lua" "$K:grants" "$K:balance" "$K:applied" "cg:{s$SHARD}:grant_expiry" "cg:{s$SHARD}:events" \
    , "$BENCH_CUSTOMER" bench-grant api "$BENCH_CREDITS" 0 0 0 promotion bench bench > /dev/null
available() { redis-cli -p "$REDIS" hget "$K:balance" api:avail; }

declare -A URL=([nginx-proxy]="http://127.0.0.1:$PROXY/bench" [nginx-module]="http://127.0.0.1:$MODULE/bench" [gateway-redis]="http://127.0.0.1:$GW/bench")
ARMS=(nginx-proxy nginx-module gateway-redis)
for arm in "${ARMS[@]}"; do
    headers=$(curl -s -D - -o /dev/null -H "Authorization: Bearer $BENCH_KEY" "${URL[$arm]}")
    [[ "$headers" == *" 200 "* ]] || { echo "FAILED: $arm does not answer 200: $headers" >&2; exit 1; }
    if [[ "$arm" != nginx-proxy && "$headers" != *"x-credits-charged: 1"* ]]; then
        echo "FAILED: $arm does not charge 1: $headers" >&2; exit 1
    fi
done

echo "machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); gateway: $GATEWAY_BIN; pinned: $PIN"
echo
echo "| connections | arm | req/s | p50 | p99 | non-2xx | held at end | load average at start |"
echo "|---|---|---|---|---|---|---|---|"
held() { redis-cli -p "$REDIS" hget "$K:balance" api:held; }
# Waits until nothing is held: every settle of the previous run landed, so no arm is
# measured while another's settles still load Redis.
drained() { for _ in $(seq 600); do [[ "$(held)" == 0 ]] && return; sleep 0.05; done; }
before=$(available); metered=0
declare -A RESULTS=()
for conns in $CONNS; do
    # Rounds outside, arms inside: every arm sees the same stretch of machine load.
    for round in $(seq "$ROUNDS"); do
        for arm in "${ARMS[@]}"; do
            drained
            "${ON_LOAD[@]}" wrk -t1 -c"$conns" -d"${WARMUP_S}s" -H "Authorization: Bearer $BENCH_KEY" "${URL[$arm]}" > /dev/null
            drained
            load=$(cut -d' ' -f1-3 /proc/loadavg)
            out=$("${ON_LOAD[@]}" wrk -t1 -c"$conns" -d"${DURATION_S}s" --latency -H "Authorization: Bearer $BENCH_KEY" "${URL[$arm]}")
            # Credits still held the moment the run ends: settles the arm had not done yet.
            left=$(held)
            rps=$(awk '/^Requests\/sec/ {print $2}' <<< "$out")
            p50=$(awk '$1 == "50%" {print $2}' <<< "$out")
            p99=$(awk '$1 == "99%" {print $2}' <<< "$out")
            bad=$(awk '/Non-2xx/ {print $5}' <<< "$out"); bad=${bad:-0}
            total=$(awk '/requests in/ {print $1}' <<< "$out")
            [[ "$arm" != nginx-proxy ]] && metered=$((metered + total))
            RESULTS[$conns/$arm]+="$rps $p50 $p99 $bad $left $load"$'\n'
        done
    done
    for arm in "${ARMS[@]}"; do
        median=$(printf '%s' "${RESULTS[$conns/$arm]}" | sort -n | sed -n "$(( (ROUNDS + 1) / 2 ))p")
        read -r rps p50 p99 bad left l1 l2 l3 <<< "$median"
        echo "| $conns | $arm | $rps | $p50 | $p99 | $bad | $left | $l1 $l2 $l3 |"
    done
done
sleep 2
burned=$((before - $(available)))
echo
if (( burned >= metered )); then
    echo "accounting: $burned credits burned for $metered metered requests measured (warm-ups and checks burn too): ok"
else
    echo "accounting FAILED: $burned credits burned for $metered metered requests"; exit 1
fi
