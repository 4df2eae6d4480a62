-- creditgate.pricing: the pricing table exported by `creditgate-gateway export-pricing`:
-- loading it, matching a request to a route (first in file order), and the price of a
-- feature for a customer (customer, cohort, plan, default plan, feature: as the gateway's
-- `PricingConfig::cost_for`). Pure lookups after loading; no Redis.
local cjson = require("cjson.safe")

local _M = {}

local FORMAT = 1

-- Reads and checks the export at `path`; returns the table or nil and an error naming
-- the file and what is wrong.
function _M.load(path)
    local file, err = io.open(path, "rb")
    if not file then
        return nil, "creditgate: pricing_file " .. path .. ": cannot read: " .. tostring(err)
    end
    local text = file:read("*a")
    file:close()
    local pricing, perr = cjson.decode(text)
    if not pricing then
        return nil, "creditgate: pricing_file " .. path .. ": not JSON: " .. tostring(perr)
    end
    if pricing.format ~= FORMAT then
        return nil, string.format("creditgate: pricing_file %s: format %s, this module reads %d"
            .. " (export it again with the matching creditgate-gateway)", path,
            tostring(pricing.format), FORMAT)
    end
    for i, route in ipairs(pricing.routes) do
        if not pricing.features[route.feature] then
            return nil, string.format("creditgate: pricing_file %s: routes[%d]: unknown feature %s",
                path, i, route.feature)
        end
    end
    return pricing
end

-- The non-empty segments of `path` (query already dropped).
local function segments_of(path)
    local out = {}
    for segment in path:gmatch("[^/]+") do
        out[#out + 1] = segment
    end
    return out
end

local function path_matches(route, parts)
    local n = 0
    for _, segment in ipairs(route.segments) do
        if segment.wildcard then
            return true
        end
        n = n + 1
        local part = parts[n]
        if part == nil then
            return false
        end
        if segment.literal and segment.literal ~= part then
            return false
        end
    end
    return parts[n + 1] == nil
end

local function method_matches(route_method, method)
    return route_method == "*" or route_method == method
        or (route_method == "GET" and method == "HEAD")
end

-- The first route in file order matching `method`, `host` (no port, any case) and `path`.
function _M.match(pricing, method, host, path)
    local parts = segments_of(path)
    if host then
        host = host:lower():gsub(":%d+$", "")
    end
    for _, route in ipairs(pricing.routes) do
        if method_matches(route.method, method)
            and (route.host == nil or route.host == cjson.null or route.host == host)
            and path_matches(route, parts) then
            return route
        end
    end
    return nil
end

local function cohort_for(pricing, customer_id, plan_name)
    for name, cohort in pairs(pricing.cohorts) do
        for _, id in ipairs(cohort.customers) do
            if id == customer_id then return name, cohort end
        end
    end
    if plan_name then
        for name, cohort in pairs(pricing.cohorts) do
            for _, plan in ipairs(cohort.plans) do
                if plan == plan_name then return name, cohort end
            end
        end
    end
    return nil
end

local function overdraft_of(overdraft, credit_type)
    if overdraft == nil or overdraft == cjson.null then
        return nil
    end
    local per = overdraft.per_credit_type[credit_type]
    return per or overdraft.default
end

-- The price of `feature_name` for `customer_id`: { rule, credit_type, overdraft,
-- pricing_version }, or nil for an unknown feature.
function _M.cost_for(pricing, feature_name, customer_id)
    local feature = pricing.features[feature_name]
    if not feature then return nil end
    local customer = pricing.customers[customer_id]
    local plan_name = customer and customer.plan
        or (pricing.default_plan ~= cjson.null and pricing.default_plan or nil)
    local plan = plan_name and pricing.plans[plan_name]
    local cohort_name, cohort = cohort_for(pricing, customer_id, plan_name)
    local rule, pinned = nil, nil
    if customer and customer.costs[feature_name] then
        rule = customer.costs[feature_name]
    elseif cohort and cohort.costs[feature_name] then
        rule, pinned = cohort.costs[feature_name], cohort_name
    elseif plan and plan.costs[feature_name] then
        rule = plan.costs[feature_name]
    else
        rule = feature.cost
    end
    local overdraft = customer and overdraft_of(customer.overdraft, feature.credit_type)
        or (plan and overdraft_of(plan.overdraft, feature.credit_type)) or 0
    local version = pricing.pricing_version
    if pinned then version = version .. "@" .. pinned end
    return { rule = rule, credit_type = feature.credit_type, overdraft = overdraft,
        pricing_version = version }
end

return _M
