-- creditgate: credit enforcement inside nginx (OpenResty / ngx_lua), sharing Redis, the
-- canonical scripts and the pricing table with creditgate-gateway. This file only wires
-- the phases; each step is its own module:
--   access        route, mode, caller, price, reserve  (pricing, control, identity, cost, hold)
--   header_filter charge headers; start reading usage  (responses, usage)
--   body_filter   usage of a JSON body or SSE stream   (usage)
--   log           settle or void in a timer            (hold)
-- Usage in nginx.conf: see lua-compat/openresty/nginx.conf and README.md.
local cjson = require("cjson.safe")
local control = require("creditgate.control")
local cost = require("creditgate.cost")
local hold = require("creditgate.hold")
local identity = require("creditgate.identity")
local pricing_mod = require("creditgate.pricing")
local responses = require("creditgate.responses")
local scripts = require("creditgate.scripts")
local usage = require("creditgate.usage")

-- cjson prints 14 significant digits at most: amounts in answers above 10^14 lose precision.

local _M = { _VERSION = "0.1.0" }

-- Every option with its default; the Kong and APISIX schemas list the same names.
_M.DEFAULTS = {
    pricing_file = nil,          -- required: JSON from `creditgate-gateway export-pricing`
    scripts_dir = nil,           -- required: the repository's lua-compat/lua
    redis_host = "127.0.0.1",
    redis_port = 6379,
    redis_password = nil,
    redis_prefix = "cg",
    shards = 16,                 -- the same for every gateway and the sidecar
    pool_size = 64,              -- idle Redis connections kept per worker
    keepalive_ms = 60000,
    control_poll_ms = 1000,      -- how often the fleet's control state is read
    control_timeout_ms = 200,
    kill_switch_file = nil,      -- while it exists: mode off, no Redis call
    api_key_cache_ttl_ms = 30000,
}

local opts, pricing

-- Checks `options` and loads the pricing export and the scripts (init phase). Raises an
-- error naming the option at fault.
function _M.configure(options)
    local merged = {}
    for k, v in pairs(_M.DEFAULTS) do merged[k] = v end
    for k, v in pairs(options or {}) do
        if _M.DEFAULTS[k] == nil and k ~= "pricing_file" and k ~= "scripts_dir"
            and k ~= "redis_password" and k ~= "kill_switch_file" then
            error("creditgate: unknown option " .. tostring(k))
        end
        merged[k] = v
    end
    for _, required in ipairs({ "pricing_file", "scripts_dir" }) do
        if type(merged[required]) ~= "string" then
            error("creditgate: option " .. required .. " is required (a file path)")
        end
    end
    local loaded, err = pricing_mod.load(merged.pricing_file)
    if not loaded then error(err) end
    local s, serr = scripts.load(merged.scripts_dir)
    if not s then error(serr) end
    merged.scripts = s
    opts, pricing = merged, loaded
    return _M
end

local function poll(premature)
    if premature then return end
    control.refresh(opts)
end

local started = false

-- Starts the per-worker control state reader (init_worker phase; once per worker, however
-- often a platform wrapper calls it).
function _M.init_worker()
    if started then return end
    started = true
    ngx.timer.at(0, poll)
    ngx.timer.every(opts.control_poll_ms / 1000, poll)
end

local function refuse(ctx, refusal)
    return responses.send(refusal, ctx.request_id)
end

local function plan_for(ctx, route, customer, price, amount, mode)
    local key = ngx.var.http_idempotency_key
    local plan = {
        customer = customer, credit_type = price.credit_type, amount = amount,
        overdraft = price.overdraft, shadow = mode == "shadow",
        hold_ttl_ms = pricing.defaults.hold_ttl_ms, request_id = ctx.request_id,
        route = route.name, feature = route.feature, pricing_version = price.pricing_version,
        store_timeout_ms = route.store_timeout_ms, failure_policy = route.failure_policy,
        top_up_url = pricing.billing.top_up_url ~= cjson.null and pricing.billing.top_up_url or nil,
        base_hold_id = "h-" .. ctx.request_id,
    }
    if key then
        local keyed = require("creditgate.keyed")
        keyed.bind(plan, customer, key, route)
    end
    return plan
