import Foundation
public import RolloutGate

/// What one feature's evaluation saw: its state in Redis and each query's answer.
public struct Observation: Sendable, Hashable {
    /// The feature's parsed keys.
    public var state: FeatureState
    /// `flags:<f>:controller_percent`: what the controller last wrote, if it ever did.
    public var controllerPercent: RolloutPercent?
    /// Each check's value: nil when Prometheus had no data (empty result, NaN, ±Inf).
    public var checkValues: [String: Double?]
    /// The traffic query's value, when the policy has one; nil inner value is no data.
    public var requests: Double??

    /// An observation.
    public init(state: FeatureState, controllerPercent: RolloutPercent?, checkValues: [String: Double?], requests: Double?? = .none) {
        self.state = state
        self.controllerPercent = controllerPercent
        self.checkValues = checkValues
        self.requests = requests
    }
}

/// The controller's verdict for one feature, before it is applied.
public struct Verdict: Sendable, Hashable {
    /// What to do.
    public enum Action: Sendable, Hashable {
        /// Move up to the next step.
        case promote(to: RolloutPercent)
        /// Move down at once.
        case rollback(to: RolloutPercent)
        /// Change nothing.
        case hold
    }

    /// Why a feature is held: machine-readable, the same in output, JSON and telemetry.
    public enum HoldReason: String, Sendable, Hashable, CaseIterable {
        case paused, disabled, dwell, cooldown
        case noData = "no_data"
        case insufficientSample = "insufficient_sample"
        case promUnreachable = "prom_unreachable"
        case concurrentChange = "concurrent_change"
        case locked
        case atLastStep = "at_last_step"
        /// A `hold` check is violated.
        case checkViolated = "check_violated"
        /// A rollback check is violated but the feature is already at (or below) its rollback target.
        case atRollbackTarget = "at_rollback_target"
        case redisError = "redis_error"
        case corruptState = "corrupt_state"
    }

    /// One check as judged.
    public struct CheckOutcome: Sendable, Hashable {
        /// The check's name.
        public var name: String
        /// Its value; nil for no data.
        public var value: Double?
        /// ok, violated or no_data.
        public var status: Status
        /// What a violation does.
        public var onViolation: FeaturePolicy.Check.Action

        /// A check's status.
        public enum Status: String, Sendable, Hashable {
            case ok, violated
            case noData = "no_data"
        }
    }

    /// What to do.
    public var action: Action
    /// For holds, the reason code.
    public var holdReason: HoldReason?
    /// One sentence for people.
    public var explanation: String
    /// Each check's outcome, in policy order.
    public var checks: [CheckOutcome]
    /// Checks with `on_violation: alert` that are violated: reported, nothing else.
    public var alerts: [String]
    /// A person changed rollout_percent since the controller last wrote it.
    public var manualChangeDetected: Bool

    /// The result label for telemetry: promote, rollback or hold.
    public var result: String {
        switch action {
        case .promote: return "promote"
        case .rollback: return "rollback"
        case .hold: return "hold"
        }
    }
}

