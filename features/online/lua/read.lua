-- Read a batch's stored state in one round trip; no arithmetic here (the actors compute).
-- ARGV[1]: msgpack [user state keys, minute-counter keys, hour-counter keys, label requests,
-- day-counter keys] where a label request is [labels zset, fraud zset, min ms, max ms].
-- Reply: msgpack [user values, minute-counter values, hour-counter values, per label request
-- {label times, fraud times}, day-counter values] (counters false when missing; the caller
-- pads them to their width).
local req = cmsgpack.unpack(ARGV[1])
local ukeys, mkeys, hkeys, lreqs, dkeys = req[1], req[2], req[3], req[4], req[5]
local call = redis.call

-- MGET in slices: one redis.call per 1,000 keys, not one per key (the call is the cost)
local function mget(keys)
  local out = {}
  for i = 1, #keys, 1000 do
    local part = call('MGET', unpack(keys, i, math.min(i + 999, #keys)))
    for j = 1, #part do out[#out + 1] = part[j] end
  end
  return out
end

local function times(key, lo, hi)
  local rows = call('ZRANGEBYSCORE', key, lo, hi, 'WITHSCORES')
  local out = {}
  for i = 2, #rows, 2 do out[#out + 1] = tonumber(rows[i]) end
  return out
end

local users = mget(ukeys)
local labels = {}
for i = 1, #lreqs do
  local r = lreqs[i]
  labels[i] = {times(r[1], r[3], r[4]), times(r[2], r[3], r[4])}
end
return cmsgpack.pack({users, mget(mkeys), mget(hkeys), labels, mget(dkeys)})
