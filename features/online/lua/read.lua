-- Read a batch's stored state in one round trip; no arithmetic here (the actors compute).
-- ARGV[1]: msgpack [user state keys, minute-counter keys, hour-counter keys, label zsets,
-- day-counter keys, label ranges, cached versions] where label zsets are [labels zset, fraud
-- zset] per merchant, label ranges, per risk window, [core, edges]: core false or [min, max]
-- (ZCOUNT bounds, as strings: "(" excludes), edges a list of such bounds (ZRANGEBYSCORE), and
-- cached versions, per user key, the version of the state the caller holds ('' for none).
-- Reply: msgpack [user values, minute-counter values, hour-counter values, per merchant
-- {labels, fraud} each per risk window {core count, edge times}, day-counter values]
-- (counters false when missing; the caller pads them to their width). A user value is true
-- when the stored state still carries the caller's version: its copy is the state.
local req = cmsgpack.unpack(ARGV[1])
local ukeys, mkeys, hkeys, lkeys, dkeys, ranges = req[1], req[2], req[3], req[4], req[5], req[6]
local cached = req[7] or {}
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

-- A zset's arrivals per risk window: the core counted (every record's window holds it), the
-- edges as times (only some records' windows hold them): a batch spanning seconds reads a few
-- times, not the merchant's 30 days of labels. An edge two windows share (the batch's own span,
-- (t_min, t_max]) is read once.
local function windows(key)
  local out = {}
  if call('EXISTS', key) == 0 then
    for w = 1, #ranges do out[w] = {0, {}} end
    return out
  end
  local read = {}  -- "lo hi" -> the arrival times in that range
  for w = 1, #ranges do
    local core, edges = ranges[w][1], ranges[w][2]
    local n = core and call('ZCOUNT', key, core[1], core[2]) or 0
    local times = {}
    for e = 1, #edges do
      local lo, hi = edges[e][1], edges[e][2]
      local tag = lo .. ' ' .. hi
      local got = read[tag]
      if not got then
        got = {}
        local rows = call('ZRANGEBYSCORE', key, lo, hi, 'WITHSCORES')
        for i = 2, #rows, 2 do got[#got + 1] = tonumber(rows[i]) end
        read[tag] = got
      end
      for i = 1, #got do times[#times + 1] = got[i] end
    end
    out[w] = {n, times}
  end
  return out
end

-- the users whose state the caller holds: their version (8 bytes) instead of the value
local users, missing, at = {}, {}, {}
for i = 1, #ukeys do
  local v = cached[i]
  if v and v ~= '' and call('GETRANGE', ukeys[i], 0, 7) == v then
    users[i] = true
  else
    missing[#missing + 1] = ukeys[i]
    at[#at + 1] = i
  end
end
local values = mget(missing)
for j = 1, #at do users[at[j]] = values[j] end
local labels = {}
for i = 1, #lkeys do
  labels[i] = {windows(lkeys[i][1]), windows(lkeys[i][2])}
end
return cmsgpack.pack({users, mget(mkeys), mget(hkeys), labels, mget(dkeys)})
