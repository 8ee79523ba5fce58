-- Which stored state this Redis holds now: its token (KEYS[1], set to ARGV[1] when missing,
-- never expiring) and the server's run id. The token goes with a flush or a new data
-- directory, the run id with every restart: either changing means the state may have lost
-- writes made before it.
redis.call('SET', KEYS[1], ARGV[1], 'NX')
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)')
return redis.call('GET', KEYS[1]) .. ':' .. run_id
