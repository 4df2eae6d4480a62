-- balance: read-only view of one customer's credits, per credit type and per grant.
-- KEYS: 1 grants, 2 balance
-- ARGV: 1 customer
-- Reply: {at, n_types, [type, available, held, debt, book_available] * n_types,
--         n_grants, [id, type, remaining, held, priority, expires_at, cost_basis, created,
--         expired] * n_grants}
-- `available` is live: grants past expires_at that the sweeper has not expired yet are
-- left out. `book_available` is the kept-in-step field, which still counts them.
local _, e1 = id_arg(1, 'customer')
if e1 then return redis.error_reply(e1) end

local now = now_ms()
local flat = redis.call('HGETALL', KEYS[1])
local grants = {}
local usable_by_type = {}
local types = {}
local seen = {}
local function note_type(t)
  if not seen[t] then
    seen[t] = true
    types[#types + 1] = t
  end
end
for i = 1, #flat, 2 do
  local g = unpack_grant(flat[i], flat[i + 1])
  grants[#grants + 1] = g
  note_type(g.ctype)
  if usable(g, now) then
    usable_by_type[g.ctype] = (usable_by_type[g.ctype] or 0) + g.remaining
  end
end
local bflat = redis.call('HGETALL', KEYS[2])
for i = 1, #bflat, 2 do
  note_type(string.match(bflat[i], '^(.*):[^:]+$'))
end
table.sort(types, bytes_less)
table.sort(grants, function(a, b) return bytes_less(a.id, b.id) end)

local reply = { now, #types }
for _, t in ipairs(types) do
  reply[#reply + 1] = t
  reply[#reply + 1] = available(KEYS[2], usable_by_type[t] or 0, t)
  reply[#reply + 1] = balance_field(KEYS[2], t, 'held')
  reply[#reply + 1] = balance_field(KEYS[2], t, 'debt')
  reply[#reply + 1] = balance_field(KEYS[2], t, 'avail')
end
reply[#reply + 1] = #grants
for _, g in ipairs(grants) do
  for _, v in ipairs({ g.id, g.ctype, g.remaining, g.held, g.priority, g.expires_at,
    g.cost_basis, g.created, g.expired }) do
    reply[#reply + 1] = v
  end
end
return reply
