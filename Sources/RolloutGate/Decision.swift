/// The gate's answer for one subject, with the reason it was given.
public struct Decision: Sendable, Hashable, CustomStringConvertible {
    /// Whether the feature is on for the subject.
    public let isOn: Bool
    /// Why.
    public let reason: Reason
    /// How current the snapshot that answered was.
    public let freshness: Freshness
    /// Whether the bucket rule decided for a subject without an id: v2 answers
    /// ``Reason/anonymousActor(percent:)``; v1 buckets it as the id `anon`, as the original
    /// Python gate does (reason `bucket`), so every anonymous request shares one bucket.
    public let isAnonymous: Bool

    /// A decision, its reason and the freshness of the snapshot it came from.
    public init(isOn: Bool, reason: Reason, freshness: Freshness = .live, isAnonymous: Bool = false) {
        self.isOn = isOn
        self.reason = reason
        self.freshness = freshness
        self.isAnonymous = isAnonymous
    }

    /// How current the snapshot behind a decision was.
    public enum Freshness: Sendable, Hashable, CustomStringConvertible {
        /// Read from Redis within the refresh interval (or kept current by push invalidation).
        case live
        /// Redis has not been read for `age`, longer than the refresh interval: the last known
        /// answer stands (fail static).
        case stale(age: Duration)
        /// Redis has not answered since the process started: the answer comes from the gate's
        /// snapshot file (``FeatureGate/Configuration/snapshotFile``), written at `writtenAt`.
        case snapshotFile(writtenAt: Timestamp)

        /// A stable word for scripts: `live`, `stale` or `snapshot_file`.
        public var code: String {
            switch self {
            case .live: return "live"
            case .stale: return "stale"
            case .snapshotFile: return "snapshot_file"
            }
        }

        public var description: String {
            switch self {
            case .live: return "live"
            case .stale(let age): return "stale \(age.components.seconds) s"
            case .snapshotFile(let written): return "from snapshot file, written \(written.secondsDescription)"
            }
        }
    }

    /// Why the gate decided as it did, in the order the rules are applied.
    public enum Reason: Sendable, Hashable, CustomStringConvertible {
        /// A key of the feature holds a value that breaks the contract; off for everyone.
        case invalidState(key: String)
        /// `flags:<f>:enabled` is false.
        case killSwitch
        /// The process-level `ROLLOUT_<FEATURE>_ENABLED=false` is set.
        case processOverride(variable: String)
        /// The stickiness key is in `flags:<f>:deny`.
        case denied
        /// The stickiness key is in `flags:<f>:allow`.
        case allowed
        /// `internal_only` is true and the actor is not internal.
        case internalOnly
        /// The bucket rule: `bucket` against `threshold` under `scheme`, with the percent that
        /// applied and whether it came from the workspace's override.
        case bucket(scheme: BucketingScheme, bucket: Int, threshold: Int, percent: RolloutPercent, fromWorkspace: Bool)
        /// The actor has no id, under v2: on only at 100% (v1 buckets it as `anon`: ``bucket(scheme:bucket:threshold:percent:fromWorkspace:)``).
        case anonymousActor(percent: RolloutPercent)
        /// Nothing has been read from Redis for this feature yet.
        case noData
        /// The snapshot is older than ``FeatureGate/Configuration/maxStaleness`` (only when one
        /// is set): failing closed.
        case staleSnapshot
        /// The feature name breaks the name rule (a literal such as `"Google"`): off, never a crash.
        case invalidName

        /// A stable machine-readable code: `kill_switch`, `bucket`, `invalid_state`...
        public var code: String {
            switch self {
            case .invalidState: return "invalid_state"
            case .killSwitch: return "kill_switch"
            case .processOverride: return "process_override"
            case .denied: return "denied"
            case .allowed: return "allowed"
            case .internalOnly: return "internal_only"
            case .bucket: return "bucket"
            case .anonymousActor: return "anonymous_actor"
            case .noData: return "no_data"
            case .staleSnapshot: return "stale_snapshot"
            case .invalidName: return "invalid_name"
            }
        }

        public var description: String {
            switch self {
            case .invalidState(let key): return "invalid state in \(key): off for everyone until it is fixed"
            case .killSwitch: return "kill switch: enabled is false"
            case .processOverride(let variable): return "process override: \(variable)=false"
            case .denied: return "in the deny set"
            case .allowed: return "in the allow set"
            case .internalOnly: return "internal only, and the actor is not internal"
            case .bucket(let scheme, let bucket, let threshold, let percent, let fromWorkspace):
                let source = fromWorkspace ? "workspace percent" : "rollout percent"
                let inside = scheme == .v2 ? bucket < threshold : bucket <= threshold
                let comparison = scheme == .v2 ? (inside ? "<" : ">=") : (inside ? "<=" : ">")
                return "bucket \(bucket) \(comparison) threshold \(threshold) (\(scheme), \(source) \(percent)%)"
            case .anonymousActor(let percent): return "actor has no id: on only at 100% (now \(percent)%)"
            case .noData: return "no data from Redis yet"
            case .staleSnapshot: return "snapshot older than the allowed staleness and Redis unreachable: failing closed"
            case .invalidName: return "not a valid feature name: off"
            }
        }
    }

