-- The stream's decisions for GET /predict. ARGV: namespace, TTL (ms), then the decisions as one
-- string: user 0x1c value, records separated by 0x1d (one argument: thousands of separate
-- ones cost the client more than the script).
local ns, ttl, data = ARGV[1], ARGV[2], ARGV[3]
local find, sub, pos, len = string.find, string.sub, 1, #data
while pos <= len do
  local u = find(data, '\28', pos, true)
  local e = find(data, '\29', u + 1, true) or (len + 1)
  redis.call('SET', ns .. ':u:' .. sub(data, pos, u - 1) .. ':d', sub(data, u + 1, e - 1), 'PX', ttl)
  pos = e + 1
end
return 0
