public import RolloutGate
package import RolloutRedis

/// The keys the controller keeps beside a feature's. The gate never reads them.
extension FeatureKeys {
    /// `flags:<f>:controller_percent`: the percent the controller last wrote; a different
    /// rollout_percent means a person changed it.
    public var controllerPercent: String { "flags:\(feature.rawValue):controller_percent" }
    /// `flags:<f>:lock`: the controller deciding the feature now (`SET NX PX`, its owner's token).
    public var lock: String { "flags:\(feature.rawValue):lock" }
    /// `flags:<f>:guard`: while it exists, no promotion. A string with a TTL (see ``GuardLock``).
    public var guardLock: String { "flags:\(feature.rawValue):guard" }
    /// `flags:<f>:paused_reason`: why the controller paused the feature (flap protection).
    public var pausedReason: String { "flags:\(feature.rawValue):paused_reason" }
    /// `flags:<f>:rollbacks`: a sorted set of the last hour's rollbacks, scored by Unix milliseconds.
    public var rollbacks: String { "flags:\(feature.rawValue):rollbacks" }
    /// `flags:<f>:last_good`: the highest percent that stayed healthy through a full dwell.
    public var lastGood: String { "flags:\(feature.rawValue):last_good" }
    /// `flags:<f>:streaks`: a hash of check name → consecutive violating runs.
    public var streaks: String { "flags:\(feature.rawValue):streaks" }
    /// `flags:<f>:healthy_since`: ISO-8601 time since which every check had data and was healthy.
    public var healthySince: String { "flags:\(feature.rawValue):healthy_since" }

    /// `flags:<f>:notified`: the feature's condition last notified (`ok`, `hold:no_data`...), so
    /// that a condition lasting hours sends one message when it starts and one when it ends.
    public var notified: String { "flags:\(feature.rawValue):notified" }

    /// Every controller key, for `rollout flags get`.
    public var controllerKeys: [String] {
        [controllerPercent, guardLock, pausedReason, rollbacks, lastGood, streaks, healthySince, notified, lastVerdict]
    }
}

/// A guard lock: no promotion while `flags:<f>:guard` exists. Its value is plain text,
/// `<origin> <ISO-8601 time> <reason>`, and its TTL is what is left of the window, so an
/// expired lock cleans itself up. The controller releases early only the locks it set after a
/// rollback (origin `rollback`), never an operator's.
public struct GuardLock: Sendable, Hashable, CustomStringConvertible {
    /// Who set it.
    public enum Origin: String, Sendable, Hashable {
        /// The controller, after a rollback.
        case rollback
        /// A person or a deploy pipeline (`rollout guard lock`).
        case `operator`
    }

    /// The raw value.
    public var value: String
    /// What is left of the window; nil when the key has no TTL.
    public var remaining: Duration?

    /// A lock as read from Redis.
    public init(value: String, remaining: Duration?) {
        self.value = value
        self.remaining = remaining
    }

    /// The value to write: `rollback 2026-11-23T05:00:00.000Z error_rate=0.2 at 50%`.
    public static func value(origin: Origin, time: Timestamp, reason: String) -> String {
        "\(origin.rawValue) \(time) \(reason)"
    }

    /// Who set it; nil when the value was written by hand in another form.
    public var origin: Origin? {
        value.split(separator: " ", maxSplits: 1).first.flatMap { Origin(rawValue: String($0)) }
    }

    /// `locked for 14m12s more: rollback ...`.
    public var description: String {
        let left = remaining.map { "for \(formatDuration($0)) more" } ?? "with no expiry (delete the key or run rollout guard unlock)"
        return "locked \(left): \(value)"
    }

    /// The lock in `replies` (GET then PTTL of the guard key), nil when there is none.
    package static func read(value: RedisValue, pttl: RedisValue) -> GuardLock? {
        guard let text = value.string else { return nil }
        let milliseconds: Int64? = if case .integer(let ms) = pttl, ms >= 0 { ms } else { nil }
        return GuardLock(value: text, remaining: milliseconds.map { .milliseconds($0) })
    }
}

