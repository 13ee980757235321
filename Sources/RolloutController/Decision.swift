import Foundation
public import RolloutAdmin
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
    /// Each burn-rate check's error ratio per window; nil for no data.
    public var windowValues: [String: [Duration: Double?]] = [:]
    /// Each cohort check's four counts since the last change (absent: not queried, as before
    /// any recorded change).
    public var cohortAnswers: [String: CohortAnswers] = [:]
    /// Consecutive violating runs before this one, by check outcome name (`flags:<f>:streaks`).
    public var streaks: [String: Int] = [:]
    /// The guard lock, if the feature has one (`flags:<f>:guard`).
    public var guardLock: GuardLock?
    /// Since when every check has had data and been healthy (`flags:<f>:healthy_since`).
    public var healthySince: Timestamp?
    /// The last known good percent (`flags:<f>:last_good`).
    public var lastGood: RolloutPercent?
    /// Why the controller paused the feature, if it did (`flags:<f>:paused_reason`).
    public var pausedReason: String?
    /// When each rollback still in `flags:<f>:rollbacks` happened (flap protection counts those
    /// of the last hour).
    public var rollbacks: [Timestamp] = []

    /// A person's switches (paused, the kill switch) settle the decision alone: no query is sent.
    /// The percent change from ``controllerPercent`` to the current one is already in the audit
    /// log or stream, made within a minute of `last_change_time` (by the original Python
    /// controller, or `rollout flags set-percent`): not a new manual change to record.
    public var changeAlreadyRecorded = false

    public var needsQueries: Bool { !state.paused && state.enabled }

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
        /// A value no query of a policy can give: negative (a ratio, count, latency or burn
        /// rate never is). A broken query or exporter, not evidence: no promotion, no rollback.
        case invalidData = "invalid_data"
        case insufficientSample = "insufficient_sample"
        /// A cohort check cannot tell yet whether the feature's cohort is worse: its interval
        /// straddles max_regression. No promotion, no rollback; more traffic decides.
        case insufficientEvidence = "insufficient_evidence"
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
        /// A guard lock (after a rollback, or an operator's) forbids promotion.
        case guardLocked = "guard_locked"
        /// A freeze window: promotions wait, rollbacks do not.
        case frozen
        /// A check is violated but has not yet been for its `consecutive` runs.
        case violationPending = "violation_pending"
        /// `rollout watch`: healthy, and promotions are left to the controller.
        case watching
        /// First sight of a feature (no `controller_percent`): its percent is adopted and the
        /// dwell starts now; never a promotion at first sight.
        case adopted
        /// The policy lists a percent the feature's bucketing cannot take (a fractional step
        /// or `rollback_to` for a v1 feature): fix the policy; nothing is decided or written.
        case invalidPolicy = "invalid_policy"
    }

    /// One check as judged.
    public struct CheckOutcome: Sendable, Hashable {
        /// The check's name.
        public var name: String
        /// Its value; nil for no data.
        public var value: Double?
        /// ok, violated, pending, no_data or invalid_data.
        public var status: Status
        /// What a violation does.
        public var onViolation: FeaturePolicy.Check.Action
        /// Consecutive violating runs, this one included (kept through runs without data).
        public var streak: Int = 0
        /// The runs a violation needs before it acts.
        public var consecutive: Int = 1
        /// The bound: `max`, or the burn factor of a window pair.
        public var limit: String = ""
        /// What a cohort check found, in words (its interval against max_regression, or why
        /// it has no data); nil for other checks.
        public var detail: String?

        /// A check's status.
        public enum Status: String, Sendable, Hashable {
            case ok, violated
            /// Violated, but for fewer consecutive runs than `consecutive`: holds promotions only.
            case pending
            case noData = "no_data"
            /// A negative value: not judged against the bound, and never healthy.
            case invalidData = "invalid_data"
            /// A cohort check whose interval straddles max_regression: never healthy.
            case inconclusive
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
    /// The controller has never recorded this feature (`controller_percent` absent): it adopts
    /// the current percent and restarts the dwell from now.
    public var firstSight = false
    /// Every check had data and none was violated (not even pending or alert-only).
    public var healthy = false
    /// The streaks to store: outcome name → consecutive violating runs.
    public var streaks: [String: Int] = [:]
    /// Release the guard lock: the controller set it after a rollback and every check has been
    /// healthy for the stability window.
    public var releaseGuard = false
    /// A new last known good percent: the current one, healthy through a full dwell.
    public var newLastGood: RolloutPercent?
    /// The freeze window in force, if any (reported even when something else holds).
    public var freezeWindow: FreezeWindow?

    /// The result label for telemetry: promote, rollback or hold.
    public var result: String {
        switch action {
        case .promote: return "promote"
        case .rollback: return "rollback"
        case .hold: return "hold"
        }
    }
}

extension Verdict {
    /// This verdict as a hold for `reason`.
    func held(_ reason: HoldReason, _ explanation: String) -> Verdict {
        var held = self
        held.action = .hold
        held.holdReason = reason
        held.explanation = explanation
        return held
    }
}

/// The verdict alone (rows 2 to 10 of docs/controller.md's decision table); ``decide(policy:observation:now:promotions:)``
/// adds what it writes.
func verdict(policy: FeaturePolicy, observation: Observation, now: Timestamp) -> Verdict {
    let state = observation.state
    let current = state.rolloutPercent
    let manual = observation.controllerPercent.map { $0 != current } ?? false
    var verdict = Verdict(action: .hold, holdReason: nil, explanation: "", checks: [], alerts: [], manualChangeDetected: manual)
    verdict.firstSight = observation.controllerPercent == nil

    // Every check's outcome, with its streak of consecutive violating runs (kept, like no data,
    // through a run whose data is invalid).
    func judge(
        _ name: String, _ value: Double?, invalid: Bool, violated: (Double) -> Bool, action: FeaturePolicy.Check.Action, consecutive: Int,
        limit: String, inconclusive: Bool = false, detail: String? = nil
    ) {
        let previous = observation.streaks[name] ?? 0
        var outcome = Verdict.CheckOutcome(
            name: name, value: value, status: .noData, onViolation: action, streak: previous, consecutive: consecutive, limit: limit, detail: detail)
        if invalid {
            outcome.status = .invalidData
        } else if let value {
            if violated(value) {
                outcome.streak = previous + 1
                outcome.status = outcome.streak >= consecutive ? .violated : .pending
            } else {
                outcome.streak = 0
                outcome.status = inconclusive ? .inconclusive : .ok
            }
        }
        verdict.checks.append(outcome)
    }
    for check in policy.checks {
        let limit = [check.max.map { "max \(format($0))" }, check.min.map { "min \(format($0))" }].compactMap { $0 }.joined(separator: ", ")
        let value = observation.checkValues[check.name] ?? nil
        judge(
            check.name, value, invalid: value.map(isInvalid) ?? false, violated: check.isViolated, action: check.onViolation,
            consecutive: check.consecutive, limit: limit)
    }
    var burnNames = Set<String>()
    for check in policy.burnRateChecks {
        let ratios = observation.windowValues[check.name] ?? [:]
        for pair in check.windows {
            burnNames.insert(check.outcomeName(of: pair))
            // A negative window is invalid even when the other window has no data; shown as
            // the burn rate it gives.
            let negative = [pair.long, pair.short].compactMap { ratios[$0] ?? nil }.filter(isInvalid).min()
            judge(
                check.outcomeName(of: pair), negative.map(check.burnRate(errorRatio:)) ?? check.burnRate(of: pair, errorRatios: ratios),
                invalid: negative != nil, violated: { $0 > pair.factor }, action: pair.onViolation, consecutive: check.consecutive,
                limit: "burn \(format(pair.factor))x")
        }
    }
    // Cohort checks: the interval against max_regression (CohortComparison), since the last change.
    // At 0% or 100% one cohort is empty by construction: nothing to compare, the other checks
    // decide (and with none, no promotion: see below).
    let cohortsExist = current > .zero && current < .full
    for check in policy.cohortChecks where cohortsExist {
        let limit = "max_regression \(check.comparison.maxRegression)"
        guard let answers = observation.cohortAnswers[check.name] else {
            judge(check.name, nil, invalid: false, violated: { _ in false }, action: check.onViolation, consecutive: check.consecutive, limit: limit)
            continue
        }
        if let negative = answers.negative {
            judge(check.name, negative, invalid: true, violated: { _ in false }, action: check.onViolation, consecutive: check.consecutive, limit: limit)
            continue
        }
        let judged = check.judge(answers)
        var isRegression = false, isInconclusive = false
        if case .regression = judged { isRegression = true }
        if case .inconclusive = judged { isInconclusive = true }
        judge(
            check.name, judged.estimate, invalid: false, violated: { _ in isRegression }, action: check.onViolation,
            consecutive: check.consecutive, limit: limit, inconclusive: isInconclusive, detail: judged.summary(of: check))
    }
    // Alert checks report only; a burning error budget is always worth an alert too.
    verdict.alerts = verdict.checks.filter { $0.status == .violated && ($0.onViolation == .alert || burnNames.contains($0.name)) }.map(\.name)
    // Names are unique (the policy refuses duplicates); never trap on one all the same.
    verdict.streaks = Dictionary(verdict.checks.map { ($0.name, $0.streak) }) { first, _ in first }
    var invalidRequests: Double?
    if case .some(.some(let requests)) = observation.requests, isInvalid(requests) { invalidRequests = requests }
    verdict.healthy = !verdict.checks.isEmpty && verdict.checks.allSatisfy { $0.status == .ok } && invalidRequests == nil
    verdict.freezeWindow = policy.freezeWindow(at: now)

    // Bookkeeping, whatever the action: the guard's early release and the last known good.
    if let guardLock = observation.guardLock, guardLock.origin == .rollback, verdict.healthy, let since = observation.healthySince,
        now.duration(since: since) >= policy.stabilityWindow
    {
        verdict.releaseGuard = true
    }
    // Healthy through a full dwell: every run since at least `dwell` ago saw it healthy with data
    // (healthy_since starts at the promotion and is cleared by any unhealthy run).
    if verdict.healthy, !manual, !verdict.firstSight, current > .zero, current > (observation.lastGood ?? .zero), let changed = state.lastChangeTime,
        now.duration(since: changed) >= policy.dwell, let since = observation.healthySince, now.duration(since: since) >= policy.dwell
    {
        verdict.newLastGood = current
    }

    func hold(_ reason: Verdict.HoldReason, _ explanation: String) -> Verdict { verdict.held(reason, explanation) }

    // 2. A person's switches win over everything.
    if state.paused {
        let why = observation.pausedReason.map { " (\($0))" } ?? ""
        return hold(.paused, "paused\(why): the controller leaves it alone until `rollout flags resume`")
    }
    if !state.enabled { return hold(.disabled, "kill switch on (enabled is false): nothing to roll") }

    // 5. Rollback first: it never waits for dwell, cooldown, a guard or a freeze.
    let rollbackViolations = verdict.checks.filter { $0.status == .violated && $0.onViolation == .rollback }
    if !rollbackViolations.isEmpty {
        let names = rollbackViolations.map { "\($0.name)=\(format($0.value))\($0.detail.map { " (\($0))" } ?? "")" }.joined(separator: ", ")
        let target = policy.rollbackTarget(from: current, lastGood: writableLastGood(observation))
        if target < current {
            verdict.action = .rollback(to: target)
            verdict.explanation = "rollback: \(names) violated; \(current)% -> \(target)% (rollback_to \(policy.rollbackTo))"
            return verdict
        }
        return hold(.atRollbackTarget, "\(names) violated, but \(current)% is already at or below the rollback target")
    }

    // 4. Invalid data is no evidence: never healthy, no promotion (and, above, no rollback).
    var invalid = verdict.checks.filter { $0.status == .invalidData }.map { "\($0.name)=\(format($0.value))" }
    if let invalidRequests { invalid.append("min_requests=\(format(invalidRequests))") }
    if !invalid.isEmpty {
        return hold(
            .invalidData,
            "invalid data, negative where no ratio, count, latency or burn rate can be: \(invalid.joined(separator: ", ")). "
                + "Check the query and its exporter; no promotion, and no rollback on it")
    }

    // 4. No data is never healthy; nor is a run in which no check applied (only cohort checks,
    // at 0%: no promotion without evidence).
    if verdict.checks.isEmpty {
        return hold(
            .noData,
            "no check applies at \(current)%: a cohort check needs both cohorts. Add a threshold or burn_rate check to judge the step from \(current)%")
    }
    let missing = verdict.checks.filter { $0.status == .noData }
    if !missing.isEmpty {
        // A cohort check's detail has commas of its own: then the entries are set apart by semicolons.
        let separator = missing.contains { $0.detail != nil } ? "; " : ", "
        let names = missing.map { check in check.detail.map { "\(check.name) (\($0))" } ?? check.name }
        return hold(.noData, "no data for \(names.joined(separator: separator)): no promotion without evidence")
    }
    let inconclusive = verdict.checks.filter { $0.status == .inconclusive }.map { "\($0.name): \($0.detail ?? "inconclusive")" }
    if !inconclusive.isEmpty {
        return hold(.insufficientEvidence, "\(inconclusive.joined(separator: "; ")); no promotion until the evidence decides")
    }
    let holds = verdict.checks.filter { $0.status == .violated && $0.onViolation == .hold }
    if !holds.isEmpty {
        return hold(.checkViolated, "\(holds.map { "\($0.name)=\(format($0.value))" }.joined(separator: ", ")) violated: holding")
    }
    // A promotion needs every cohort check healthy: an alert-only regression still holds.
    let cohortNames = Set(policy.cohortChecks.map(\.name))
    let regressed = verdict.checks.filter { cohortNames.contains($0.name) && ($0.status == .violated || $0.status == .pending) }
    if !regressed.isEmpty {
        let names = regressed.map { "\($0.name) (\($0.detail ?? "a regression"))" }.joined(separator: ", ")
        return hold(.checkViolated, "\(names): no promotion while the feature's cohort is worse")
    }
    let pending = verdict.checks.filter { $0.status == .pending && $0.onViolation != .alert }
    if !pending.isEmpty {
        let names = pending.map { "\($0.name)=\(format($0.value)) (\($0.streak) of \($0.consecutive) runs)" }.joined(separator: ", ")
        return hold(.violationPending, "\(names) violated, not yet for enough consecutive runs to act; no promotion meanwhile")
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
    if verdict.firstSight {
        // Whoever set the percent, and whenever, the controller has not watched it: it records
        // the percent with the time as its last change and waits a full dwell.
        return hold(.adopted, "first sight: the controller adopts \(current)% and waits a full dwell (\(formatDuration(policy.dwell))) before any promotion")
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
    // After cooldown and dwell, so that a file without guard settings holds with the same
    // reasons as before (the default cooldown outlasts the default guard window).
    if let guardLock = observation.guardLock, !verdict.releaseGuard {
        return hold(.guardLocked, "guard \(guardLock)")
    }
    if let window = verdict.freezeWindow {
        return hold(.frozen, "healthy, but promotions are frozen \(window)")
    }
    verdict.action = .promote(to: next)
    verdict.explanation = "healthy: \(current)% -> \(next)%"
    return verdict
}

/// A rollback asked for from outside the checks: an alert labelled `rollout_action="rollback"`
/// (an error-budget burn that pages the rollout directly).
public struct ForcedRollback: Sendable, Hashable {
    /// Who asked, for the audit record and the report: `alert HighErrorBudgetBurn (fingerprint
    /// 4f2a...)`. Folded to one line; never a URL or a secret.
    public var requestedBy: String

    /// A forced rollback requested by `requestedBy`.
    public init(requestedBy: String) { self.requestedBy = requestedBy }
}

/// The verdict of a forced rollback: the checks are not judged (no query is sent for it); a
/// person's switches still win, and a feature at or below its rollback target has nothing to
/// do. Everything after the verdict (guard, flap protection, records) is ``decide(policy:observation:now:promotions:forcedRollback:)``'s, as for any rollback.
func forcedVerdict(policy: FeaturePolicy, observation: Observation, now: Timestamp, forced: ForcedRollback) -> Verdict {
    let state = observation.state
    let current = state.rolloutPercent
    let manual = observation.controllerPercent.map { $0 != current } ?? false
    var verdict = Verdict(action: .hold, holdReason: nil, explanation: "", checks: [], alerts: [], manualChangeDetected: manual)
    verdict.firstSight = observation.controllerPercent == nil
    verdict.streaks = observation.streaks
    verdict.freezeWindow = policy.freezeWindow(at: now)
    func hold(_ reason: Verdict.HoldReason, _ explanation: String) -> Verdict { verdict.held(reason, explanation) }
    if state.paused {
        let why = observation.pausedReason.map { " (\($0))" } ?? ""
        return hold(.paused, "paused\(why): a rollback forced by \(forced.requestedBy) waits for `rollout flags resume`; nothing to do")
    }
    if !state.enabled { return hold(.disabled, "kill switch on (enabled is false): a rollback forced by \(forced.requestedBy) has nothing to do") }
    let target = policy.rollbackTarget(from: current, lastGood: writableLastGood(observation))
    guard target < current else {
        return hold(.atRollbackTarget, "rollback forced by \(forced.requestedBy), but \(current)% is already at or below the rollback target: nothing to do")
    }
    verdict.action = .rollback(to: target)
    verdict.explanation = "rollback forced by \(forced.requestedBy); \(current)% -> \(target)% (rollback_to \(policy.rollbackTo)), checks not awaited"
    return verdict
}

/// Whether a query's value is impossible for what every check measures (a ratio, a count, a
/// latency, a burn rate): below zero. -0.0 is zero (IEEE 754 compares it equal to 0; PromQL
/// gives it for `-1 * 0`, as for a rate of nothing negated), so it is valid.
func isInvalid(_ value: Double) -> Bool { value < 0 }

/// A check value as printed: integers without a fraction, others to four significant digits.
public func format(_ value: Double?) -> String {
    guard let value else { return "no data" }
    if value == value.rounded() && abs(value) < 1e15 { return String(Int64(value)) }
    return String(format: "%.4g", value)
}

/// The recorded last good percent as the feature's bucketing can take it: for a v1 feature,
/// rounded down to a whole percent (a hand-written "37.5" read back by a healthy run), so a
/// rollback to it never writes a percent the original Python gate's `int()` cannot read.
private func writableLastGood(_ observation: Observation) -> RolloutPercent? {
    guard let lastGood = observation.lastGood, observation.state.bucketing == .v1 else { return observation.lastGood }
    return RolloutPercent(thousandths: lastGood.wholePercent * 1000) ?? .zero
}
