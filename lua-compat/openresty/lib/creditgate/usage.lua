-- creditgate.usage: the actual cost of a `from_response` request, read as the response
-- passes (header filter: the usage header; body filter: a JSON body, or the `data:` lines of
-- a `text/event-stream`, where the last value seen of each field counts), with the rule's
-- fallback when usage cannot be read, as the gateway's `usage` module settles it. Memory
-- is bounded by `inspect_max_bytes`. Compressed bodies are not decoded: they settle at the
-- fallback. No I/O.
local cjson = require("cjson.safe")

local _M = {}

local MAX_AMOUNT = 9007199254740991

local function walk(doc, path)
    for key in path:gmatch("[^.]+") do
        if type(doc) ~= "table" then return nil end
        doc = doc[key]
    end
    return doc
end

-- Starts inspecting a response under `rule` (a from_response rule) with its headers.
function _M.start(rule)
    local usage = rule.usage
    local state = { usage = usage, max = rule.max, values = {}, events = 0,
        complete = false, buffer = {}, size = 0 }
    if usage.header ~= nil and usage.header ~= cjson.null then
        local raw = ngx.header[usage.header.name]
        if raw ~= nil then
            if type(raw) == "table" then raw = raw[1] end
            local digits = tostring(raw):match("^%s*(%d+)%s*$")
            state.header_units = digits and tonumber(digits) or false
            return state
        end
    end
    if #usage.fields == 0 then
        state.body = "ignored"
        return state
    end
    local encoding = (ngx.header["content-encoding"] or ""):lower()
    if encoding ~= "" and encoding ~= "identity" then
        state.body = "undecodable"
        return state
    end
    local ctype = (ngx.header["content-type"] or ""):lower()
    state.body = ctype:find("^%s*text/event%-stream") and "sse" or "json"
    return state
end

local function read_fields(state, doc)
    if type(doc) ~= "table" then return false end
    for i, field in ipairs(state.usage.fields) do
        local value = walk(doc, field.path)
        if value ~= nil then
            if type(value) ~= "number" or value < 0 or value ~= math.floor(value) then
                return false
            end
            state.values[i] = value
        end
    end
    return true
end

local function sse_line(state, line)
    line = line:gsub("\r$", "")
    if line == "" then
        if state.event_has_data then state.events = state.events + 1 end
        state.event_has_data = false
        return
    end
    local data = line:match("^data:%s?(.*)$")
    if not data then return end
    state.event_has_data = true
    for _, field in ipairs(state.usage.fields) do
        local leaf = field.path:match("([^.]+)$")
        if data:find(leaf, 1, true) then
            if not read_fields(state, cjson.decode(data)) then
                state.garbage = true
            end
            return
        end
    end
end

-- A chunk of the response body passed (body filter phase).
function _M.feed(state, chunk, eof)
    if state.body == "json" and chunk and not state.over_limit then
        state.size = state.size + #chunk
        if state.size > state.usage.inspect_max_bytes then
            state.over_limit, state.buffer = true, {}
        else
            state.buffer[#state.buffer + 1] = chunk
        end
    elseif state.body == "sse" and chunk then
        local text = (state.partial or "") .. chunk
        local start = 1
        while true do
            local newline = text:find("\n", start, true)
            if not newline then break end
            sse_line(state, text:sub(start, newline - 1))
            start = newline + 1
        end
        local tail = text:sub(start)
        if #tail > state.usage.inspect_max_bytes then
            state.over_limit, tail = true, ""
        end
        state.partial = tail
    end
    if eof then state.complete = true end
end

local function amount_of_fields(state)
    local seen, total = false, 0
    for i, field in ipairs(state.usage.fields) do
        local value = state.values[i]
        if value then
            seen = true
            total = total + value * field.rate
        end
    end
    return seen and math.min(total, MAX_AMOUNT) or nil
end

-- The amount to settle and how it was found (`header`, `json`, `sse`, `stream_cut`,
-- `missing`, `unparseable`, `over_limit`).
function _M.settle(state)
    local usage, max = state.usage, state.max
    local fallback = math.min(usage.fallback, max)
    if state.header_units then
        return math.min(state.header_units * usage.header.rate, max, MAX_AMOUNT), "header"
    elseif state.header_units == false then
        return fallback, "unparseable"
    end
    if state.body == "ignored" then return fallback, "missing" end
    if state.body == "undecodable" then return fallback, "unparseable" end
    if state.body == "json" then
        if state.over_limit then return fallback, "over_limit" end
        if not state.complete then return fallback, "stream_cut" end
        local body = table.concat(state.buffer)
        if body == "" then return fallback, "missing" end
        if not read_fields(state, cjson.decode(body)) then return fallback, "unparseable" end
        local amount = amount_of_fields(state)
        if amount then return math.min(amount, max), "json" end
        return fallback, "missing"
    end
    local from_fields = amount_of_fields(state)
    if not state.complete then
        local per_event = usage.per_event ~= cjson.null and usage.per_event
            and state.events * usage.per_event or nil
        if not from_fields and not per_event then return fallback, "stream_cut" end
        return math.min(math.max(from_fields or 0, per_event or 0), max), "stream_cut"
    end
    if from_fields then return math.min(from_fields, max), "sse" end
    if state.garbage then return fallback, "unparseable" end
    if state.over_limit then return fallback, "over_limit" end
    return fallback, "missing"
end

return _M