    public var description: String {
        let answer = "\(isOn ? "on" : "off"): \(reason)"
        return freshness == .live ? answer : "\(answer) (\(freshness))"
    }
}

/// Who is being evaluated: the subject's id, its workspace, and whether it is internal.
public struct Subject: Sendable, Hashable {
    /// The subject's id; empty means anonymous (v2: on only at 100%; v1: the id `anon`, as the
    /// original Python gate buckets it).
    public var id: String
    /// The workspace, making the stickiness key `<workspace>:<id>`; nil or empty for none.
    public var workspace: String?
    /// Whether the subject is internal (staff), for `internal_only` features.
    public var isInternal: Bool

    /// A subject.
    public init(id: String, workspace: String? = nil, isInternal: Bool = false) {
        self.id = id
        self.workspace = workspace
        self.isInternal = isInternal
    }

    /// The key allow and deny sets hold: `<workspace>:<id>`, or `<id>`.
    public var stickinessKey: String {
        guard let workspace, !workspace.isEmpty else { return id }
        return workspace + ":" + id
    }
}

/// The old name of ``Subject``; it shadowed Swift's `Actor` protocol in every importing module.
@available(*, deprecated, renamed: "Subject")
public typealias Actor = Subject

/// Which of the gate's rules decided, and its numbers: what a check needs, in a few bytes that
/// cost nothing to copy or destroy. A ``Decision`` adds the words (``FeatureState/decide(for:overriddenBy:percentOverride:)``).
enum Rule {
    case killSwitch
    case processOverride
    case denied
    case allowed
    case internalOnly
    case bucket(bucket: Int, percent: RolloutPercent, fromWorkspace: Bool, isOn: Bool)
    case anonymousActor(percent: RolloutPercent)

    var isOn: Bool {
        switch self {
        case .killSwitch, .processOverride, .denied, .internalOnly: return false
        case .allowed: return true
        case .bucket(_, _, _, let isOn): return isOn
        case .anonymousActor(let percent): return percent == .full
        }
    }
}

extension FeatureState {
    /// The gate's rules, first match wins (docs/bucketing.md, "Decision order"), for a valid
    /// state. `overridden` is the process-level kill switch; `percentOverride` answers as if
    /// rollout_percent were that (the CLI's `--at`).
    public func decide(for actor: Subject, overriddenBy variable: String? = nil, percentOverride: RolloutPercent? = nil) -> Decision {
        let rule = rule(for: actor, overridden: variable != nil, percentOverride: percentOverride)
        let reason: Decision.Reason
        switch rule {
        case .killSwitch: reason = .killSwitch
        case .processOverride: reason = .processOverride(variable: variable ?? feature.overrideVariable)
        case .denied: reason = .denied
        case .allowed: reason = .allowed
        case .internalOnly: reason = .internalOnly
        case .bucket(let bucket, let percent, let fromWorkspace, _):
            reason = .bucket(
                scheme: bucketing, bucket: bucket, threshold: Bucketing.threshold(scheme: bucketing, percent: percent),
                percent: percent, fromWorkspace: fromWorkspace)
        case .anonymousActor(let percent): reason = .anonymousActor(percent: percent)
        }
        let bucketRule: Bool
        switch rule {
        case .bucket, .anonymousActor: bucketRule = true
        default: bucketRule = false
        }
        return Decision(isOn: rule.isOn, reason: reason, isAnonymous: bucketRule && actor.id.isEmpty)
    }

    /// The rule that decides for `actor`: the one place the decision order is written.
    @inline(__always)
    func rule(for actor: Subject, overridden: Bool, percentOverride: RolloutPercent?) -> Rule {
        if !enabled { return .killSwitch }
        if overridden { return .processOverride }
        if !deny.isEmpty || !allow.isEmpty {
            // Only built when a set exists: the common path allocates nothing.
            let key = actor.stickinessKey
            if deny.contains(key) { return .denied }
            if allow.contains(key) { return .allowed }
        }
        if internalOnly && !actor.isInternal { return .internalOnly }
        var percent = percentOverride ?? rolloutPercent
        var fromWorkspace = false
        if percentOverride == nil, let workspace = actor.workspace, !workspaces.isEmpty, let override = workspaces[workspace] {
            percent = override
            fromWorkspace = true
        }
        guard let bucket = Bucketing.bucket(scheme: bucketing, feature: feature, workspace: actor.workspace, actor: actor.id) else {
            return .anonymousActor(percent: percent)
        }
        return .bucket(
            bucket: bucket, percent: percent, fromWorkspace: fromWorkspace,
            isOn: Bucketing.isInside(bucket: bucket, scheme: bucketing, percent: percent))
    }
}
