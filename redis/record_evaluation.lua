-- rollout-gate: the controller's bookkeeping for a run without a change (redis/record_evaluation.lua).
-- KEYS: lock, rollout_percent, streaks, healthy_since, last_good.
-- ARGV: 1 the lock owner's token, 2 expected rollout_percent ('' for absent), 3 '1' when every
--       check is healthy with data, 4 ISO-8601 time, 5 a new last known good percent ('' for
--       none), 6 the deadline in Unix ms by this server's clock (later, nothing is written),
--       then check name and streak pairs (non-zero streaks only).
-- Returns 1, 0 (the percent moved), -1 (the lock is lost), -2 (past the deadline) or
-- {-3, key, its type} for a key of the wrong type; nothing is written unless 1.
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[6]) then
  return -2
end
local types = {'string', 'string', 'hash', 'string', 'string'}
for i, want in ipairs(types) do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= want then return {-3, KEYS[i], found} end
end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return -1
end
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then
  return 0
end
redis.call('DEL', KEYS[3])
if #ARGV > 6 then
  redis.call('HSET', KEYS[3], unpack(ARGV, 7))
end
if ARGV[3] == '1' then
  redis.call('SET', KEYS[4], ARGV[4], 'NX')
else
  redis.call('DEL', KEYS[4])
end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[5], ARGV[5])
end
return 1
