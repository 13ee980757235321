public import RolloutAdmin
public import RolloutAudit
public import RolloutGate
public import RolloutRedis

/// What the controller did with one feature.
public struct FeatureReport: Sendable {
    /// The feature.
    public var feature: FeatureName
    /// Its state as read, when it could be read and parsed.
    public var state: FeatureState?
    /// What the controller last wrote.
    public var controllerPercent: RolloutPercent?
    /// The decision, when the evaluation got that far.
    public var verdict: Verdict?
    /// When it was decided (the run's clock), when it was.
    public var decidedAt: Timestamp?
    /// The traffic value, when the policy has min_requests.
    public var requests: Double?
    /// The queries that failed.
    public var queryErrors: [String] = []
    /// Why the feature was held, when it was.
    public var holdReason: Verdict.HoldReason?
    /// One sentence for people.
    public var explanation = ""
    /// Whether a change was written to Redis.
    public var applied = false
    /// Whether a dry run recommended a change.
    public var recommended = false
    /// The guard lock as read (nil after the run released it).
    public var guardLock: GuardLock?
    /// What the run did to the guard lock.
    public var guardEvent: GuardEvent?
    /// The rollback reached `max_rollbacks_per_hour`: the feature is now paused for a person.
    public var pausedByFlapProtection = false
    /// A person's change, detected and recorded this run (`10% -> 25%`).
    public var manualChange: String?
    /// The feature was seen for the first time and its percent adopted this run.
    public var adopted = false
    /// The run's write reached fewer replicas than asked: it stands on the primary, with a
    /// `not replicated` audit note, and the run exits 1.
    public var notReplicated: Replication?
    /// Every query of this feature was answered (no data included): Prometheus is up.
    public var prometheusAnswered = false
    /// The condition last notified, as read (`flags:<f>:notified`).
    public var notifiedCondition: String?

    /// What a run did to the guard lock.
    public enum GuardEvent: String, Sendable {
        /// Set after a rollback.
        case locked
        /// Released early: every check healthy for the stability window.
        case released
    }

    init(feature: FeatureName) { self.feature = feature }

    func held(_ reason: Verdict.HoldReason, _ explanation: String) -> FeatureReport {
        var copy = self
        copy.holdReason = reason
        copy.explanation = explanation
        return copy
    }

    func held(_ hold: Hold) -> FeatureReport { held(hold.reason, hold.explanation) }

    /// promote, rollback or hold: what happened (a recommendation in a dry run).
    public var result: String {
        if holdReason != nil { return "hold" }
        return verdict?.result ?? "hold"
    }

    /// The percent after the run (before it for holds and dry runs).
    public var targetPercent: RolloutPercent? {
        guard let verdict, holdReason == nil else { return state?.rolloutPercent }
        switch verdict.action {
        case .promote(let to), .rollback(let to): return to
        case .hold: return state?.rolloutPercent
        }
    }
}

/// One run over every feature.
public struct RunReport: Sendable {
    /// When the run started.
    public var startedAt: Timestamp
    /// Whether nothing was written.
    public var dryRun: Bool
    /// Each feature, in policy order.
    public var features: [FeatureReport]
    /// What the calls to each remote endpoint did: attempts, retries, breaker state.
    public var network: [String: CallStatistics] = [:]
    /// Records of earlier (or other) runs that this run wrote to the Markdown log: changes
    /// whose process died, or could not write the file, before it wrote them.
    public var auditRecordsCaughtUp: [AuditRecord] = []
    /// Why the Markdown log could not be written after the run (its records are safe in Redis).
    public var auditLogError: String?

    /// The run's status for telemetry: ok, prom_unreachable, redis_error or corrupt_state.
    public var status: String {
        let reasons = features.compactMap(\.holdReason)
        if reasons.contains(.corruptState) { return "corrupt_state" }
        // Exit 2, as a policy error: never "ok", or an alert on failed runs would miss it.
        if reasons.contains(.invalidPolicy) { return "invalid_policy" }
        if reasons.contains(.redisError) { return "redis_error" }
        if reasons.contains(.promUnreachable) { return "prom_unreachable" }
        return "ok"
    }
}
