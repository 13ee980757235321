-- rollout-gate: an operator's change and its audit records, all or nothing (redis/operator_change.lua).
-- KEYS: 1 the audit stream, then every key the change reads or writes.
-- ARGV: 1 the deadline in Unix ms by this server's clock (the client gives up then: later, nothing
--       is written), 2 the stream's approximate maximum length, 3 the number of records R, then R
--       records of 6 fields (time, feature, change, reason, by, run), then the number of
--       expectations E and E triples (key index, 'absent' or 'equals', value; '' equals absent),
--       then the steps, each: key index, command, argument count N, N arguments.
-- Nothing is written unless every expectation holds and every key's type fits its command (SET:
-- a string, SADD/SREM: a set, HSET/HDEL: a hash, ZADD: a zset; a key deleted by an earlier step
-- is free). Returns {1, {one result per step}, {record ids}}; {0, key} when an expectation
-- failed; {-2} past the deadline; {-3, key, its type} for a key of the wrong type.
local now = redis.call('TIME')
if tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) > tonumber(ARGV[1]) then
  return {-2}
end
local function typeOf(key) return redis.call('TYPE', key)['ok'] end
local streamType = typeOf(KEYS[1])
if streamType ~= 'none' and streamType ~= 'stream' then return {-3, KEYS[1], streamType} end
local records = tonumber(ARGV[3])
local i = 4 + records * 6
for _ = 1, tonumber(ARGV[i]) do
  local key, kind, value = KEYS[tonumber(ARGV[i + 1])], ARGV[i + 2], ARGV[i + 3]
  if kind == 'absent' then
    if redis.call('EXISTS', key) == 1 then return {0, key} end
  else
    local found = typeOf(key)
    if found ~= 'none' and found ~= 'string' then return {-3, key, found} end
    if (redis.call('GET', key) or '') ~= value then return {0, key} end
  end
  i = i + 3
end
i = i + 1
local wants = {SET = 'string', SADD = 'set', SREM = 'set', HSET = 'hash', HDEL = 'hash', ZADD = 'zset', DEL = '', PEXPIRE = ''}
local steps, deleted = {}, {}
while i <= #ARGV do
  local key, command, count = KEYS[tonumber(ARGV[i])], ARGV[i + 1], tonumber(ARGV[i + 2])
  local want = wants[command]
  if want == nil then return redis.error_reply('ERR operator_change.lua does not run ' .. command) end
  if command == 'DEL' then
    deleted[key] = true
  elseif not deleted[key] then
    local found = typeOf(key)
    if found ~= 'none' and found ~= want then return {-3, key, found} end
  end
  steps[#steps + 1] = {key, command, i + 3, count}
  i = i + 3 + count
end
-- The records are the first writes: if Redis refuses them (ACL, out of memory), nothing is written.
local ids = {}
for r = 0, records - 1 do
  local at = 4 + r * 6
  ids[#ids + 1] = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'time', ARGV[at], 'feature', ARGV[at + 1],
    'change', ARGV[at + 2], 'reason', ARGV[at + 3], 'by', ARGV[at + 4], 'run', ARGV[at + 5])
end
local results = {}
for _, step in ipairs(steps) do
  local key, command, first, count = step[1], step[2], step[3], step[4]
  local total = 0
  -- In slices: Lua's unpack has a stack limit; the set and hash commands take pairs or members.
  repeat
    local last = math.min(first + 999, first + count - 1)
    local reply = redis.call(command, key, unpack(ARGV, first, last))
    if type(reply) == 'number' then total = total + reply else total = 1 end
    first = last + 1
  until first > step[3] + count - 1
  results[#results + 1] = total
end
return {1, results, ids}
