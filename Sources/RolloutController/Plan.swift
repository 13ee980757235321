import RolloutAdmin
import RolloutAudit
public import RolloutGate

/// Everything one evaluation does after its read: the verdict and every write it implies. The
/// controller applies it as it is, under compare-and-set; the scripts choose nothing.
@dynamicMemberLookup
public struct Plan: Sendable, Hashable {
    /// What was decided, and why.
    public var verdict: Verdict
    /// A percent the controller did not write, recorded before anything else (`acknowledge_percent.lua`).
    public var acknowledgement: Acknowledgement?
    /// What is written then.
    public var writes: Writes
    /// When it was decided: the time of every write and record.
    public var time: Timestamp

    /// What a plan writes after its acknowledgement.
    public enum Writes: Sendable, Hashable {
        /// Nothing: a person's switch (paused, the kill switch) holds the feature.
        case none
        /// A run without a change: its bookkeeping (`record_evaluation.lua`), then the guard's release.
        case bookkeeping(Bookkeeping)
        /// A promotion or a rollback (`apply_change.lua`).
        case change(Change)
    }

    /// A person's change, or first sight: the percent becomes `controller_percent` and the dwell restarts.
    public struct Acknowledgement: Sendable, Hashable {
        /// What the controller last wrote; nil at first sight.
        public var known: RolloutPercent?
        /// The percent found.
        public var current: RolloutPercent
        /// The change is already in the audit log or stream (the original Python controller
        /// made it, or `rollout flags set-percent`): acknowledged without a second record.
        public var alreadyRecorded: Bool

        /// An acknowledgement.
        package init(known: RolloutPercent?, current: RolloutPercent, alreadyRecorded: Bool = false) {
            self.known = known
            self.current = current
            self.alreadyRecorded = known != nil && alreadyRecorded
        }

        /// The audit record's change.
        public var change: String { known.map { "\($0)% -> \(current)%" } ?? "adopted at \(current)%" }
        /// The audit record's reason.
        public var reason: String {
            known == nil
                ? "first sight: the controller had never recorded this feature; the dwell starts now"
                : "changed outside the controller; the dwell restarts now"
        }
        /// The audit record's author.
        public var by: String { known == nil ? "controller" : AuditRecord.manualDetectedAuthor }
    }

    /// What a run without a change records.
    public struct Bookkeeping: Sendable, Hashable {
        /// Each check's consecutive violating runs, the non-zero ones only.
        public var streaks: [String: Int]
        /// Every check healthy with data: `healthy_since` starts (or stays); else it is deleted.
        public var healthy: Bool
        /// A new last known good percent.
        public var lastGood: RolloutPercent?
        /// The controller's own guard, as read, to release (compare-and-delete).
        public var releaseGuard: String?

        /// Bookkeeping.
        package init(streaks: [String: Int], healthy: Bool, lastGood: RolloutPercent?, releaseGuard: String?) {
            self.streaks = streaks
            self.healthy = healthy
            self.lastGood = lastGood
            self.releaseGuard = releaseGuard
        }
    }

    /// A promotion or a rollback, with every key it writes.
    public struct Change: Sendable, Hashable {
        /// Up or down.
        public enum Direction: String, Sendable, Hashable {
            case promote, rollback
        }

        /// What happens to `flags:<f>:guard`.
        public enum GuardWrite: Sendable, Hashable {
            /// Nothing: no guard window, or a promotion with no guard.
            case none
            /// A promotion releases the controller's guard it read.
            case release
            /// A rollback locks it for `window` with `value`.
            case set(value: String, window: Duration)
            /// A rollback keeps a guard that lasts longer (an operator's, or one with no expiry).
            case keep
        }

        /// Up or down.
        public var direction: Direction
        /// The percent as read.
        public var from: RolloutPercent
        /// The percent written.
        public var to: RolloutPercent
        /// The audit record's reason.
        public var reason: String
        /// The guard's fate.
        public var guardWrite: GuardWrite
        /// The `last_good` to record (a new one, or one lowered to a rollback's target); nil leaves it.
        public var lastGood: RolloutPercent?
        /// A rollback enters `flags:<f>:rollbacks` at this time, and those before `forgetBefore` leave.
        public var rollbackRecord: (at: Timestamp, forgetBefore: Timestamp)? {
            direction == .rollback ? (time, time.advanced(by: .zero - flapWindow)) : nil
        }
        /// When it is applied.
        public var time: Timestamp
        /// Flap protection: the feature is paused, with this reason, in the same step.
        public var flapPause: String?

        /// A change; `lastGood` and `flapPause` nil write neither.
        package init(
            direction: Direction, from: RolloutPercent, to: RolloutPercent, reason: String, guardWrite: GuardWrite, lastGood: RolloutPercent? = nil,
            time: Timestamp, flapPause: String? = nil
        ) {
            self.direction = direction
            self.from = from
            self.to = to
            self.reason = reason
            self.guardWrite = guardWrite
            self.lastGood = lastGood
            self.time = time
            self.flapPause = flapPause
        }

