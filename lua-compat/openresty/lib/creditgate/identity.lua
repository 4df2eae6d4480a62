-- creditgate.identity: who is calling, as creditgate-gateway's `identity.rs` reads it: a
-- customer id from the trusted auth-layer header when configured, else the API key from the
-- configured header and scheme, looked up by its SHA-256 in the export's key list, then in a
-- per-worker cache, then in Redis (`cg:apikey:<sha256>`). Unknown keys are refused; a key
-- Redis cannot confirm is 503 whatever the route's failure policy.
local cjson = require("cjson.safe")
local digest = require("creditgate.digest")
local responses = require("creditgate.responses")
local store = require("creditgate.store")

local _M = {}

local MISS_TTL_MS = 5000
local cache = {}

local function valid_id(id)
    return #id >= 1 and #id <= 128 and not id:find("[^A-Za-z0-9_.@-]")
end

local function key_in(identity, value)
    local scheme = identity.scheme
    if scheme == nil or scheme == cjson.null then
        return value ~= "" and value or nil
    end
    if value:sub(1, #scheme):lower() ~= scheme:lower() or value:sub(#scheme + 1, #scheme + 1) ~= " " then
        return nil
    end
    local key = value:sub(#scheme + 2)
    return key ~= "" and key or nil
end

-- The first value of request header `name` (lower case), through nginx's variable, which
-- is cheaper than building the whole header table.
local function header(name)
    return ngx.var["http_" .. name:gsub("-", "_")]
end

-- The customer id, or nil and the refusal to answer.
function _M.identify(opts, pricing, route)
    local identity = pricing.identity
    local trusted = identity.trusted_customer_header
    if trusted ~= nil and trusted ~= cjson.null then
        local customer = header(trusted)
        if customer then
            if valid_id(customer) then return customer end
            return nil, responses.unauthorized("header " .. trusted .. ": invalid customer id")
        end
    end
    local value = header(identity.header)
    if not value then
        return nil, responses.unauthorized("missing API key: no " .. identity.header .. " header")
    end
    local key = key_in(identity, value)
    if not key then
        if identity.scheme ~= nil and identity.scheme ~= cjson.null then
            return nil, responses.unauthorized(string.format(
                "malformed %s header: expected \"%s <api key>\"", identity.header, identity.scheme))
        end
        return nil, responses.unauthorized("empty " .. identity.header .. " header")
    end
    local hash = digest.sha256_hex(key)
    local listed = pricing.api_keys[hash]
    if listed then return listed end
    local now = ngx.now() * 1000
    local cached = cache[hash]
    if cached and cached.until_ms > now then
        if cached.customer then return cached.customer end
        return nil, responses.unauthorized("unknown API key")
    end
    local found, kind = store.customer_for_key(opts, hash, route.store_timeout_ms)
    if found == nil then
        return nil, responses.api_key_unverifiable(kind)
    end
    if found == ngx.null then
        cache[hash] = { until_ms = now + math.min(MISS_TTL_MS, opts.api_key_cache_ttl_ms) }
        return nil, responses.unauthorized("unknown API key")
    end
    cache[hash] = { customer = found, until_ms = now + opts.api_key_cache_ttl_ms }
    return found
end

return _M