extension FeatureStore {
    /// Locks `feature` against promotion for `window`, and records it. An existing lock that
    /// lasts longer keeps its end: a lock is never shortened (`unlock` ends one). Returns how
    /// long the lock now lasts.
    @discardableResult
    public func lockGuard(_ feature: FeatureName, for window: Duration, reason: String) async throws(AdminError) -> Duration {
        let requested = window.wholeMilliseconds
        guard requested > 0 else { throw AdminError(.invalidInput("--window must be more than 0, e.g. 15m")) }
        let key = FeatureKeys(feature).guardLock
        let (time, replies) = try await readWithServerTime([RedisCommand("PTTL", key)])
        let left = replies[0].integer ?? -2
        var change = OperatorChange()
        guard left != -1 else {
            change.records = [record(feature, "guard lock kept (it has no expiry)", reason)]
            try await apply(change, time: time)
            return .zero
        }
        let milliseconds = max(requested, left)
        change.step("SET", key, [GuardLock.value(origin: .operator, time: now(), reason: reason), "PX", String(milliseconds)])
        let lasts = Duration.milliseconds(milliseconds)
        change.records = [record(feature, "guard locked for \(formatDuration(lasts))", reason)]
        try await apply(change, time: time)
        return lasts
    }

    /// Removes the guard lock, whoever set it; records it. Returns the lock that was removed.
    @discardableResult
    public func unlockGuard(_ feature: FeatureName, reason: String) async throws(AdminError) -> GuardLock? {
        let key = FeatureKeys(feature).guardLock
        let (time, replies) = try await readWithServerTime([RedisCommand("GET", key), RedisCommand("PTTL", key)])
        let value = try stringValue(replies[0], of: key)
        let removed = value.flatMap { GuardLock.read(value: .bulkString(Array($0.utf8)), pttl: replies[1]) }
        var change = OperatorChange()
        change.expect(key, equals: value)
        change.step("DEL", key)
        change.records = [record(feature, removed == nil ? "guard unlock (was not locked)" : "guard unlocked", reason)]
        try await apply(change, time: time)
        return removed
    }

    /// The guard lock of `feature`, nil when unlocked.
    public func guardStatus(_ feature: FeatureName) async throws(AdminError) -> GuardLock? {
        let key = FeatureKeys(feature).guardLock
        do {
            let replies = try await redis.pipeline([RedisCommand("GET", key), RedisCommand("PTTL", key)])
            return GuardLock.read(value: replies[0], pttl: replies[1])
        } catch {
            throw AdminError(.redis(error))
        }
    }
}

/// What the controller left on a feature beside its state: why it paused it, its guard lock,
/// and whether the feature has any key at all.
package struct ControllerMarks: Sendable, Hashable {
    /// `flags:<f>:paused_reason`: set by flap protection, cleared by a resume.
    package var pausedReason: String?
    /// The guard lock, nil when unlocked.
    package var guardLock: GuardLock?
    /// Whether any key of the feature (its own or the controller's) exists.
    package var exists: Bool
    /// `flags:<f>:last_verdict`, nil when absent or unreadable (another type, a malformed value).
    package var lastVerdict: LastVerdict?
}

extension FeatureStore {
    /// The controller's marks on each of `features`, in one pipelined round trip.
    package func controllerMarks(_ features: [FeatureName]) async throws(RedisError) -> [ControllerMarks] {
        let commands = features.flatMap { feature -> [RedisCommand] in
            let keys = FeatureKeys(feature)
            return [
                RedisCommand("GET", keys.pausedReason), RedisCommand("GET", keys.guardLock), RedisCommand("PTTL", keys.guardLock),
                RedisCommand("EXISTS", keys.all + keys.controllerKeys), RedisCommand("GET", keys.lastVerdict),
            ]
        }
        let replies = try await redis.pipeline(commands)
        return features.indices.map { index in
            let base = index * 5
            // A key of the wrong type answers an error: no reason, no lock (`invalid_keys` and
            // `rollout flags get` show the feature's own keys; these are the controller's).
            return ControllerMarks(
                pausedReason: replies[base].string, guardLock: GuardLock.read(value: replies[base + 1], pttl: replies[base + 2]),
                exists: (replies[base + 3].integer ?? 0) > 0, lastVerdict: replies[base + 4].string.flatMap(LastVerdict.init(parsing:)))
        }
    }
}
