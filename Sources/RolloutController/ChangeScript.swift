package import RolloutAdmin
package import RolloutAudit
package import RolloutGate
package import RolloutRedis

/// A key a change's script sets in the same atomic step as the change, so that whoever asked
/// for the change can tell, whatever happens to the reply, that it was made: the alert
/// webhook's claim (`rollout:alert:<sha256>`), so one alert never rolls back twice.
public struct ChangeMarker: Sendable, Hashable {
    /// The key (a Redis string).
    public var key: String
    /// Its value.
    public var value: String
    /// How long it lasts.
    public var ttl: Duration

    /// A marker.
    public init(key: String, value: String, ttl: Duration) {
        self.key = key
        self.value = value
        self.ttl = ttl
    }
}

/// One run of redis/apply_change.lua: a ``Plan/Change`` applied under compare-and-set. Its
/// arguments are built, and its reply read, here only.
package struct ChangeScript: Sendable {
    /// What the plan was decided on, as read (`""` for absent): the script refuses unless each
    /// is still so.
    package struct Preconditions: Sendable, Hashable {
        /// `rollout_percent`.
        package var percent: String
        /// `paused`.
        package var paused: String
        /// `enabled`.
        package var enabled: String
        /// `guard`'s value.
        package var guardValue: String

        /// Preconditions.
        package init(percent: String, paused: String = "", enabled: String = "", guardValue: String = "") {
            self.percent = percent
            self.paused = paused
            self.enabled = enabled
            self.guardValue = guardValue
        }
    }

    /// What the script did.
    package enum Outcome: Sendable, Hashable {
        /// Every write of the change, and its records.
        case applied
        /// Nothing: a precondition no longer held (a person's change wins).
        case concurrentChange
        /// Nothing: the run's lock expired, another controller may be deciding.
        case lockLost
        /// Nothing: too late, or a key of the wrong type.
        case refused(ScriptRefusal)

        /// The script's reply read; an unknown one is taken as nothing written.
        init(reply: RedisValue) {
            if let refusal = ScriptRefusal(reply) {
                self = .refused(refusal)
            } else {
                switch reply {
                case .integer(1): self = .applied
                case .integer(-1): self = .lockLost
                default: self = .concurrentChange
                }
            }
        }
    }

    /// The feature's keys.
    package var keys: FeatureKeys
    /// The compare-and-set's expectations.
    package var preconditions: Preconditions
    /// The lock's owner token: nothing is written unless the run still holds it.
    package var owner: String
    /// The script refuses after this (Unix ms by the server's clock).
    package var deadlineServerMilliseconds: Int64
    /// The writes.
    package var change: Plan.Change
    /// The audit records, written first.
    package var records: [AuditRecord]
    /// A key set with the change, in the same atomic step (nil: none).
    package var marker: ChangeMarker?

    /// A run of the script.
    package init(
        keys: FeatureKeys, preconditions: Preconditions, owner: String, deadlineServerMilliseconds: Int64, change: Plan.Change,
        records: [AuditRecord], marker: ChangeMarker? = nil
    ) {
        self.keys = keys
        self.preconditions = preconditions
        self.owner = owner
        self.deadlineServerMilliseconds = deadlineServerMilliseconds
        self.change = change
        self.records = records
        self.marker = marker
    }

    /// The KEYS, in the script's order.
    var redisKeys: [String] {
        [
            keys.rolloutPercent, keys.paused, keys.enabled, keys.lastPercent, keys.lastChangeTime, keys.controllerPercent, keys.lock,
            keys.guardLock, keys.rollbacks, keys.pausedReason, keys.lastGood, keys.streaks, keys.healthySince, AuditTrail.streamKey,
        ] + (marker.map { [$0.key] } ?? [])
    }

    /// The ARGV, in the script's order (its header lists them).
    var arguments: [String] {
        let guardArguments: [String]
        switch change.guardWrite {
        case .none, .keep: guardArguments = ["", "", ""]
        case .release: guardArguments = ["release", "", ""]
        case .set(let value, let window): guardArguments = ["set", value, String(window.wholeMilliseconds)]
        }
        let rollback = change.rollbackRecord
        let rollbackArguments =
            rollback.map { ["\($0.at.unixMilliseconds) \(owner)", String($0.at.unixMilliseconds), String($0.forgetBefore.unixMilliseconds)] }
            ?? ["", "", ""]
        return [
            preconditions.percent, preconditions.paused, preconditions.enabled, preconditions.guardValue, owner,
            String(deadlineServerMilliseconds), String(AuditTrail.maxLength),
            change.to.description, preconditions.percent.isEmpty ? "0" : preconditions.percent, change.time.description,
            change.direction == .promote ? change.time.description : "", change.lastGood?.description ?? "",
        ] + guardArguments + rollbackArguments + [change.flapPause ?? "", String(records.count)] + records.flatMap(\.scriptArguments)
            + (marker.map { [$0.value, String(max(1, $0.ttl.wholeMilliseconds))] } ?? [])
    }

    /// Runs it, waiting for the reply until `waitUntil`, then `WAIT`s as `wait` says in the
    /// same round trip (the replication is nil when none was asked for).
    package func run(
        on redis: RedisClient, waitingUntil waitUntil: ContinuousClock.Instant? = nil, thenWaiting wait: ReplicaWait = .none
    ) async throws(RedisError) -> (Outcome, Replication?) {
        let (reply, replication) = try await redis.evaluate(
            Scripts.applyChange, keys: redisKeys, arguments: arguments, waitingUntil: waitUntil, thenWaiting: wait)
        return (Outcome(reply: reply), replication)
    }
}
