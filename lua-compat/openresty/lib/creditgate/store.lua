-- creditgate.store: Redis for the module: one pooled connection per call with the route's
-- timeout, the protocol's key names (shard = crc32(customer) mod shards, hash tag `{sN}`),
-- and the calls the module makes (API key lookup, control state, reserve, settle, void).
-- Failures come back as a kind (`timeout`, `unavailable`, `protocol`) for the failure
-- policy; nothing here decides what a failure means for a request.
local scripts = require("creditgate.scripts")

local ok_redis, redis = pcall(require, "resty.redis")
if not ok_redis then
    -- Debian's lua-nginx-redis installs resty.redis as nginx.redis.
    redis = require("nginx.redis")
end

local _M = {}

local function classify(err)
    err = tostring(err)
    if err:find("timeout", 1, true) then return "timeout" end
    if err:find("connection refused", 1, true) or err:find("closed", 1, true)
        or err:find("no route", 1, true) or err:find("reset", 1, true) then
        return "unavailable"
    end
    return "protocol"
end

-- Runs `fn(red)` on a connection to the configured Redis with `timeout_ms` for connect,
-- send and read. Returns fn's result, or nil, the failure kind and the error.
function _M.with_redis(opts, timeout_ms, fn)
    local red = redis:new()
    -- One timeout for connect, send and read: Debian's resty.redis (0.27) has no
    -- `set_timeouts`, and an unknown method there is sent to Redis as a command.
    red:set_timeout(timeout_ms)
    local ok, err = red:connect(opts.redis_host, opts.redis_port)
    if not ok then return nil, classify(err), err end
    if opts.redis_password and (red:get_reused_times() or 0) == 0 then
        local authed, aerr = red:auth(opts.redis_password)
        if not authed then
            red:close()
            return nil, "protocol", aerr
        end
    end
    local result, rerr = fn(red)
    if result == nil then
        red:close()
        return nil, classify(rerr), rerr
    end
    red:set_keepalive(opts.keepalive_ms, opts.pool_size)
    return result
end

local function shard_key(opts, customer, rest)
    local shard = ngx.crc32_long(customer) % opts.shards
    return string.format("%s:{s%d}:%s", opts.redis_prefix, shard, rest)
end

-- The six keys of reserve, settle and void for `customer`'s hold `hold_id`.
function _M.hold_keys(opts, customer, hold_id)
    return {
        shard_key(opts, customer, "cust:" .. customer .. ":grants"),
        shard_key(opts, customer, "cust:" .. customer .. ":balance"),
        shard_key(opts, customer, "hold:" .. hold_id),
        shard_key(opts, customer, "deadlines"),
        shard_key(opts, customer, "grant_expiry"),
        shard_key(opts, customer, "events"),
    }
end

-- The key of an `Idempotency-Key` record.
function _M.record_key(opts, customer, record_id)
    return shard_key(opts, customer, "idem:" .. record_id)
end

-- The customer of the API key whose SHA-256 is `hash_hex` (ngx.null: unknown).
function _M.customer_for_key(opts, hash_hex, timeout_ms)
    return _M.with_redis(opts, timeout_ms, function(red)
        return red:get(opts.redis_prefix .. ":apikey:" .. hash_hex)
    end)
end

-- The fleet's control state hash (`cg:{control}:state`) as a flat Lua table.
function _M.control_state(opts, timeout_ms)
    return _M.with_redis(opts, timeout_ms, function(red)
        local flat, err = red:hgetall(opts.redis_prefix .. ":{control}:state")
        if not flat then return nil, err end
        return red:array_to_hash(flat)
    end)
end

-- Runs canonical script `name` with `keys` and `args`.
function _M.script(opts, name, timeout_ms, keys, args)
    return _M.with_redis(opts, timeout_ms, function(red)
        return scripts.call(red, opts.scripts[name], keys, args)
    end)
end

return _M
