import RolloutRedis

/// How long one feature's evaluation may take, from taking its lock to releasing it: the lock's
/// TTL and the deadline of the feature's Prometheus phase both come from here, so that a run
/// releases its lock itself, with time to spare, and a lock left by a process that died
/// expires soon after.
struct EvaluationBudget: Sendable, Hashable {
    /// The Prometheus phase: every query at once, each with all its attempts and the longest
    /// waits between them (``PrometheusClient/longestQuery``).
    var prometheus: Duration
    /// The Redis round trips of one evaluation, each within the client's connect timeout and its
    /// command timeout or a write's deadline.
    var redis: Duration
    /// Slack for a busy machine: half of the rest, at least 10 s.
    var margin: Duration

    /// At most this many round trips to Redis per feature while it holds the lock: the lock's
    /// SET, the read, a manual change's acknowledgement (or the first sight's SET), the
    /// compare-and-set and its read-back (or the bookkeeping and the guard's release), the
    /// lock's release.
    static let redisRoundTrips = 6

    /// At most this many of them are writes followed by `WAIT` (the acknowledgement and the
    /// change), each waiting up to the replica timeout longer.
    static let replicatedWrites = 2

    init(prometheus: PrometheusClient, redis: RedisClient, replicaTimeout: Duration) {
        self.prometheus = prometheus.longestQuery
        // A write waits for its reply as long as its deadline allows (RedisServerTime.writeBudget).
        self.redis = (redis.connectTimeout + max(redis.commandTimeout, RedisServerTime.writeBudget)) * Self.redisRoundTrips
            + (replicaTimeout + redis.commandTimeout) * Self.replicatedWrites
        margin = max(.seconds(10), (self.prometheus + self.redis) / 2)
    }

    /// The feature's lock TTL (`flags:<f>:lock`, `SET NX PX`).
    var lockTTL: Duration { prometheus + redis + margin }

    /// When the Prometheus phase starting now must be over.
    func prometheusDeadline(from start: ContinuousClock.Instant = .now) -> ContinuousClock.Instant {
        start.advanced(by: prometheus)
    }
}
