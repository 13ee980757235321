-- rollout-gate: the controller acknowledges a manual change (redis/acknowledge_manual_change.lua).
-- KEYS: rollout_percent, controller_percent, last_percent, last_change_time, healthy_since.
-- ARGV: expected rollout_percent ('' for absent, which means 0), the percent the controller
-- last wrote, ISO-8601 time. Health seen at the old percent says nothing of the new one.
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then
  return 0
end
local current = ARGV[1]
if current == '' then current = '0' end
redis.call('SET', KEYS[2], current)
redis.call('SET', KEYS[3], ARGV[2])
redis.call('SET', KEYS[4], ARGV[3])
redis.call('DEL', KEYS[5])
return 1
