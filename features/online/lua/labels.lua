-- Labels into merchant risk. ARGV: namespace, label horizon (days), retention (ms), merchant
-- TTL (ms), ms per day, then (tx_id, labelled_at ms, is_fraud 0/1) per label. A label counts
-- for the merchant of its transaction, found in the day maps of the horizon before it; the
-- first label of a transaction wins (ZADD NX), so re-applying labels changes nothing.
local ns = ARGV[1]
-- (numbers go to redis.call as the caller's text where they can: Redis 7.0 formats a Lua number
-- argument with snprintf per call)
local LABEL_DAYS, RETAIN, M_TTL, MS_PER_DAY = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], tonumber(ARGV[5])
local function f(v) return string.format('%.17g', v) end
local applied = 0
for i = 6, #ARGV, 3 do
  local txid, lab_text, fraud = ARGV[i], ARGV[i + 1], ARGV[i + 2] == '1'
  local lab = tonumber(lab_text)
  local day = math.floor(lab / MS_PER_DAY)
  local merchant = false
  for d = day, day - LABEL_DAYS, -1 do
    merchant = redis.call('HGET', ns .. ':txm:' .. string.format('%d', d), txid)
    if merchant then break end
  end
  if merchant then
    local ml, mf = ns .. ':m:' .. merchant .. ':lab', ns .. ':m:' .. merchant .. ':fr'
    if redis.call('ZADD', ml, 'NX', lab_text, txid) == 1 then
      applied = applied + 1
      if fraud then redis.call('ZADD', mf, lab_text, txid) end
      local before = '(' .. f(lab - RETAIN)
      redis.call('ZREMRANGEBYSCORE', ml, '-inf', before)
      redis.call('ZREMRANGEBYSCORE', mf, '-inf', before)
      redis.call('PEXPIRE', ml, M_TTL)
      redis.call('PEXPIRE', mf, M_TTL)
    end
  end
end
return applied