end

local function strip_identity_headers(customer)
    local id = pricing.identity
    for _, name in ipairs(id.strip_headers) do ngx.req.clear_header(name) end
    ngx.req.set_header(id.customer_header, customer)
end

-- The access phase: answers 401/402/404/503 itself or lets the request through.
function _M.access()
    local ctx = { request_id = ngx.var.request_id }
    ngx.ctx.creditgate = ctx
    ngx.req.set_header(responses.HEADER_REQUEST_ID, ctx.request_id)
    local method, path = ngx.req.get_method(), ngx.var.uri
    local route = pricing_mod.match(pricing, method, ngx.var.http_host, path)
    if not route then
        if pricing.defaults.unmatched == "pass_through" then return end
        return refuse(ctx, responses.no_route(method, path))
    end
    ctx.route = route
    local upgrade = ngx.var.http_upgrade
    if route.upgrade == "refuse" and upgrade then
        return refuse(ctx, responses.upgrade_refused(route.name, upgrade))
    end
    local route_mode = control.route_mode(route)
    if route_mode == "off" then return end
    local customer, refusal = identity.identify(opts, pricing, route)
    if not customer then return refuse(ctx, refusal) end
    strip_identity_headers(customer)
    local mode = control.customer_mode(route_mode, customer)
    if mode == "off" then return end
    local price = pricing_mod.cost_for(pricing, route.feature, customer)
    if not price then return refuse(ctx, responses.internal_error("the request cannot be priced")) end
    ctx.pricing_version = price.pricing_version
    local amount, units = cost.reserve_amount(price.rule)
    if not amount then
        if units.internal then return refuse(ctx, responses.internal_error(units.internal)) end
        return refuse(ctx, responses.invalid_units(units.kind, units.name, units.problem))
    end
    if price.rule.kind == "from_response" then ctx.rule = price.rule end
    if amount == 0 then
        ctx.charge = { credit_type = price.credit_type, charged = 0 }
        return
    end
    local plan = plan_for(ctx, route, customer, price, amount, mode)
    local reserved, refused = hold.reserve(opts, plan)
    if not reserved then return refuse(ctx, refused) end
    ctx.plan, ctx.hold, ctx.charge, ctx.replay = plan, reserved.hold, reserved.charge, reserved.replay
end

-- The header filter phase: charge headers, and the usage header or body kind of a
-- response-priced request.
function _M.header_filter()
    local ctx = ngx.ctx.creditgate
    if not ctx or ctx.refused then return end
    if ctx.rule and ctx.hold then
        ctx.inspector = usage.start(ctx.rule)
    end
    responses.charge_headers(ctx)
end

-- The body filter phase: feeds the usage reader (the body passes unchanged).
function _M.body_filter()
    local ctx = ngx.ctx.creditgate
    if ctx and ctx.inspector then
        usage.feed(ctx.inspector, ngx.arg[1], ngx.arg[2])
    end
end

-- Whether the hold settles or voids, from the upstream's status (`void` when the upstream
-- never answered, answered an interim status, or a 5xx on a route that voids them).
local function end_for(route)
    local status = tonumber(ngx.var.upstream_status and ngx.var.upstream_status:match("(%d+)%s*$"))
    if not status then return "void" end
    if status == 101 then return "settle" end
    if status < 200 then return "void" end
    if status >= 500 and route.on_upstream_error == "void" then return "void" end
    return "settle"
end

-- The log phase: settles or voids the request's hold in the background.
function _M.log()
    local ctx = ngx.ctx.creditgate
    if not ctx or not ctx.hold or not ctx.hold.hold_id then return end
    local op = end_for(ctx.route)
    local actual = ctx.plan.amount
    if ctx.inspector then
        local amount, outcome = usage.settle(ctx.inspector)
        ngx.log(ngx.INFO, "creditgate: cost read from the response: ", amount, " (", outcome, ")")
        actual = amount
    elseif ctx.rule then
        actual = math.min(ctx.rule.usage.fallback, ctx.rule.max)
    end
    hold.finish(opts, ctx.hold, op, actual, ctx.plan)
end

return _M
