-- extend: moves the deadline of a pending hold to at least now + ttl_ms, so a request that
-- is still in flight keeps its hold (the gateway renews it well before the deadline). It
-- changes no credits, so it appends no event: deadlines are read from Redis only, by the
-- sweeper. A deadline never moves earlier. A pending hold past its deadline that the
-- sweeper has not expired yet is extended too: it is still pending, and its request is
-- still running.
-- KEYS: 1 hold, 2 deadlines
-- ARGV: 1 customer, 2 hold_id, 3 ttl_ms
-- Reply: {'extended', at, deadline} | {'already_posted', at, posted} | {'already_voided', at}
--        | {'already_expired', at} | {'unknown', at}
local customer, e1 = id_arg(1, 'customer')
local hold_id, e2 = id_arg(2, 'hold_id')
local ttl_ms, e3 = int_arg(3, 'ttl_ms', 1, MAX_TTL_MS)
local err = e1 or e2 or e3
if err then return redis.error_reply(err) end

local now = now_ms()
local h = hold_fields(KEYS[1])
if not h or h.customer ~= customer then return { 'unknown', now } end
if h.state ~= 'pending' then return already(h, now) end

local deadline = math.max(tonumber(h.deadline), now + ttl_ms)
redis.call('HSET', KEYS[1], 'deadline', fmt(deadline))
redis.call('ZADD', KEYS[2], deadline, customer .. '/' .. hold_id)
return { 'extended', now, deadline }
