-- rollout-gate: the controller takes note of a percent it did not write (redis/acknowledge_percent.lua):
-- a person's change, or a feature seen for the first time (adopted, never promoted at first sight).
-- KEYS: 1 rollout_percent, 2 controller_percent, 3 last_percent, 4 last_change_time,
--       5 healthy_since, 6 the audit stream.
-- ARGV: 1 expected rollout_percent ('' for absent, which means 0), 2 the percent the controller
--       last wrote ('' on first sight: then controller_percent must still be absent and
--       last_percent is left alone), 3 ISO-8601 time, 4 the deadline in Unix ms by this server's
--       clock (later, nothing is written), 5 the stream's approximate maximum length, 6-11 the
--       audit record (time, feature, change, reason, by, run), left out when the change is
--       already recorded (by the original Python controller, or `rollout flags set-percent`).
-- The dwell restarts now: health seen at another percent says nothing of this one. Returns 1,
-- 0 if rollout_percent moved again (or another controller adopted the feature), -2 past the
-- deadline, {-3, key, its type} for a key of the wrong type; nothing is written unless 1.
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[4]) then
  return -2
end
local types = {'string', 'string', 'string', 'string', 'string', 'stream'}
for i, want in ipairs(types) do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= want then return {-3, KEYS[i], found} end
end
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then
  return 0
end
if ARGV[2] == '' and redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
-- The record is the first write: if Redis refuses it (ACL, out of memory), nothing is written.
if #ARGV >= 11 then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[5], '*', 'time', ARGV[6], 'feature', ARGV[7],
    'change', ARGV[8], 'reason', ARGV[9], 'by', ARGV[10], 'run', ARGV[11])
end
local current = ARGV[1]
if current == '' then current = '0' end
redis.call('SET', KEYS[2], current)
if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2]) end
redis.call('SET', KEYS[4], ARGV[3])
redis.call('DEL', KEYS[5])
return 1
