-- Write a batch's new state, guarded per user: a user's new value is written only if the
-- stored value still carries the version the actor read (its first 8 bytes; '' when there was
-- none), and only then are that user's transactions counted into their merchants' per-minute
-- and per-hour counters and the tx -> merchant day maps. A user whose version moved (another
-- actor applied it meanwhile: a rebalance, a zombie) is skipped and returned, so no
-- transaction is ever applied twice.
-- ARGV[1]: msgpack [ns, user ttl ms, minute-counter ttl, hour-counter ttl, map ttl, users]
-- user: [state key, expected version, new value, latest key, latest value or false,
--        counts (merchant, hour, minute of hour, day, hour of day)..., map (day, tx id, merchant)...]
local req = cmsgpack.unpack(ARGV[1])
local ns, uttl, mttl, httl, xttl, users = req[1], req[2], req[3], req[4], req[5], req[6]
local call = redis.call
local failed = {}
local minute, hour, maps, order = {}, {}, {}, {}

local function bump(acc, key, offset)
  local a = acc[key]
  if not a then a = {}; acc[key] = a; order[#order + 1] = {acc, key} end
  a[offset] = (a[offset] or 0) + 1
end

for i = 1, #users do
  local u = users[i]
  if call('GETRANGE', u[1], 0, 7) ~= u[2] then
    failed[#failed + 1] = i - 1
  else
    call('SET', u[1], u[3], 'PX', uttl)
    if u[5] then call('SET', u[4], u[5], 'PX', uttl) end
    local c = u[6]
    for j = 1, #c, 5 do
      local base = ns .. ':m:' .. c[j]
      bump(minute, base .. ':mc:' .. c[j + 1], c[j + 2])
      bump(hour, base .. ':hc:' .. c[j + 3], c[j + 4])
    end
    local m = u[7]
    for j = 1, #m, 3 do
      local key = ns .. ':txm:' .. m[j]
      local a = maps[key]
      if not a then a = {}; maps[key] = a end
      a[#a + 1] = m[j + 1]; a[#a + 1] = m[j + 2]
    end
  end
end

for i = 1, #order do
  local acc, key = order[i][1], order[i][2]
  local args = {'BITFIELD', key, 'OVERFLOW', 'SAT'}
  for offset, n in pairs(acc[key]) do
    args[#args + 1] = 'INCRBY'; args[#args + 1] = 'u32'; args[#args + 1] = '#' .. offset
    args[#args + 1] = n
  end
  call(unpack(args))
  call('PEXPIRE', key, acc == minute and mttl or httl)
end
for key, a in pairs(maps) do
  for j = 1, #a, 1000 do call('HSET', key, unpack(a, j, math.min(j + 999, #a))) end
  call('PEXPIRE', key, xttl)
end
return failed
