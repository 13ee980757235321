-- rollout-gate: the controller's compare-and-set (redis/apply_change.lua).
-- KEYS: rollout_percent, paused, enabled, last_percent, last_change_time, controller_percent, lock.
-- ARGV: expected rollout_percent, paused, enabled ('' for absent), new percent, ISO-8601 time,
-- the lock owner's token.
-- Returns 1 when applied, 0 when any expected value changed, -1 when the caller no longer
-- holds the lock (it expired and another controller may be deciding); nothing is written then.
if redis.call('GET', KEYS[7]) ~= ARGV[6] then
  return -1
end
for i = 1, 3 do
  if (redis.call('GET', KEYS[i]) or '') ~= ARGV[i] then
    return 0
  end
end
local previous = ARGV[1]
if previous == '' then previous = '0' end
redis.call('SET', KEYS[4], previous)
redis.call('SET', KEYS[1], ARGV[4])
redis.call('SET', KEYS[5], ARGV[5])
redis.call('SET', KEYS[6], ARGV[4])
return 1
