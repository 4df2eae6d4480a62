-- creditgate.keyed: binds a request sent with an `Idempotency-Key` to its plan as
-- creditgate-gateway's `idempotency.rs` does: the key's record id (`idem-` and 40 hex digits
-- of SHA-256(customer, 0, key)), the hold id under it, and the request's fingerprint
-- (SHA-256 of length-prefixed method, path, query and body digest). A body that is not read
-- whole (chunked or over 64 KiB) enters by its length only and allows no uncharged replay.
local digest = require("creditgate.digest")

local _M = {}

local FINGERPRINT_BODY_MAX_BYTES = 64 * 1024

-- 8-byte big-endian length, then the bytes: the gateway's length-prefixed part.
local function part(parts, bytes)
    local n, be = #bytes, {}
    for i = 8, 1, -1 do
        be[i] = string.char(n % 256)
        n = math.floor(n / 256)
    end
    parts[#parts + 1] = table.concat(be)
    parts[#parts + 1] = bytes
end

local function body_digest()
    local length = tonumber(ngx.var.http_content_length or "")
    if length and length <= FINGERPRINT_BODY_MAX_BYTES then
        ngx.req.read_body()
        local body = ngx.req.get_body_data() or ""
        if ngx.req.get_body_file() == nil and #body == length then
            return digest.sha256(body), true
        end
    end
    return length and tostring(length) or "", false
end

-- Fills in `plan`'s record id, hold id, fingerprint and replay allowance.
function _M.bind(plan, customer, key, route)
    plan.record_id = "idem-" .. digest.sha256_hex(customer .. "\0" .. key):sub(1, 40)
    plan.base_hold_id = plan.record_id .. "." .. plan.request_id
    local parts = {}
    part(parts, "creditgate-request-v1")
    part(parts, ngx.req.get_method())
    part(parts, ngx.var.uri)
    part(parts, ngx.var.args and ("?" .. ngx.var.args) or "")
    local body, hashed = body_digest()
    part(parts, hashed and "body" or "unread")
    part(parts, body)
    plan.fingerprint = digest.sha256_hex(table.concat(parts))
    plan.replay_max = hashed and route.idempotency.replays or 0
    plan.replay_window_ms = route.idempotency.window_ms
end

return _M
