-- creditgate protocol prelude: helpers shared by every script.
-- Each script is sent to Redis as this prelude followed by the script's own body,
-- so the whole text runs as one atomic step. See PROTOCOL.md for keys and events.

-- Lua numbers are doubles: every amount stays below 2^53 so integer arithmetic is exact.
local MAX_AMOUNT = 9007199254740991
local MAX_TTL_MS = 86400000 * 30

-- Integers are always formatted with %d: tostring() of a large double uses %.14g and
-- would silently round an amount.
local function fmt(n)
  return string.format('%d', n)
end

-- The server clock in milliseconds; the caller's clock is never trusted.
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- Argument parsers return the value, or nil and a message naming the argument.
local function int_arg(i, name, min, max)
  local raw = ARGV[i]
  local v = tonumber(raw)
  if v == nil or v ~= math.floor(v) or v < min or v > max then
    return nil, 'CG_BADARG ' .. name .. ' must be an integer in [' .. fmt(min) .. ', ' .. fmt(max)
      .. '], got "' .. tostring(raw) .. '"'
  end
  return v
end

local function id_arg(i, name)
  local raw = ARGV[i]
  if raw == nil or #raw == 0 or #raw > 128 or not string.find(raw, '^[%w_%.@%-]+$') then
    return nil, 'CG_BADARG ' .. name .. ' must be 1-128 characters of [A-Za-z0-9_.@-], got "'
      .. tostring(raw) .. '"'
  end
  return raw
end

local function text_arg(i, name)
  local raw = ARGV[i]
  if raw == nil or #raw > 1024 then
    return nil, 'CG_BADARG ' .. name .. ' must be at most 1024 bytes'
  end
  return raw
end