/// The decision table of docs/controller.md, as a pure function: no I/O, the clock passed in.
/// Corrupt state and unreachable servers are handled before it is called.
public func decide(policy: FeaturePolicy, observation: Observation, now: Timestamp) -> Verdict {
    let state = observation.state
    let current = state.rolloutPercent
    let manual = observation.controllerPercent.map { $0 != current } ?? false
    var verdict = Verdict(action: .hold, holdReason: nil, explanation: "", checks: [], alerts: [], manualChangeDetected: manual)

    for check in policy.checks {
        let value = observation.checkValues[check.name] ?? nil
        let status: Verdict.CheckOutcome.Status
        if let value { status = check.isViolated(by: value) ? .violated : .ok } else { status = .noData }
        verdict.checks.append(Verdict.CheckOutcome(name: check.name, value: value, status: status, onViolation: check.onViolation))
    }
    verdict.alerts = verdict.checks.filter { $0.status == .violated && $0.onViolation == .alert }.map(\.name)

    func hold(_ reason: Verdict.HoldReason, _ explanation: String) -> Verdict {
        var held = verdict
        held.action = .hold
        held.holdReason = reason
        held.explanation = explanation
        return held
    }

    // 2. A person's switches win over everything.
    if state.paused { return hold(.paused, "paused: the controller leaves it alone until `rollout flags resume`") }
    if !state.enabled { return hold(.disabled, "kill switch on (enabled is false): nothing to roll") }

    // 5. Rollback first: it never waits for dwell or cooldown.
    let rollbackViolations = verdict.checks.filter { $0.status == .violated && $0.onViolation == .rollback }
    if !rollbackViolations.isEmpty {
        let names = rollbackViolations.map { "\($0.name)=\(format($0.value))" }.joined(separator: ", ")
        let target = policy.rollbackTarget(from: current)
        if target < current {
            verdict.action = .rollback(to: target)
            verdict.explanation = "rollback: \(names) violated; \(current)% -> \(target)% (rollback_to \(policy.rollbackTo))"
            return verdict
        }
        return hold(.atRollbackTarget, "\(names) violated, but \(current)% is already at or below the rollback target")
    }

    // 4. No data is never healthy.
    let missing = verdict.checks.filter { $0.status == .noData }.map(\.name)
    if !missing.isEmpty {
        return hold(.noData, "no data for \(missing.joined(separator: ", ")): no promotion without evidence")
    }
    let holds = verdict.checks.filter { $0.status == .violated && $0.onViolation == .hold }
    if !holds.isEmpty {
        return hold(.checkViolated, "\(holds.map { "\($0.name)=\(format($0.value))" }.joined(separator: ", ")) violated: holding")
    }
    if let floor = policy.minRequests {
        switch observation.requests {
        case .some(.some(let requests)) where requests >= floor.atLeast:
            break
        case .some(.some(let requests)):
            return hold(.insufficientSample, "traffic \(format(requests)) is below min_requests \(format(floor.atLeast))")
        default:
            return hold(.insufficientSample, "no traffic data for min_requests: no promotion without evidence")
        }
    }

    // 6. Healthy with data: promote when the guards allow.
    guard let next = policy.nextStep(after: current) else {
        return hold(.atLastStep, "healthy at \(current)%, the last step")
    }
    if manual {
        // Counted from now: the controller records the detection as the last change.
        return hold(.dwell, "rollout_percent was changed by hand to \(current)%; the dwell restarts now")
    }
    if let changed = state.lastChangeTime {
        let waited = now.duration(since: changed)
        let isRollback = (state.lastPercent.map { $0 > current }) ?? false
        if isRollback && waited < policy.cooldownAfterRollback {
            return hold(.cooldown, "cooling down after a rollback: \(formatDuration(waited)) of \(formatDuration(policy.cooldownAfterRollback))")
        }
        if waited < policy.dwell {
            return hold(.dwell, "dwelling at \(current)%: \(formatDuration(waited)) of \(formatDuration(policy.dwell))")
        }
    }
    verdict.action = .promote(to: next)
    verdict.explanation = "healthy: \(current)% -> \(next)%"
    return verdict
}

/// A check value as printed: integers without a fraction, others to four significant digits.
public func format(_ value: Double?) -> String {
    guard let value else { return "no data" }
    if value == value.rounded() && abs(value) < 1e15 { return String(Int64(value)) }
    return String(format: "%.4g", value)
}

/// A duration as people write it: 4m30s, 1h, 15m.
public func formatDuration(_ duration: Duration) -> String {
    var seconds = duration.components.seconds
    if seconds <= 0 { return "0s" }
    var text = ""
    for (unit, size) in [("d", Int64(86_400)), ("h", 3600), ("m", 60)] where seconds >= size {
        text += "\(seconds / size)\(unit)"
        seconds %= size
    }
    if seconds > 0 || text.isEmpty { text += "\(seconds)s" }
    return text
}
