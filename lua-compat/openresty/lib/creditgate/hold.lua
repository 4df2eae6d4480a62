-- creditgate.hold: a request's hold through the canonical scripts: reserve (with the
-- `Idempotency-Key` record when the client sent one, retrying as creditgate-gateway's
-- `hold/keyed.rs` does), and in the log phase a settle or void queued for a few
-- `ngx.timer.at` drainers (cosockets are not allowed in the log phase), retried on failure. Returns decisions as
-- values; `creditgate.init` answers the client.
local responses = require("creditgate.responses")
local store = require("creditgate.store")

local _M = {}

local RETAIN_MS = 86400000
local MAX_IDEMPOTENT_ATTEMPTS = 5
local PENDING_WAITS = 4
local PENDING_WAIT_S = 0.025
local SETTLE_RETRY_DELAYS_S = { 0.1, 0.5, 2, 5 }
local MIN_SETTLE_TIMEOUT_MS = 200

local function reserve_args(plan, hold_id)
    return { plan.customer, hold_id, plan.credit_type, tostring(plan.amount),
        tostring(plan.hold_ttl_ms), tostring(plan.overdraft), plan.shadow and "1" or "0",
        plan.request_id, plan.route, plan.feature, tostring(RETAIN_MS), plan.pricing_version, "0" }
end

local function placed(plan, hold_id, reply)
    return { hold = { hold_id = hold_id, customer = plan.customer },
        charge = { credit_type = plan.credit_type, charged = plan.amount, remaining = reply[7] } }
end

-- The failure policy: fail open proxies without a hold (a reserve that timed out may have
-- run: its hold is voided in the background), fail closed answers 503.
local function failed(opts, plan, hold_id, kind)
    ngx.log(ngx.WARN, "creditgate: credit store call failed (op=reserve, route=", plan.route,
        ", error=", kind, ", policy=", plan.failure_policy, ")")
    if kind == "timeout" then
        _M.finish(opts, { hold_id = hold_id, customer = plan.customer }, "void", nil, plan)
    end
    if plan.failure_policy == "fail_open" then return {} end
    return nil, responses.store_unavailable(kind)
end

local function hold_id_of(plan, attempt)
    if attempt == 1 then return plan.base_hold_id end
    return plan.base_hold_id .. "." .. attempt
end

