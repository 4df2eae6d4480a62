-- creditgate.control: the mode a request runs in, as creditgate-gateway's `control.rs`
-- decides it: the route's mode from the pricing export, overridden by the fleet's control
-- state in Redis (global, per route, per customer, rollout percentage) and by the local
-- kill switch file. The state is refreshed per worker by a timer (`refresh`); requests read
-- the last copy and never wait for Redis for it.
local digest = require("creditgate.digest")
local store = require("creditgate.store")

local _M = {}

-- The last control state read (flat hash) and whether the kill switch file exists.
local state = {}
local forced_off = false

-- A customer's rollout bucket, 0 to 99: the first 8 bytes of SHA-256(customer) as a
-- big-endian integer, modulo 100 (computed byte by byte, so exact in doubles).
function _M.rollout_bucket(customer)
    local raw = digest.sha256(customer)
    local bucket = 0
    for i = 1, 8 do
        bucket = (bucket * 256 + raw:byte(i)) % 100
    end
    return bucket
end

local VALID = { off = true, shadow = true, enforce = true }

local function mode_or_nil(value)
    if value and VALID[value] then return value end
    return nil
end

-- The route's mode before the customer is known; `off` means no Redis call at all.
function _M.route_mode(route)
    if forced_off or state.global == "off" then return "off" end
    return mode_or_nil(state["route:" .. route.name]) or mode_or_nil(state.global) or route.mode
end

-- The mode for `customer` on a route whose route mode (not `off`) is `route_mode`.
function _M.customer_mode(route_mode, customer)
    local own = mode_or_nil(state["customer:" .. customer])
    if own then return own end
    local percent = tonumber(state.rollout_percent or "")
    if route_mode == "enforce" and percent and _M.rollout_bucket(customer) >= percent then
        return "shadow"
    end
    return route_mode
end

-- Reads the kill switch file and the control state (keeping the last one on failure).
function _M.refresh(opts)
    if opts.kill_switch_file then
        local file = io.open(opts.kill_switch_file, "rb")
        forced_off = file ~= nil
        if file then file:close() end
    end
    local read, kind, err = store.control_state(opts, opts.control_timeout_ms)
    if read then
        state = read
    elseif kind then
        ngx.log(ngx.WARN, "creditgate: cannot read the control state (", kind, ": ",
            tostring(err), "); keeping the last known one")
    end
end

return _M
