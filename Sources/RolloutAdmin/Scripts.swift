public import RolloutRedis

/// The Lua scripts this package runs. Each is also in redis/ for operators to read; a test
/// keeps the two byte-identical.
public enum Scripts {
    /// Sets rollout_percent (KEYS[1]) to ARGV[1], moving a valid previous value into
    /// last_percent (KEYS[2]; an invalid one is dropped so it cannot poison the gate) and
    /// ARGV[2] into last_change_time (KEYS[3]). Returns the previous raw value or nil.
    public static let setPercent = RedisScript(setPercentSource)

    static let setPercentSource = """
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

        """

    /// The controller's compare-and-set: applies a promotion or rollback only if
    /// rollout_percent, paused and enabled (and, for a promotion, the guard lock) still hold what
    /// the controller read, so a person's change made during the run wins and nothing is
    /// half-written. A rollback also sets the guard lock, records itself in the last hour's
    /// rollbacks and, at the flap limit, pauses the feature, all in the same atomic step.
    public static let applyChange = RedisScript(applyChangeSource)

    static let applyChangeSource = """
        -- rollout-gate: the controller's compare-and-set (redis/apply_change.lua).
        -- KEYS: 1 rollout_percent, 2 paused, 3 enabled, 4 last_percent, 5 last_change_time,
        --       6 controller_percent, 7 lock, 8 guard, 9 rollbacks, 10 paused_reason, 11 last_good,
        --       12 streaks, 13 healthy_since.
        -- ARGV: 1-3 expected rollout_percent, paused, enabled ('' for absent), 4 new percent,
        --       5 ISO-8601 time, 6 the lock owner's token, 7 'promote' or 'rollback',
        --       8 the guard value a promotion expects ('' for none; a matching guard is released),
        --       9 a last known good percent to record ('' for none), 10 the time in Unix ms,
        --       11 rollbacks older than this (Unix ms) are forgotten, 12 the guard window in ms after a
        --       rollback (0 for none), 13 the guard's value, 14 rollbacks per hour that pause the
        --       feature (0 for never), 15 the pause reason.
        -- A promotion starts healthy_since; a rollback deletes it and sets the guard unless a longer
        -- one is there. Returns 1 when applied, 2 when a rollback was applied and flap protection paused the
        -- feature, 0 when any expected value changed (nothing written), -1 when the caller no
        -- longer holds the lock (it expired and another controller may be deciding; nothing written).
        if redis.call('GET', KEYS[7]) ~= ARGV[6] then
          return -1
        end
        for i = 1, 3 do
          if (redis.call('GET', KEYS[i]) or '') ~= ARGV[i] then
            return 0
          end
        end
        if ARGV[7] == 'promote' then
          if (redis.call('GET', KEYS[8]) or '') ~= ARGV[8] then
            return 0
          end
          redis.call('DEL', KEYS[8])
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
          return 2
        end
        return 1

        """

    /// Records that a person changed rollout_percent (seen by the controller): the percent the
    /// controller knew becomes last_percent, the dwell restarts now, and controller_percent
    /// catches up, so the change is reported once. Returns 1, or 0 if rollout_percent moved again.
    public static let acknowledgeManualChange = RedisScript(acknowledgeManualChangeSource)

    static let acknowledgeManualChangeSource = """
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

        """

    /// What a run that changes nothing records, only while it still holds the feature's lock
    /// and rollout_percent is as it read it: each check's streak, since when the feature is
    /// healthy, and a new last known good percent. Returns 1, 0 (the percent moved) or -1 (the
    /// lock is lost); nothing is written unless 1.
    public static let recordEvaluation = RedisScript(recordEvaluationSource)

    static let recordEvaluationSource = """
        -- rollout-gate: the controller's bookkeeping for a run without a change (redis/record_evaluation.lua).
        -- KEYS: lock, rollout_percent, streaks, healthy_since, last_good.
        -- ARGV: 1 the lock owner's token, 2 expected rollout_percent ('' for absent), 3 '1' when every
        --       check is healthy with data, 4 ISO-8601 time, 5 a new last known good percent ('' for
        --       none), then check name and streak pairs (non-zero streaks only).
        if redis.call('GET', KEYS[1]) ~= ARGV[1] then
          return -1
        end
        if (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then
          return 0
        end
        redis.call('DEL', KEYS[3])
        if #ARGV > 5 then
          redis.call('HSET', KEYS[3], unpack(ARGV, 6))
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
        ("set_percent.lua", setPercentSource), ("apply_change.lua", applyChangeSource),
        ("acknowledge_manual_change.lua", acknowledgeManualChangeSource), ("record_evaluation.lua", recordEvaluationSource),
        ("release_lock.lua", releaseLockSource),
    ]
}
