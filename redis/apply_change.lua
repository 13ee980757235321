-- rollout-gate: the controller's compare-and-set (redis/apply_change.lua).
-- KEYS: 1 rollout_percent, 2 paused, 3 enabled, 4 last_percent, 5 last_change_time,
--       6 controller_percent, 7 lock, 8 guard, 9 rollbacks, 10 paused_reason, 11 last_good,
--       12 streaks, 13 healthy_since, 14 the audit stream.
-- ARGV: 1-3 expected rollout_percent, paused, enabled ('' for absent), 4 new percent,
--       5 ISO-8601 time, 6 the lock owner's token, 7 'promote' or 'rollback',
--       8 the guard value a promotion expects ('' for none; a matching guard is released),
--       9 a last known good percent to record ('' for none), 10 the time in Unix ms,
--       11 rollbacks older than this (Unix ms) are forgotten, 12 the guard window in ms after a
--       rollback (0 for none), 13 the guard's value, 14 rollbacks per hour that pause the
--       feature (0 for never), 15 the pause reason, 16 the deadline in Unix ms by this server's
--       clock (the controller gives up then: later, nothing is written), 17 the stream's
--       approximate maximum length, 18-23 the change's audit record, 24-29 the record of a
--       flap-protection pause, 30-35 the record of the guard's release (6 fields each: time,
--       feature, change, reason, by, run).
-- A promotion starts healthy_since; a rollback deletes it and sets the guard unless a longer
-- one is there. Every change is recorded in the stream in the same step. Returns 1 when
-- applied, 2 when a rollback was applied and flap protection paused the feature, 0 when any
-- expected value changed, -1 when the caller no longer holds the lock (it expired and another
-- controller may be deciding), -2 past the deadline, {-3, key, its type} when a key has the
-- wrong type; nothing is written unless 1 or 2.
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[16]) then
  return -2
end
local types = {'string', 'string', 'string', 'string', 'string', 'string', 'string', 'string', 'zset', 'string', 'string', 'hash', 'string', 'stream'}
for i, want in ipairs(types) do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= want then return {-3, KEYS[i], found} end
end
if redis.call('GET', KEYS[7]) ~= ARGV[6] then
  return -1
end
for i = 1, 3 do
  if (redis.call('GET', KEYS[i]) or '') ~= ARGV[i] then
    return 0
  end
end
local function record(at)
  redis.call('XADD', KEYS[14], 'MAXLEN', '~', ARGV[17], '*', 'time', ARGV[at], 'feature', ARGV[at + 1],
    'change', ARGV[at + 2], 'reason', ARGV[at + 3], 'by', ARGV[at + 4], 'run', ARGV[at + 5])
end
if ARGV[7] == 'promote' and (redis.call('GET', KEYS[8]) or '') ~= ARGV[8] then
  return 0
end
-- The record is the first write: if Redis refuses it (ACL, out of memory), nothing is written.
record(18)
if ARGV[7] == 'promote' and ARGV[8] ~= '' then
  redis.call('DEL', KEYS[8])
  record(30)
end
local previous = ARGV[1]
if previous == '' then previous = '0' end
redis.call('SET', KEYS[4], previous)
redis.call('SET', KEYS[1], ARGV[4])
redis.call('SET', KEYS[5], ARGV[5])
redis.call('SET', KEYS[6], ARGV[4])
redis.call('DEL', KEYS[12])
if ARGV[9] ~= '' then redis.call('SET', KEYS[11], ARGV[9]) end
if ARGV[7] ~= 'rollback' then
  -- The promotion run was healthy: the new percent's healthy time starts now.
  redis.call('SET', KEYS[13], ARGV[5])
  return 1
end
redis.call('DEL', KEYS[13])
local good = tonumber(redis.call('GET', KEYS[11]) or '')
if good and good > tonumber(ARGV[4]) then redis.call('SET', KEYS[11], ARGV[4]) end
-- A guard lasting longer (an operator's, or one without expiry) is kept as it is.
local window = tonumber(ARGV[12])
local left = redis.call('PTTL', KEYS[8])
if window > 0 and (left == -2 or (left >= 0 and left < window)) then
  redis.call('SET', KEYS[8], ARGV[13], 'PX', ARGV[12])
end
redis.call('ZADD', KEYS[9], ARGV[10], ARGV[10] .. ' ' .. ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', '(' .. ARGV[11])
redis.call('PEXPIRE', KEYS[9], 3600000)
local limit = tonumber(ARGV[14])
if limit > 0 and redis.call('ZCARD', KEYS[9]) >= limit then
  redis.call('SET', KEYS[2], 'true')
  redis.call('SET', KEYS[10], ARGV[15])
  record(24)
  return 2
end
return 1
