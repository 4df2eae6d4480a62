-- creditgate.responses: the module's own answers (401, 402, 404, 409, 422, 500, 503) with
-- the same JSON bodies and headers as creditgate-gateway's `responses.rs`, and the charge
-- headers of a proxied response. Writes to the client only through ngx.say/ngx.header.
local cjson = require("cjson.safe")

local _M = {}

_M.HEADER_CHARGED = "x-credits-charged"
_M.HEADER_REMAINING = "x-credits-remaining"
_M.HEADER_CREDIT_TYPE = "x-credit-type"
_M.HEADER_PRICING_VERSION = "x-creditgate-pricing-version"
_M.HEADER_REQUEST_ID = "x-request-id"
_M.HEADER_REPLAY = "x-creditgate-replay"

function _M.unauthorized(message)
    return { status = 401, body = { error = "unauthorized", message = message } }
end

function _M.insufficient(credit_type, required, available, top_up_url)
    return { status = 402, body = {
        error = "insufficient_credits",
        message = string.format("this request needs %d %s credits and %d are available",
            required, credit_type, available),
        credit_type = credit_type,
        required = required,
        available = available,
        top_up_url = top_up_url or cjson.null,
    } }
end

function _M.no_route(method, path)
    return { status = 404, body = { error = "no_route",
        message = string.format("no priced route matches %s %s", method, path) } }
end

function _M.invalid_units(kind, name, problem)
    local message
    if problem == "conflicting" then
        message = string.format("%s %s is given more than once with different values",
            kind == "header" and "header" or "query parameter", name)
    else
        message = string.format("%s %s is not a whole number",
            kind == "header" and "header" or "query parameter", name)
    end
    return { status = 400, body = { error = "invalid_units", message = message,
        parameter = name, ["in"] = kind } }
end

function _M.upgrade_refused(route, upgrade)
    return { status = 403, body = { error = "upgrade_refused", message = string.format(
        "route %q does not allow switching protocols (upgrade: %s); send the request without an upgrade header",
        route, upgrade) } }
end

function _M.idempotency_in_progress(message)
    return { status = 409, body = { error = "idempotency_key_in_progress", message = message } }
end

function _M.idempotency_key_reused(original_request_id)
    return { status = 422, body = { error = "idempotency_key_reused",
        message = "the Idempotency-Key header was used before for a different request; use a new key for a new request",
        original_request_id = original_request_id or cjson.null } }
end

function _M.idempotency_replays_exhausted(original_request_id, replays)
    return { status = 409, body = { error = "idempotency_replays_exhausted",
        message = string.format("the request with this Idempotency-Key was charged as request %s and replayed %d times since, all this route allows; send a new Idempotency-Key to run it again (charged)",
            original_request_id, replays),
        original_request_id = original_request_id, replays = replays } }
end

function _M.store_unavailable(reason)
    return { status = 503, body = { error = "credit_store_unavailable", message = string.format(
        "credits cannot be checked right now (%s); retry later", reason) } }
end

function _M.api_key_unverifiable(reason)
    return { status = 503, body = { error = "credit_store_unavailable", message = string.format(
        "the API key cannot be checked right now (%s); retry later", reason) } }
end

function _M.internal_error(message)
    return { status = 500, body = { error = "internal_error", message = message } }
end

-- Answers `refusal` and ends the request, with the request id in body and header.
function _M.send(refusal, request_id)
    -- The header filter runs for this answer too: it must add no charge headers.
    local ctx = ngx.ctx.creditgate
    if ctx then ctx.refused = true end
    refusal.body.request_id = request_id
    local body = cjson.encode(refusal.body)
    ngx.status = refusal.status
    ngx.header["content-type"] = "application/json"
    ngx.header["content-length"] = #body
    ngx.header[_M.HEADER_REQUEST_ID] = request_id
    ngx.header["cache-control"] = "no-store"
    ngx.print(body)
    return ngx.exit(refusal.status)
end

-- Adds the charge headers, the pricing version, the request id and the replay number of
-- a proxied response (header filter phase).
function _M.charge_headers(ctx)
    local charge = ctx.charge
    if charge then
        ngx.header[_M.HEADER_CHARGED] = tostring(charge.charged)
        ngx.header[_M.HEADER_CREDIT_TYPE] = charge.credit_type
        if charge.remaining ~= nil then
            ngx.header[_M.HEADER_REMAINING] = string.format("%d", charge.remaining)
        end
    end
    if ctx.pricing_version then
        ngx.header[_M.HEADER_PRICING_VERSION] = ctx.pricing_version
    end
    ngx.header[_M.HEADER_REQUEST_ID] = ctx.request_id
    if ctx.replay then
        ngx.header[_M.HEADER_REPLAY] = tostring(ctx.replay)
    end
end

return _M
