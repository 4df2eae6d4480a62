-- creditgate.cost: how much to reserve for a request under a cost rule of the export
-- (free, fixed, per_unit, from_response with or without `estimate_from`), as the
-- gateway's `CostRule::checked_reserve_amount` and its body estimate compute it. Reads the
-- request (headers, query, and for `estimate_from` the body); never Redis.
local cjson = require("cjson.safe")

local _M = {}

local MAX_AMOUNT = 9007199254740991 -- 2^53 - 1

local function unescape_form(text)
    return ngx.unescape_uri((text:gsub("+", " ")))
end

-- Every value of query parameter `name` (decoded names, ASCII case ignored; `&` and `;`
-- separate, as the gateway's `query_values`).
local function query_values(name)
    local query = ngx.var.args
    local values = {}
    if not query then return values end
    local wanted = name:lower()
    for pair in query:gmatch("[^&;]+") do
        local k, v = pair:match("^([^=]*)=(.*)$")
        if not k then k, v = pair, "" end
        if unescape_form(k):lower() == wanted then
            values[#values + 1] = unescape_form(v)
        end
    end
    return values
end

local function header_values(name)
    local value = ngx.req.get_headers()[name]
    if value == nil then return {} end
    if type(value) == "table" then return value end
    return { value }
end

-- "missing" | "unparseable" | "conflicting" | number
local function read_units(values)
    local units = "missing"
    for _, raw in ipairs(values) do
        local digits = raw:match("^%s*(%d+)%s*$")
        local n = digits and tonumber(digits)
        if not n or #digits > 19 then return "unparseable" end
        if units == "missing" then
            units = n
        elseif units ~= n then
            return "conflicting"
        end
    end
    return units
end

local function per_unit(rule)
    local values = rule.from == "header" and header_values(rule.name) or query_values(rule.name)
    local units = read_units(values)
    if units == "unparseable" or units == "conflicting" then
        return nil, { kind = rule.from, name = rule.name, problem = units }
    end
    if units == "missing" then
        if rule.default_units == nil or rule.default_units == cjson.null then
            return rule.max
        end
        units = rule.default_units
    end
    return math.min(units * rule.rate, rule.max)
end

local function walk(doc, path)
    for key in path:gmatch("[^.]+") do
        if type(doc) ~= "table" then return nil end
        doc = doc[key]
    end
    return doc
end

-- A body estimate: `value × rate + base` capped at `max`; `max` when the body cannot be
-- read or used (an unreadable body is always reserved at `max` here: the module does not
-- refuse with 408/411/413 as `estimate_unreadable = "refuse"` would).
local function from_body(rule)
    local from = rule.estimate_from
    ngx.req.read_body()
    local body = ngx.req.get_body_data()
    if not body or #body > from.max_body_bytes then return rule.max end
    local doc = cjson.decode(body)
    local value = type(doc) == "table" and walk(doc, from.path)
    if type(value) ~= "number" or value < 0 or value ~= math.floor(value) then
        return rule.max
    end
    return math.min(value * from.rate + from.base, rule.max, MAX_AMOUNT)
end

-- The amount to reserve, or nil and the units error to answer 400 with.
function _M.reserve_amount(rule)
    if rule.kind == "free" then return 0 end
    if rule.kind == "fixed" then return rule.amount end
    if rule.kind == "per_unit" then return per_unit(rule) end
    if rule.kind == "from_response" then
        if rule.estimate_from ~= nil and rule.estimate_from ~= cjson.null then
            return from_body(rule)
        end
        return rule.estimate
    end
    return nil, { internal = "unknown cost kind " .. tostring(rule.kind) }
end

return _M
