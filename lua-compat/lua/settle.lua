-- settle: posts the actual cost of a pending hold and returns the remainder; exactly once.
-- Posting more than was held takes the difference from the grants in burn order and then
-- from overdraft, as far as the overdraft limit allows; what is still missing is reported
-- as the shortfall, never silently dropped.
-- KEYS: 1 grants, 2 balance, 3 hold, 4 deadlines, 5 grant_expiry, 6 events
-- ARGV: 1 customer, 2 hold_id, 3 actual, 4 overdraft_limit
-- A hold that expired before its settle came (its request outlived the hold, or the
-- gateway could not renew it) is still charged: a late burn takes `actual` from the grants
-- in burn order, then from overdraft, at least up to the amount that was held (admitted
-- when the request started) even past the overdraft limit; beyond that only as far as the
-- limit allows. Its `hold_posted` event has `late` = 1 and `held` = 0 (the expiry already
-- returned the hold). The hold becomes `posted`, so a second settle is `already_posted`.
-- Reply: {'posted', at, posted, shortfall, returned, available_after}
--        | {'posted_late', at, posted, shortfall, available_after}
--        | {'already_posted', at, posted} | {'already_voided', at} | {'unknown', at}
local customer, e1 = id_arg(1, 'customer')
local hold_id, e2 = id_arg(2, 'hold_id')
local actual, e3 = int_arg(3, 'actual', 0, MAX_AMOUNT)
local limit, e4 = int_arg(4, 'overdraft_limit', 0, MAX_AMOUNT)
local err = e1 or e2 or e3 or e4
if err then return redis.error_reply(err) end

-- The late burn of an expired hold (see above): returns the script's reply.
local function late_burn(h, customer, hold_id, actual, limit, now)
  local ctype = h.type
  local list, total = usable_grants(KEYS[1], ctype, now)
  local room = available(KEYS[2], total, ctype) + limit
  local can = math.max(0, math.min(actual, math.max(room, tonumber(h.amount))))
  local burns, taken = take(KEYS[1], KEYS[5], customer, list, can, false)
  balance_add(KEYS[2], ctype, 'debt', can - taken)
  balance_add(KEYS[2], ctype, 'avail', -can)
  redis.call('HSET', KEYS[3], 'late', '1')
  finish_hold(KEYS[3], KEYS[4], customer, hold_id, 'posted', can, now)
  local event_at = now
  local occurred = tonumber(h.occurred or '0') or 0
  if occurred > 0 then event_at = occurred end
  xadd(KEYS[6], {
    'v', '1', 'event_id', hold_event_id(hold_id, h.nonce, 'posted'), 'kind', 'hold_posted',
    'at', fmt(event_at), 'customer', customer, 'credit_type', ctype, 'hold_id', hold_id, 'held', '0',
    'requested', fmt(actual), 'posted', fmt(can), 'burns', fmt_draws(burns),
    'overdraft', fmt(can - taken), 'returned', '', 'returned_overdraft', '0',
    'breakage', '', 'shortfall', fmt(actual - can), 'request_id', h.request_id,
    'route', h.route, 'feature', h.feature,
    'pricing_version', h.pricing_version or '', 'late', '1',
  })
  local _, total_after = usable_grants(KEYS[1], ctype, now)
  return { 'posted_late', now, can, actual - can, available(KEYS[2], total_after, ctype) }
end

local now = now_ms()
local h = hold_fields(KEYS[3])
if not h or h.customer ~= customer then return { 'unknown', now } end
if h.state == 'expired' then return late_burn(h, customer, hold_id, actual, limit, now) end
if h.state ~= 'pending' then return already(h, now) end

local held = tonumber(h.amount)
local ctype = h.type
local burns, od_posted, returned, od_back, breakage, back_total =
  release(KEYS[1], KEYS[2], KEYS[5], customer, h, math.min(actual, held))
local posted = math.min(actual, held)
local shortfall = 0
if actual > held then
  local extra = actual - held
  local list, total = usable_grants(KEYS[1], ctype, now)
  local room = available(KEYS[2], total, ctype) + limit
  local can = math.max(0, math.min(extra, room))
  local draws, taken = take(KEYS[1], KEYS[5], customer, list, can, false)
  for _, d in ipairs(draws) do
    add_draw(burns, d[1], d[2])
  end
  balance_add(KEYS[2], ctype, 'debt', can - taken)
  balance_add(KEYS[2], ctype, 'avail', -can)
  od_posted = od_posted + (can - taken)
  posted = held + can
  shortfall = extra - can
end
finish_hold(KEYS[3], KEYS[4], customer, hold_id, 'posted', posted, now)
local list, total = usable_grants(KEYS[1], ctype, now)
-- A hold placed for usage that happened earlier posts at that time too (see reserve).
local event_at = now
local occurred = tonumber(h.occurred or '0') or 0
if occurred > 0 then event_at = occurred end
xadd(KEYS[6], {
  'v', '1', 'event_id', hold_event_id(hold_id, h.nonce, 'posted'), 'kind', 'hold_posted',
  'at', fmt(event_at), 'customer', customer, 'credit_type', ctype, 'hold_id', hold_id, 'held', fmt(held),
  'requested', fmt(actual), 'posted', fmt(posted), 'burns', fmt_draws(burns),
  'overdraft', fmt(od_posted), 'returned', fmt_draws(returned), 'returned_overdraft', fmt(od_back),
  'breakage', fmt_draws(breakage), 'shortfall', fmt(shortfall), 'request_id', h.request_id,
  'route', h.route, 'feature', h.feature,
  'pricing_version', h.pricing_version or '',
})
return { 'posted', now, posted, shortfall, back_total, available(KEYS[2], total, ctype) }
