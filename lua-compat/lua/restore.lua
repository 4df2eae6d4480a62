-- restore: replaces one customer's grants, balances and applied-grant ids with the state
-- the sidecar rebuilt from its ledger (after Redis lost data, or to repair drift). Refuses
-- while the customer has pending holds, whose credits the rebuilt state could not account
-- for, and while the customer has an event newer than the last one the ledger recorded
-- (the fence: the rebuilt state would hand back a burn the ledger has not seen yet).
-- Emits no event: it reconstructs state the ledger already has.
-- KEYS: 1 grants, 2 balance, 3 applied, 4 grant_expiry, 5 deadlines, 6 positions, then the
--       hold key of each resolved hold, in ARGV order
-- ARGV: 1 customer, 2 ledger position (stream id of the customer's newest event the ledger
--       recorded from this shard, '0-0' for none), 3 n_grants, then per grant: id, type,
--       remaining, priority, expires_at, cost_basis, created; then n_debts, per type: type,
--       debt; then n_applied, per applied grant: id, type, amount; then n_resolved, per
--       hold the ledger has resolved that Redis may have pending: id, state (posted, voided,
--       expired), posted amount
-- Reply: {'restored', at, n_grants} | {'busy', at, n_pending_holds}
--      | {'behind', at, redis_position}
local customer, e1 = id_arg(1, 'customer')
if e1 then return redis.error_reply(e1) end
local ledger_position = ARGV[2]
if ledger_position == nil or not string.find(ledger_position, '^%d+%-%d+$') then
  return redis.error_reply('CG_BADARG ledger_position must be a stream id <ms>-<seq>, got "'
    .. tostring(ledger_position) .. '"')
end

-- Parse everything before writing anything.
local i = 3
local function next_arg() i = i + 1; return ARGV[i - 1] end
local function next_int(name)
  local v = tonumber(next_arg())
  if v == nil or v ~= math.floor(v) or v < 0 or v > MAX_AMOUNT then
    error({ err = 'CG_BADARG ' .. name .. ' must be an integer in [0, 2^53)' })
  end
  return v
end
local grants = {}
for _ = 1, next_int('n_grants') do
  grants[#grants + 1] = {
    id = next_arg(), ctype = next_arg(), remaining = next_int('remaining'), held = 0,
    priority = next_int('priority'), expires_at = next_int('expires_at'),
    cost_basis = next_int('cost_basis'), created = next_int('created'), expired = 0,
  }
end
local debts = {}
for _ = 1, next_int('n_debts') do
  debts[#debts + 1] = { next_arg(), next_int('debt') }
end
local applied = {}
for _ = 1, next_int('n_applied') do
  applied[#applied + 1] = { next_arg(), next_arg(), next_int('amount') }
end
-- Holds the ledger has resolved that Redis may still have pending (it came back from
-- before their resolution): they are closed as the ledger has them, never resolved again.
local resolved, closing = {}, {}
for j = 1, next_int('n_resolved') do
  local r = { id = next_arg(), state = next_arg(), posted = next_int('posted'), key = KEYS[6 + j] }
  if r.state ~= 'posted' and r.state ~= 'voided' and r.state ~= 'expired' then
    error({ err = 'CG_BADARG resolved hold state must be posted, voided or expired' })
  end
  resolved[#resolved + 1] = r
  closing[customer .. '/' .. r.id] = true
end

local now = now_ms()
local prefix = customer .. '/'
local pending = 0
for _, member in ipairs(redis.call('ZRANGE', KEYS[5], 0, -1)) do
  if string.sub(member, 1, #prefix) == prefix and not closing[member] then
    pending = pending + 1
  end
end
if pending > 0 then return { 'busy', now, pending } end
local position = redis.call('HGET', KEYS[6], customer)
if position and stream_id_after(position, ledger_position) then
  return { 'behind', now, position }
end

for _, r in ipairs(resolved) do
  local state = redis.call('HGET', r.key, 'state')
  if state == 'pending' then
    finish_hold(r.key, KEYS[5], customer, r.id, r.state, r.posted, now)
  else
    redis.call('ZREM', KEYS[5], customer .. '/' .. r.id)
  end
end

for _, id in ipairs(redis.call('HKEYS', KEYS[1])) do
  redis.call('ZREM', KEYS[4], prefix .. id)
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
local avail = {}
for _, g in ipairs(grants) do
  redis.call('HSET', KEYS[1], g.id, pack_grant(g))
  if g.expires_at ~= 0 then redis.call('ZADD', KEYS[4], g.expires_at, prefix .. g.id) end
  avail[g.ctype] = (avail[g.ctype] or 0) + g.remaining
end
for _, d in ipairs(debts) do
  if d[2] ~= 0 then
    redis.call('HSET', KEYS[2], d[1] .. ':debt', fmt(d[2]))
  end
  avail[d[1]] = (avail[d[1]] or 0) - d[2]
end
for t, v in pairs(avail) do
  redis.call('HSET', KEYS[2], t .. ':avail', fmt(v))
end
for _, a in ipairs(applied) do
  redis.call('HSET', KEYS[3], a[1], a[2] .. '|' .. fmt(a[3]) .. '|0')
end
return { 'restored', now, #grants }
