-- rollout-gate: the controller's compare-and-set (redis/apply_change.lua).
-- It applies a plan the controller decided (Sources/RolloutController/Plan.swift) and chooses
-- nothing: the arguments are built, and the reply read, in ChangeScript.swift only.
-- KEYS: 1 rollout_percent, 2 paused, 3 enabled, 4 last_percent, 5 last_change_time,
--       6 controller_percent, 7 lock, 8 guard, 9 rollbacks, 10 paused_reason, 11 last_good,
--       12 streaks, 13 healthy_since, 14 the audit stream.
-- ARGV: the preconditions: 1-4 expected rollout_percent, paused, enabled, guard ('' for absent),
--       5 the lock owner's token, 6 the deadline in Unix ms by this server's clock (the
--       controller gives up then: later, nothing is written), 7 the stream's approximate maximum
--       length; the writes: 8 the new percent, 9 the percent before it, 10 ISO-8601 time,
--       11 healthy_since to set ('' deletes it), 12 last_good to set ('' leaves it), 13 the guard:
--       'release' (delete), 'set' (to 14 for 15 ms) or '' (leave it), 16 a member to add to the
--       rollbacks scored 17 (Unix ms; '' for none), those scored below 18 removed, 19 a pause
--       reason ('' for none), 20 the number of audit records, then their 6 fields each (time,
--       feature, change, reason, by, run); optionally KEYS 15 a marker set with the change
--       (the alert webhook's claim) to the ARGV after the records, for the one after (ms).
-- Returns 1 when applied, 0 when any expected value changed, -1 when the caller no longer holds
-- the lock (it expired and another controller may be deciding), -2 past the deadline,
-- {-3, key, its type} when a key has the wrong type; nothing is written unless 1.
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[6]) then
  return -2
end
local types = {'string', 'string', 'string', 'string', 'string', 'string', 'string', 'string', 'zset', 'string', 'string', 'hash', 'string', 'stream'}
for i, want in ipairs(types) do
  local found = redis.call('TYPE', KEYS[i])['ok']
  if found ~= 'none' and found ~= want then return {-3, KEYS[i], found} end
end
if KEYS[15] then
  local found = redis.call('TYPE', KEYS[15])['ok']
  if found ~= 'none' and found ~= 'string' then return {-3, KEYS[15], found} end
end
if redis.call('GET', KEYS[7]) ~= ARGV[5] then
  return -1
end
for i, key in ipairs({1, 2, 3, 8}) do
  if (redis.call('GET', KEYS[key]) or '') ~= ARGV[i] then
    return 0
  end
end
-- The records are the first writes: if Redis refuses them (ACL, out of memory), nothing is written.
for r = 0, tonumber(ARGV[20]) - 1 do
  local at = 21 + r * 6
  redis.call('XADD', KEYS[14], 'MAXLEN', '~', ARGV[7], '*', 'time', ARGV[at], 'feature', ARGV[at + 1],
    'change', ARGV[at + 2], 'reason', ARGV[at + 3], 'by', ARGV[at + 4], 'run', ARGV[at + 5])
end
redis.call('SET', KEYS[4], ARGV[9])
redis.call('SET', KEYS[1], ARGV[8])
redis.call('SET', KEYS[5], ARGV[10])
redis.call('SET', KEYS[6], ARGV[8])
redis.call('DEL', KEYS[12])
if ARGV[11] ~= '' then redis.call('SET', KEYS[13], ARGV[11]) else redis.call('DEL', KEYS[13]) end
if ARGV[12] ~= '' then redis.call('SET', KEYS[11], ARGV[12]) end
if ARGV[13] == 'release' then
  redis.call('DEL', KEYS[8])
elseif ARGV[13] == 'set' then
  redis.call('SET', KEYS[8], ARGV[14], 'PX', ARGV[15])
end
if ARGV[16] ~= '' then
  redis.call('ZADD', KEYS[9], ARGV[17], ARGV[16])
  redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', '(' .. ARGV[18])
  redis.call('PEXPIRE', KEYS[9], 3600000)
end
if ARGV[19] ~= '' then
  redis.call('SET', KEYS[2], 'true')
  redis.call('SET', KEYS[10], ARGV[19])
end
if KEYS[15] then
  local m = 21 + tonumber(ARGV[20]) * 6
  redis.call('SET', KEYS[15], ARGV[m], 'PX', ARGV[m + 1])
end
return 1
