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

    /// Every script with the file name it has in redis/.
    public static let all: [(file: String, source: String)] = [("set_percent.lua", setPercentSource)]
}
