-- grant: adds credits of one type to a customer; idempotent by grant id.
-- KEYS: 1 grants, 2 balance, 3 applied, 4 grant_expiry, 5 events
-- ARGV: 1 customer, 2 grant_id, 3 credit_type, 4 amount, 5 priority, 6 expires_at_ms (0 = never),
--       7 cost_basis, 8 source, 9 actor, 10 reason
-- Reply: {'granted', at, debt_repaid} | {'duplicate', at} | {'conflict', at, first_type, first_amount}
--        | {'already_expired', at}
local customer, e1 = id_arg(1, 'customer')
local grant_id, e2 = id_arg(2, 'grant_id')
local ctype, e3 = id_arg(3, 'credit_type')
local amount, e4 = int_arg(4, 'amount', 1, MAX_AMOUNT)
local priority, e5 = int_arg(5, 'priority', 0, 1000000)
local expires_at, e6 = int_arg(6, 'expires_at_ms', 0, MAX_AMOUNT)
local cost_basis, e7 = int_arg(7, 'cost_basis', 0, MAX_AMOUNT)
local source, e8 = id_arg(8, 'source')
local actor, e9 = text_arg(9, 'actor')
local reason, e10 = text_arg(10, 'reason')
local err = e1 or e2 or e3 or e4 or e5 or e6 or e7 or e8 or e9 or e10
if err then return redis.error_reply(err) end

local now = now_ms()
local first = redis.call('HGET', KEYS[3], grant_id)
if first then
  local first_type, first_amount = string.match(first, '^([^|]+)|(%d+)')
  if first_type == ctype and tonumber(first_amount) == amount then
    return { 'duplicate', now }
  end
  return { 'conflict', now, first_type, tonumber(first_amount) }
end
if expires_at ~= 0 and expires_at <= now then
  return { 'already_expired', now }
end

-- Credits owed from overdraft are repaid first from a new grant.
local debt = balance_field(KEYS[2], ctype, 'debt')
local repaid = math.min(debt, amount)
local g = {
  id = grant_id, ctype = ctype, remaining = amount - repaid, held = 0, priority = priority,
  expires_at = expires_at, cost_basis = cost_basis, created = now, expired = 0,
}
if g.remaining > 0 then
  redis.call('HSET', KEYS[1], grant_id, pack_grant(g))
  if expires_at ~= 0 then
    redis.call('ZADD', KEYS[4], expires_at, customer .. '/' .. grant_id)
  end
end
redis.call('HSET', KEYS[3], grant_id, ctype .. '|' .. fmt(amount) .. '|' .. fmt(now))
balance_add(KEYS[2], ctype, 'debt', -repaid)
balance_add(KEYS[2], ctype, 'avail', amount)
xadd(KEYS[5], {
  'v', '1', 'event_id', 'grant:' .. grant_id .. ':added', 'kind', 'grant_added', 'at', fmt(now),
  'customer', customer, 'credit_type', ctype, 'grant_id', grant_id, 'amount', fmt(amount),
  'debt_repaid', fmt(repaid), 'priority', fmt(priority), 'expires_at', fmt(expires_at),
  'cost_basis', fmt(cost_basis), 'source', source, 'actor', actor, 'reason', reason,
})
return { 'granted', now, repaid }
