-- Write a batch's new state, guarded per user: every user's stored value must still carry the
-- version the actor read (its first 8 bytes; '' when there was none). If any does not (another
-- actor applied it meanwhile: a rebalance, a zombie), nothing is written and those users are
-- returned: the actor reads and computes the round again, so no transaction is ever applied
-- twice. Otherwise the users' states and latest vectors are set, the merchants' per-minute,
-- per-hour and per-day counters incremented (BITFIELD, atomic across actors) and the
-- tx -> merchant day maps extended, all in this one atomic call.
-- ARGV[1]: msgpack [user ttl ms, minute-counter ttl, hour-counter ttl, map ttl, day-counter ttl,
--   users, counters, maps] with user = [state key, expected version, new value, latest key,
--   latest value or false], counter = [key, minute|hour|day, BITFIELD ops...],
--   map = [key, field, value...]
local req = cmsgpack.unpack(ARGV[1])
local uttl, mttl, httl, xttl, dttl = req[1], req[2], req[3], req[4], req[5]
local users, counters, maps = req[6], req[7], req[8]
local ttl = {minute = mttl, hour = httl, day = dttl}
local call = redis.call

local failed = {}
for i = 1, #users do
  if call('GETRANGE', users[i][1], 0, 7) ~= users[i][2] then failed[#failed + 1] = i - 1 end
end
if #failed > 0 then return failed end

for i = 1, #users do
  local u = users[i]
  call('SET', u[1], u[3], 'PX', uttl)
  if u[5] then call('SET', u[4], u[5], 'PX', uttl) end
end
for i = 1, #counters do
  local c = counters[i]
  call('BITFIELD', c[1], 'OVERFLOW', 'SAT', unpack(c, 3))
  call('PEXPIRE', c[1], ttl[c[2]])
end
for i = 1, #maps do
  local m = maps[i]
  for j = 2, #m, 1000 do call('HSET', m[1], unpack(m, j, math.min(j + 999, #m))) end
  call('PEXPIRE', m[1], xttl)
end
return failed
