-- expire_grant: expires what is left of a grant past its expires_at (breakage). Credits
-- that pending holds took from it stay with those holds; if a hold later returns them,
-- they become breakage in that hold's event.
-- KEYS: 1 grants, 2 balance, 3 grant_expiry, 4 events
-- ARGV: 1 customer, 2 grant_id
-- Reply: {'expired', at, amount} | {'not_due', at, expires_at} | {'already_expired', at}
--        | {'unknown', at}
local customer, e1 = id_arg(1, 'customer')
local grant_id, e2 = id_arg(2, 'grant_id')
local err = e1 or e2
if err then return redis.error_reply(err) end

local now = now_ms()
local member = customer .. '/' .. grant_id
local packed = redis.call('HGET', KEYS[1], grant_id)
if not packed then
  redis.call('ZREM', KEYS[3], member)
  return { 'unknown', now }
end
local g = unpack_grant(grant_id, packed)
if g.expired == 1 then
  redis.call('ZREM', KEYS[3], member)
  return { 'already_expired', now }
end
if g.expires_at == 0 or g.expires_at > now then return { 'not_due', now, g.expires_at } end

local amount = g.remaining
g.remaining = 0
g.expired = 1
if g.held == 0 then
  redis.call('HDEL', KEYS[1], grant_id)
else
  redis.call('HSET', KEYS[1], grant_id, pack_grant(g))
end
redis.call('ZREM', KEYS[3], member)
balance_add(KEYS[2], g.ctype, 'avail', -amount)
xadd(KEYS[4], {
  'v', '1', 'event_id', 'grant:' .. grant_id .. ':expired', 'kind', 'grant_expired',
  'at', fmt(now), 'customer', customer, 'credit_type', g.ctype, 'grant_id', grant_id,
  'amount', fmt(amount), 'held', fmt(g.held),
})
return { 'expired', now, amount }
