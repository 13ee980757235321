-- rollout-gate: set a feature's rollout percent atomically (redis/set_percent.lua).
-- KEYS: rollout_percent, last_percent, last_change_time. ARGV: new percent, ISO-8601 time.
local previous = redis.call('GET', KEYS[1])
local valid = previous and (string.match(previous, '^%s*%d%d?%d?%s*$') or string.match(previous, '^%s*%d%d?%d?%.%d%d?%d?%s*$'))
if valid and tonumber(previous) <= 100 then
  redis.call('SET', KEYS[2], previous)
elseif previous then
  redis.call('DEL', KEYS[2])
else
  redis.call('SET', KEYS[2], '0')
end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('SET', KEYS[3], ARGV[2])
return previous