local function reserve_keyed(opts, plan)
    local attempt, hold_id, supersedes, waits = 1, plan.base_hold_id, "", 0
    local record = store.record_key(opts, plan.customer, plan.record_id)
    for _ = 1, 2 * MAX_IDEMPOTENT_ATTEMPTS + PENDING_WAITS + 2 do
        local keys = store.hold_keys(opts, plan.customer, hold_id)
        keys[7] = record
        local args = reserve_args(plan, hold_id)
        for _, extra in ipairs({ plan.fingerprint, supersedes, tostring(plan.replay_max),
            tostring(plan.replay_window_ms) }) do
            args[#args + 1] = extra
        end
        local reply, kind = store.script(opts, "reserve", plan.store_timeout_ms, keys, args)
        if not reply then return failed(opts, plan, hold_id, kind) end
        local outcome = reply[1]
        if outcome == "placed" then return placed(plan, hold_id, reply) end
        if outcome == "insufficient" then
            return nil, responses.insufficient(plan.credit_type, plan.amount, reply[3], plan.top_up_url)
        end
        if outcome == "key_reused" then return nil, responses.idempotency_key_reused(reply[3]) end
        if outcome == "conflict" then return nil, responses.idempotency_key_reused(nil) end
        if outcome == "replayed" then
            return { replay = reply[3], charge = { credit_type = plan.credit_type, charged = 0 } }
        end
        if outcome == "replays_exhausted" then
            return nil, responses.idempotency_replays_exhausted(reply[3], reply[4])
        end
        if outcome == "moved" then
            hold_id, supersedes = reply[3], ""
        elseif outcome == "replay" and reply[3] == "pending" then
            if waits >= PENDING_WAITS then
                return nil, responses.idempotency_in_progress(
                    "a request with this Idempotency-Key is still in progress")
            end
            waits = waits + 1
            ngx.sleep(PENDING_WAIT_S)
        elseif outcome == "replay" and reply[3] == "posted" then
            return nil, responses.idempotency_in_progress(
                "the request with this Idempotency-Key was charged already")
        else -- voided, expired or gone: place the next attempt over it
            attempt = attempt + 1
            if attempt > MAX_IDEMPOTENT_ATTEMPTS then break end
            supersedes, hold_id = hold_id, hold_id_of(plan, attempt)
        end
    end
    return nil, responses.idempotency_in_progress("this Idempotency-Key was retried too many times")
end

-- Reserves `plan.amount`: { hold, charge, replay } to proxy, or nil and a refusal.
function _M.reserve(opts, plan)
    if plan.record_id then return reserve_keyed(opts, plan) end
    local hold_id = plan.base_hold_id
    local keys = store.hold_keys(opts, plan.customer, hold_id)
    local reply, kind = store.script(opts, "reserve", plan.store_timeout_ms, keys,
        reserve_args(plan, hold_id))
    if not reply then return failed(opts, plan, hold_id, kind) end
    if reply[1] == "placed" then return placed(plan, hold_id, reply) end
    if reply[1] == "insufficient" then
        return nil, responses.insufficient(plan.credit_type, plan.amount, reply[3], plan.top_up_url)
    end
    return nil, responses.idempotency_key_reused(nil)
end

-- Settles and voids wait in a per-worker queue drained by at most SETTLE_DRAINERS timers,
-- rather than one timer per request: a timer is a coroutine and a fake request, and a
-- queue bounds how many run at once (ngx_lua refuses timers past lua_max_running_timers,
-- 256 by default). 32 concurrent settles keep up with the reserves of a saturated worker
-- (8 fell behind in the benchmark). The queue itself is bounded: past MAX_QUEUED a settle
-- is dropped with an error log and its hold expires at its deadline, uncharged.
local SETTLE_DRAINERS = 32
local MAX_QUEUED = 100000
local queue, head, tail, drainers = {}, 1, 0, 0

local function resolve_once(opts, job)
    local hold, plan = job.hold, job.plan
    local keys = store.hold_keys(opts, hold.customer, hold.hold_id)
    local args = { hold.customer, hold.hold_id }
    if job.op == "settle" then
        args[3], args[4] = tostring(job.actual), tostring(plan.overdraft)
    end
    local timeout = math.max(plan.store_timeout_ms, MIN_SETTLE_TIMEOUT_MS)
    local reply, kind, err = store.script(opts, job.op, timeout, keys, args)
    if reply then return end
    local delay = SETTLE_RETRY_DELAYS_S[job.try]
    if not delay then
        ngx.log(ngx.ERR, "creditgate: giving up on ", job.op, " of hold ", hold.hold_id,
            " (", kind, ": ", tostring(err), "); it expires at its deadline")
        return
    end
    job.try = job.try + 1
    ngx.timer.at(delay, function(premature)
        if not premature then _M.enqueue(opts, job) end
    end)
end

local function drain(premature, opts)
    while not premature and head <= tail do
        local job = queue[head]
        queue[head], head = nil, head + 1
        resolve_once(opts, job)
    end
    drainers = drainers - 1
end

-- Queues a settle or void and makes sure a drainer runs.
function _M.enqueue(opts, job)
    if tail - head + 1 >= MAX_QUEUED then
        ngx.log(ngx.ERR, "creditgate: ", MAX_QUEUED, " settles queued; dropping the ", job.op,
            " of hold ", job.hold.hold_id, ", which expires at its deadline")
        return
    end
    tail = tail + 1
    queue[tail] = job
    if drainers < SETTLE_DRAINERS then
        local ok, err = ngx.timer.at(0, drain, opts)
        if ok then
            drainers = drainers + 1
        elseif drainers == 0 then
            ngx.log(ngx.ERR, "creditgate: cannot start a settle drainer: ", err,
                "; hold ", job.hold.hold_id, " waits for the next request")
        end
    end
end

-- Settles `hold` at `actual` or voids it (`op`) in the background: the log phase cannot use
-- cosockets, and the client must not wait for it.
function _M.finish(opts, hold, op, actual, plan)
    _M.enqueue(opts, { hold = hold, op = op, actual = actual, plan = plan, try = 1 })
end

return _M
