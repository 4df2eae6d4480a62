-- void: cancels a pending hold and returns all of it (the upstream failed, nothing to bill).
-- KEYS: 1 grants, 2 balance, 3 hold, 4 deadlines, 5 grant_expiry, 6 events
-- ARGV: 1 customer, 2 hold_id
-- Reply: {'voided', at, returned} | {'already_posted', at, posted} | {'already_voided', at}
--        | {'already_expired', at} | {'unknown', at}
local customer, e1 = id_arg(1, 'customer')
local hold_id, e2 = id_arg(2, 'hold_id')
local err = e1 or e2
if err then return redis.error_reply(err) end

local now = now_ms()
local h = hold_fields(KEYS[3])
if not h or h.customer ~= customer then return { 'unknown', now } end
if h.state ~= 'pending' then return already(h, now) end

local _, _, returned, od_back, breakage, back_total = release(KEYS[1], KEYS[2], KEYS[5], customer, h, 0)
finish_hold(KEYS[3], KEYS[4], customer, hold_id, 'voided', 0, now)
xadd(KEYS[6], {
  'v', '1', 'event_id', hold_event_id(hold_id, h.nonce, 'voided'), 'kind', 'hold_voided',
  'at', fmt(now),
  'customer', customer, 'credit_type', h.type, 'hold_id', hold_id, 'held', h.amount,
  'returned', fmt_draws(returned), 'returned_overdraft', fmt(od_back),
  'breakage', fmt_draws(breakage), 'request_id', h.request_id, 'route', h.route,
  'feature', h.feature, 'pricing_version', h.pricing_version or '',
})
return { 'voided', now, back_total }
