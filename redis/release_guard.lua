-- rollout-gate: the controller releases its own guard lock early, with its audit record
-- (redis/release_guard.lua). KEYS: 1 the guard, 2 the audit stream.
-- ARGV: 1 the guard's value as read (someone else's lock, or a newer one, is left alone),
--       2 the deadline in Unix ms by this server's clock (later, nothing is written), 3 the
--       stream's approximate maximum length, 4-9 the audit record (time, feature, change,
--       reason, by, run).
-- Returns 1 when released, 0 when the guard holds another value, -2 past the deadline.
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[2]) then
  return -2
end
local found = redis.call('TYPE', KEYS[2])['ok']
if found ~= 'none' and found ~= 'stream' then return {-3, KEYS[2], found} end
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'time', ARGV[4], 'feature', ARGV[5],
  'change', ARGV[6], 'reason', ARGV[7], 'by', ARGV[8], 'run', ARGV[9])
redis.call('DEL', KEYS[1])
return 1
