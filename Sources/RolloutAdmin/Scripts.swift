public import RolloutRedis

/// The Lua scripts this package runs. Each is also in redis/ for operators to read; a test
/// keeps the two byte-identical.
public enum Scripts {
    /// An operator's change and its audit records, all or nothing: refused past its deadline (by Redis's
    /// clock), when an expected value moved, or when a key has the wrong type.
    public static let operatorChange = RedisScript(operatorChangeSource)

    static let operatorChangeSource = """
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

        """

    /// The controller's compare-and-set: applies a promotion or rollback only if
    /// rollout_percent, paused and enabled (and, for a promotion, the guard lock) still hold what
    /// the controller read, so a person's change made during the run wins and nothing is
    /// half-written. A rollback also sets the guard lock, records itself in the last hour's
    /// rollbacks and, at the flap limit, pauses the feature; every change is recorded in the
    /// audit stream; all in the same atomic step, refused past its deadline.
    public static let applyChange = RedisScript(applyChangeSource)

    static let applyChangeSource = """
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

        """

    /// Takes note of a percent the controller did not write (a person's change, or a feature seen
    /// for the first time): the dwell restarts now and controller_percent catches up, so the
    /// change is reported once, with its audit record.
    public static let acknowledgePercent = RedisScript(acknowledgePercentSource)

    static let acknowledgePercentSource = """
        -- rollout-gate: the controller takes note of a percent it did not write (redis/acknowledge_percent.lua):
        -- a person's change, or a feature seen for the first time (adopted, never promoted at first sight).
        -- KEYS: 1 rollout_percent, 2 controller_percent, 3 last_percent, 4 last_change_time,
        --       5 healthy_since, 6 the audit stream.
        -- ARGV: 1 expected rollout_percent ('' for absent, which means 0), 2 the percent the controller
        --       last wrote ('' on first sight: then controller_percent must still be absent and
        --       last_percent is left alone), 3 ISO-8601 time, 4 the deadline in Unix ms by this server's
        --       clock (later, nothing is written), 5 the stream's approximate maximum length, 6-11 the
        --       audit record (time, feature, change, reason, by, run).
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
        redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[5], '*', 'time', ARGV[6], 'feature', ARGV[7],
          'change', ARGV[8], 'reason', ARGV[9], 'by', ARGV[10], 'run', ARGV[11])
        local current = ARGV[1]
        if current == '' then current = '0' end
        redis.call('SET', KEYS[2], current)
        if ARGV[2] ~= '' then redis.call('SET', KEYS[3], ARGV[2]) end
        redis.call('SET', KEYS[4], ARGV[3])
        redis.call('DEL', KEYS[5])
        return 1

        """

    /// What a run that changes nothing records, only while it still holds the feature's lock
    /// and rollout_percent is as it read it: each check's streak, since when the feature is
    /// healthy, and a new last known good percent.
    public static let recordEvaluation = RedisScript(recordEvaluationSource)

    static let recordEvaluationSource = """
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

        """

    /// Releases the controller's own guard lock (compare-and-delete) with its audit record.
    public static let releaseGuard = RedisScript(releaseGuardSource)

    static let releaseGuardSource = """
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

        """

    /// Releases a lock only for its owner. Returns 1 if released.
    public static let releaseLock = RedisScript(releaseLockSource)

    static let releaseLockSource = """
        -- rollout-gate: release a lock only if we still own it (redis/release_lock.lua).
        -- KEYS: the lock. ARGV: the owner token written by SET NX PX.
        if redis.call('GET', KEYS[1]) == ARGV[1] then
          return redis.call('DEL', KEYS[1])
        end
        return 0

        """

    /// Every script with the file name it has in redis/.
    public static let all: [(file: String, source: String)] = [
        ("operator_change.lua", operatorChangeSource), ("apply_change.lua", applyChangeSource), ("acknowledge_percent.lua", acknowledgePercentSource), ("record_evaluation.lua", recordEvaluationSource), ("release_guard.lua", releaseGuardSource), ("release_lock.lua", releaseLockSource),
    ]
}
