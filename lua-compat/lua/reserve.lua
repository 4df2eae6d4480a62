-- reserve: places a hold of `amount` with a deadline, drawing from grants in burn order;
-- idempotent by hold id (a retry returns the first outcome and takes nothing more).
-- KEYS: 1 grants, 2 balance, 3 hold, 4 deadlines, 5 grant_expiry, 6 events
-- ARGV: 1 customer, 2 hold_id, 3 credit_type, 4 amount, 5 ttl_ms, 6 overdraft_limit,
--       7 force (1: place the hold even past the overdraft limit, for shadow mode),
--       8 request_id, 9 route, 10 feature, 11 retain_ms,
--       12 pricing_version (the pricing config version that priced the request; may be empty),
--       13 occurred_at_ms (0: now; else the time the usage happened, used as the `at` of
--          this hold's placed and posted events so the ledger orders it by event time)
-- With a 7th key, the reserve of a request that carries an idempotency key:
-- KEYS: 7 the key's record (hash: fp, hold, request_id, first, replays)
-- ARGV: 14 fingerprint, 15 supersedes (the record's hold id the caller found voided,
--          expired or gone; may be empty), 16 replay_max, 17 replay_window_ms
-- Reply: {'placed', at, deadline, draws, overdraft, over_limit, available_after}
--        | {'replay', at, state, deadline, draws, overdraft, over_limit}
--        | {'conflict', at, first_type, first_amount} | {'insufficient', at, available}
--   and with a record: {'key_reused', at, first_request_id} | {'moved', at, hold_id}
--        | {'gone', at} | {'replayed', at, n, first_request_id}
--        | {'replays_exhausted', at, first_request_id, replays}
local customer, e1 = id_arg(1, 'customer')
local hold_id, e2 = id_arg(2, 'hold_id')
local ctype, e3 = id_arg(3, 'credit_type')
local amount, e4 = int_arg(4, 'amount', 0, MAX_AMOUNT)
local ttl_ms, e5 = int_arg(5, 'ttl_ms', 1, MAX_TTL_MS)
local limit, e6 = int_arg(6, 'overdraft_limit', 0, MAX_AMOUNT)
local force, e7 = int_arg(7, 'force', 0, 1)
local request_id, e8 = text_arg(8, 'request_id')
local route, e9 = text_arg(9, 'route')
local feature, e10 = text_arg(10, 'feature')
local retain_ms, e11 = int_arg(11, 'retain_ms', 1, MAX_TTL_MS)
local pricing_version, e12 = text_arg(12, 'pricing_version')
local occurred, e13 = int_arg(13, 'occurred_at_ms', 0, MAX_AMOUNT)
local err = e1 or e2 or e3 or e4 or e5 or e6 or e7 or e8 or e9 or e10 or e11 or e12 or e13
if err then return redis.error_reply(err) end
local keyed = KEYS[7] ~= nil
local fingerprint, supersedes, replay_max, replay_window_ms
if keyed then
  local e14, e15, e16, e17
  fingerprint, e14 = id_arg(14, 'fingerprint')
  supersedes, e15 = text_arg(15, 'supersedes')
  replay_max, e16 = int_arg(16, 'replay_max', 0, 1000000)
  replay_window_ms, e17 = int_arg(17, 'replay_window_ms', 0, MAX_TTL_MS)
  err = e14 or e15 or e16 or e17
  if err then return redis.error_reply(err) end
end

local now = now_ms()
local event_at = now
if occurred > 0 then event_at = occurred end

-- The idempotency key's record decides before the hold: another request under the key is
-- refused, the record's own hold answers a retry (a posted one counts a replay), and a
-- new hold is placed only without a record or superseding a hold the caller found ended.
if keyed then
  local rec = hold_fields(KEYS[7])
  if rec then
    if rec.fp ~= fingerprint then
      return { 'key_reused', now, rec.request_id }
    end
    if rec.hold == hold_id then
      local held = hold_fields(KEYS[3])
      if not held then return { 'gone', now } end
      if held.state == 'posted' then
        local replays = tonumber(rec.replays)
        if replays < replay_max and now < tonumber(rec.first) + replay_window_ms then
          redis.call('HINCRBY', KEYS[7], 'replays', 1)
          return { 'replayed', now, replays + 1, rec.request_id }
        end
        return { 'replays_exhausted', now, rec.request_id, replays }
      end
    elseif rec.hold ~= supersedes then
      return { 'moved', now, rec.hold }
    end
  end
end

local first = hold_fields(KEYS[3])
if first then
  if first.customer ~= customer or first.type ~= ctype or tonumber(first.amount) ~= amount then
    return { 'conflict', now, first.type, tonumber(first.amount) }
  end
  return { 'replay', now, first.state, tonumber(first.deadline), first.draws,
    tonumber(first.overdraft), tonumber(first.over_limit) }
end

local list, total = usable_grants(KEYS[1], ctype, now)
local avail = available(KEYS[2], total, ctype)
local over_limit = 0
if avail + limit < amount then
  if force == 0 then
    return { 'insufficient', now, avail }
  end
  over_limit = 1
end

local draws, taken = take(KEYS[1], KEYS[5], customer, list, amount, true)
local overdraft = amount - taken
local deadline = now + ttl_ms
local draws_s = fmt_draws(draws)
balance_add(KEYS[2], ctype, 'avail', -amount)
balance_add(KEYS[2], ctype, 'held', amount)
balance_add(KEYS[2], ctype, 'odheld', overdraft)
redis.call('HSET', KEYS[3], 'state', 'pending', 'customer', customer, 'type', ctype,
  'amount', fmt(amount), 'deadline', fmt(deadline), 'created', fmt(now), 'draws', draws_s,
  'overdraft', fmt(overdraft), 'over_limit', fmt(over_limit), 'request_id', request_id,
  'route', route, 'feature', feature, 'retain', fmt(retain_ms),
  'pricing_version', pricing_version, 'occurred', fmt(occurred), 'nonce', fmt(now))
redis.call('ZADD', KEYS[4], deadline, customer .. '/' .. hold_id)
xadd(KEYS[6], {
  'v', '1', 'event_id', hold_event_id(hold_id, fmt(now), 'placed'), 'kind', 'hold_placed',
  'at', fmt(event_at),
  'customer', customer, 'credit_type', ctype, 'hold_id', hold_id, 'amount', fmt(amount),
  'draws', draws_s, 'overdraft', fmt(overdraft), 'deadline', fmt(deadline),
  'over_limit', fmt(over_limit), 'request_id', request_id, 'route', route, 'feature', feature,
  'pricing_version', pricing_version,
})
if keyed then
  redis.call('HSET', KEYS[7], 'fp', fingerprint, 'hold', hold_id, 'request_id', request_id,
    'first', fmt(now), 'replays', '0')
  redis.call('PEXPIRE', KEYS[7], ttl_ms + retain_ms)
end
return { 'placed', now, deadline, draws_s, overdraft, over_limit, avail - amount }