        /// The audit record's change.
        public var change: String { "\(from)% -> \(to)%" }
        /// A guard forbids promotion after it (set now, or a longer one kept).
        public var leavesGuard: Bool {
            switch guardWrite {
            case .set, .keep: true
            case .none, .release: false
            }
        }
    }

    /// The verdict's fields, read through the plan.
    public subscript<Value>(dynamicMember path: KeyPath<Verdict, Value>) -> Value { verdict[keyPath: path] }
}

/// Flap protection counts the rollbacks of this long.
let flapWindow = Duration.seconds(3600)

/// The decision table of docs/controller.md, as a pure function: no I/O, the clock passed in.
/// Corrupt state and unreachable servers are handled before it is called. With `promotions`
/// false (`rollout watch`) a promotion is held with `watching`; rollbacks act. With
/// `forcedRollback` (an alert that pages the rollout) the checks are not judged: the feature
/// rolls back to its rollback target, with the same guard, flap protection and records as any
/// rollback, unless a person's switch holds it or it is already at or below the target.
public func decide(
    policy: FeaturePolicy, observation: Observation, now: Timestamp, promotions: Bool = true, forcedRollback: ForcedRollback? = nil
) -> Plan {
    var verdict =
        forcedRollback.map { forcedVerdict(policy: policy, observation: observation, now: now, forced: $0) }
        ?? verdict(policy: policy, observation: observation, now: now)
    // 2. A person's switches: nothing is written, not even the bookkeeping.
    guard observation.needsQueries else { return Plan(verdict: verdict, acknowledgement: nil, writes: .none, time: now) }
    if !promotions, case .promote = verdict.action {
        verdict.action = .hold
        verdict.holdReason = .watching
        verdict.explanation = "healthy; watch mode applies rollback checks only, promotions are the controller's"
    }
    // 8. A percent the controller did not write is recorded once; the dwell restarts now.
    let state = observation.state
    let acknowledgement =
        verdict.manualChangeDetected || verdict.firstSight
        ? Plan.Acknowledgement(
            known: observation.controllerPercent, current: state.rolloutPercent, alreadyRecorded: observation.changeAlreadyRecorded) : nil
    switch verdict.action {
    case .hold:
        let bookkeeping = Plan.Bookkeeping(
            streaks: verdict.streaks.filter { $0.value > 0 }, healthy: verdict.healthy, lastGood: verdict.newLastGood,
            releaseGuard: verdict.releaseGuard ? observation.guardLock?.value : nil)
        return Plan(verdict: verdict, acknowledgement: acknowledgement, writes: .bookkeeping(bookkeeping), time: now)
    case .promote(let target):
        // A promotion happens with no guard, or with the controller's own being released.
        let change = Plan.Change(
            direction: .promote, from: state.rolloutPercent, to: target, reason: verdict.explanation,
            guardWrite: observation.guardLock == nil ? .none : .release, lastGood: verdict.newLastGood, time: now)
        return Plan(verdict: verdict, acknowledgement: acknowledgement, writes: .change(change), time: now)
    case .rollback(let target):
        var change = Plan.Change(
            direction: .rollback, from: state.rolloutPercent, to: target, reason: verdict.explanation, guardWrite: .none,
            lastGood: verdict.newLastGood, time: now)
        // 9. The rollback's guard, unless one lasting longer is there (an operator's, or one with no expiry).
        if policy.guardWindow > .zero {
            let longer = observation.guardLock.map { $0.remaining.map { $0 >= policy.guardWindow } ?? true } ?? false
            change.guardWrite =
                longer
                ? .keep
                : .set(
                    value: GuardLock.value(origin: .rollback, time: now, reason: "after \(change.change): \(verdict.explanation)"),
                    window: policy.guardWindow)
            change.reason += "; guard locked for \(formatDuration(policy.guardWindow))"
        }
        // last_good is never above where a rollback lands.
        if let good = verdict.newLastGood ?? observation.lastGood, good > target { change.lastGood = target }
        // Flap protection: this rollback and those it keeps in `rollbacks` (the last hour's) reach the limit.
        let forgetBefore = change.rollbackRecord?.forgetBefore.unixMilliseconds ?? .min
        let recent = observation.rollbacks.filter { $0.unixMilliseconds >= forgetBefore }.count + 1
        if policy.maxRollbacksPerHour > 0, recent >= policy.maxRollbacksPerHour {
            change.flapPause =
                "flap protection: \(policy.maxRollbacksPerHour) rollbacks within an hour (the last \(change.change)); look before resuming"
        }
        return Plan(verdict: verdict, acknowledgement: acknowledgement, writes: .change(change), time: now)
    }
}

extension Timestamp {
    /// Whole milliseconds since 1970, as `flags:<f>:rollbacks` scores them.
    var unixMilliseconds: Int64 { microsecondsSinceEpoch / 1000 }
}