-- A grant is packed as type|remaining|held|priority|expires_at|cost_basis|created|expired.
local function unpack_grant(id, packed)
  local f = {}
  for part in string.gmatch(packed, '[^|]+') do
    f[#f + 1] = part
  end
  return {
    id = id,
    ctype = f[1],
    remaining = tonumber(f[2]),
    held = tonumber(f[3]),
    priority = tonumber(f[4]),
    expires_at = tonumber(f[5]),
    cost_basis = tonumber(f[6]),
    created = tonumber(f[7]),
    expired = tonumber(f[8]),
  }
end

local function pack_grant(g)
  return g.ctype .. '|' .. fmt(g.remaining) .. '|' .. fmt(g.held) .. '|' .. fmt(g.priority) .. '|'
    .. fmt(g.expires_at) .. '|' .. fmt(g.cost_basis) .. '|' .. fmt(g.created) .. '|' .. fmt(g.expired)
end

-- A grant can be drawn from while it is not expired, neither flagged by expire_grant nor
-- past its expires_at (0 means it never expires).
local function usable(g, now)
  return g.expired == 0 and (g.expires_at == 0 or g.expires_at > now)
end

-- Byte-wise string order. Lua's `<` on strings follows the server's locale (strcoll), which
-- would make the order depend on how redis-server was started.
local function bytes_less(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- Burn order: lower priority value first, then soonest expiry (never-expiring last),
-- then free before paid, then oldest, then grant id so the order is total.
local function burns_before(a, b)
  if a.priority ~= b.priority then return a.priority < b.priority end
  local ea = a.expires_at == 0 and MAX_AMOUNT or a.expires_at
  local eb = b.expires_at == 0 and MAX_AMOUNT or b.expires_at
  if ea ~= eb then return ea < eb end
  local fa = a.cost_basis == 0 and 0 or 1
  local fb = b.cost_basis == 0 and 0 or 1
  if fa ~= fb then return fa < fb end
  if a.created ~= b.created then return a.created < b.created end
  return bytes_less(a.id, b.id)
end

-- The usable grants of one credit type, in burn order, and the sum of their remaining.
local function usable_grants(grants_key, ctype, now)
  local flat = redis.call('HGETALL', grants_key)
  local list = {}
  local total = 0
  for i = 1, #flat, 2 do
    local g = unpack_grant(flat[i], flat[i + 1])
    if g.ctype == ctype and usable(g, now) and g.remaining > 0 then
      list[#list + 1] = g
      total = total + g.remaining
    end
  end
  table.sort(list, burns_before)
  return list, total
end

local function balance_field(balance_key, ctype, field)
  return tonumber(redis.call('HGET', balance_key, ctype .. ':' .. field) or '0')
end

local function balance_add(balance_key, ctype, field, delta)
  if delta ~= 0 then
    local v = balance_field(balance_key, ctype, field) + delta
    redis.call('HSET', balance_key, ctype .. ':' .. field, fmt(v))
  end
end

-- Live available credits of one type: usable remaining, less debt and the overdraft part
-- of pending holds. Negative while the customer is in overdraft.
local function available(balance_key, total_usable, ctype)
  return total_usable - balance_field(balance_key, ctype, 'debt') - balance_field(balance_key, ctype, 'odheld')
end

-- Takes up to want from the grants in order; returns the draws (grant id, amount), in
-- order, and how much was taken. Mutates the grants' remaining (and held when hold is true);
-- a grant left with nothing remaining or held leaves the hash and the expiry index.
local function take(grants_key, expiry_key, customer, list, want, hold)
  local draws = {}
  local taken = 0
  for _, g in ipairs(list) do
    if taken >= want then break end
    local d = math.min(g.remaining, want - taken)
    if d > 0 then
      g.remaining = g.remaining - d
      if hold then g.held = g.held + d end
      taken = taken + d
      draws[#draws + 1] = { g.id, d }
      if g.remaining == 0 and g.held == 0 then
        redis.call('HDEL', grants_key, g.id)
        redis.call('ZREM', expiry_key, customer .. '/' .. g.id)
      else
        redis.call('HSET', grants_key, g.id, pack_grant(g))
      end
    end
  end
  return draws, taken
end

local function fmt_draws(draws)
  local parts = {}
  for i, d in ipairs(draws) do
    parts[i] = d[1] .. ':' .. fmt(d[2])
  end
  return table.concat(parts, ',')
end

local function parse_draws(s)
  local draws = {}
  if s == nil then return draws end
  for id, amount in string.gmatch(s, '([^:,]+):(%d+)') do
    draws[#draws + 1] = { id, tonumber(amount) }
  end
  return draws
end

-- Adds amount to the entry for id in an ordered list of draws.
local function add_draw(draws, id, amount)
  if amount <= 0 then return end
  for _, d in ipairs(draws) do
    if d[1] == id then
      d[2] = d[2] + amount
      return
    end
  end
  draws[#draws + 1] = { id, amount }
end

-- A hold event's id: 'hold:<hold_id>:<nonce>:<what>'. The nonce is the hold's placement
-- time (ms, field 'nonce' of its record, written by reserve), so a hold placed again under
-- an id whose record is gone (expired 24 h after it resolved, or lost with the data) never
-- reuses an event id the ledger holds. Hold ids never contain ':'. A hold placed before
-- nonces existed has none and keeps 'hold:<hold_id>:<what>'.
local function hold_event_id(hold_id, nonce, what)
  if nonce == nil or nonce == '' then return 'hold:' .. hold_id .. ':' .. what end
  return 'hold:' .. hold_id .. ':' .. nonce .. ':' .. what
end

local function hold_fields(hold_key)
  local flat = redis.call('HGETALL', hold_key)
  if #flat == 0 then return nil end
  local h = {}
  for i = 1, #flat, 2 do
    h[flat[i]] = flat[i + 1]
  end
  return h
end

-- Resolves a pending hold: posts `post` of it (0 for void and expiry) from its draws in
-- order, then its overdraft part, and returns the rest to the grants it came from. A
-- grant that expire_grant has already expired takes nothing back: what would return to
-- it is breakage. Returns the burns, the overdraft posted, the returns, the overdraft
-- returned, the breakage, and the total that went back to available.
local function release(grants_key, balance_key, expiry_key, customer, h, post)
  local ctype = h.type
  local left = post
  local burns, returned, breakage = {}, {}, {}
  local returned_total = 0
  for _, d in ipairs(parse_draws(h.draws)) do
    local id, amount = d[1], d[2]
    local burn = math.min(amount, left)
    left = left - burn
    add_draw(burns, id, burn)
    local back = amount - burn
    local packed = redis.call('HGET', grants_key, id)
    if packed then
      local g = unpack_grant(id, packed)
      g.held = g.held - amount
      if g.expired == 1 then
        add_draw(breakage, id, back)
      else
        g.remaining = g.remaining + back
        add_draw(returned, id, back)
        returned_total = returned_total + back
      end
      if g.remaining == 0 and g.held == 0 then
        redis.call('HDEL', grants_key, id)
        redis.call('ZREM', expiry_key, customer .. '/' .. id)
      else
        redis.call('HSET', grants_key, id, pack_grant(g))
      end
    else
      -- Only reachable if the grant was removed by hand; the credits cannot go back.
      add_draw(breakage, id, back)
    end
  end
  local od = tonumber(h.overdraft)
  local od_burn = math.min(od, left)
  local od_back = od - od_burn
  balance_add(balance_key, ctype, 'odheld', -od)
  balance_add(balance_key, ctype, 'debt', od_burn)
  balance_add(balance_key, ctype, 'held', -tonumber(h.amount))
  balance_add(balance_key, ctype, 'avail', returned_total + od_back)
  return burns, od_burn, returned, od_back, breakage, returned_total + od_back
end

-- A stream id '<ms>-<seq>' as its two integers.
local function split_stream_id(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end

-- Stream ids compared as the pairs of integers they are.
local function stream_id_after(a, b)
  local am, as = split_stream_id(a)
  local bm, bs = split_stream_id(b)
  if am ~= bm then return am > bm end
  return as > bs
end

-- Every event carries the shard's position in its stream id: '<ms>-<n>', where n is the
-- shard's event sequence ('#seq' of the positions hash, +1 per event) and ms the server
-- time, never below the previous event's. A Redis that comes back behind the ledger
-- (a promoted lagging replica, a crash losing the last second of AOF) then has a sequence
-- below the ledger's newest recorded one, which the sidecar detects. The positions hash
-- (the events key with ':positions' appended, in the shard's hash slot) also keeps
-- '#last', the shard's newest id, and per customer the id of the customer's newest event:
-- restore's fence.
local function xadd(events_key, fields)
  local positions = events_key .. ':positions'
  local seq = redis.call('HINCRBY', positions, '#seq', 1)
  local ms = now_ms()
  local last = redis.call('HGET', positions, '#last')
  if not last then
    local newest = redis.call('XREVRANGE', events_key, '+', '-', 'COUNT', 1)
    if newest[1] then last = newest[1][1] end
  end
  if last then
    local last_ms, last_seq = split_stream_id(last)
    if last_ms > ms then ms = last_ms end
    if last_ms == ms and last_seq >= seq then ms = ms + 1 end
  end
  local id = redis.pcall('XADD', events_key, fmt(ms) .. '-' .. fmt(seq), unpack(fields))
  if type(id) == 'table' and id.err then
    -- Only an entry added by hand with a later id gets here: the event still goes out.
    id = redis.call('XADD', events_key, '*', unpack(fields))
  end
  for i = 1, #fields - 1, 2 do
    if fields[i] == 'customer' then
      redis.call('HSET', positions, fields[i + 1], id, '#last', id)
      break
    end
  end
end

-- Marks a resolved hold and lets its record live for the retention period, so retries
-- get the typed "already ..." outcome instead of a second resolution.
local function finish_hold(hold_key, deadlines_key, customer, hold_id, state, posted, now)
  redis.call('HSET', hold_key, 'state', state, 'posted', fmt(posted), 'resolved', fmt(now))
  redis.call('PEXPIRE', hold_key, tonumber(redis.call('HGET', hold_key, 'retain')))
  redis.call('ZREM', deadlines_key, customer .. '/' .. hold_id)
end

-- The typed reply for a hold that is no longer pending.
local function already(h, now)
  if h.state == 'posted' then return { 'already_posted', now, tonumber(h.posted) } end
  if h.state == 'voided' then return { 'already_voided', now } end
  return { 'already_expired', now }
end
