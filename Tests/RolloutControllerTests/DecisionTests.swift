import RolloutController
import RolloutGate
import Testing

private func percent(_ text: String) -> RolloutPercent { RolloutPercent(parsing: text) ?? .zero }
private let t0 = Timestamp(parsing: "2025-10-08T15:00:00Z") ?? Timestamp(microsecondsSinceEpoch: 0)

/// The sample policy: steps 10/50/100, dwell 15m, cooldown 1h, rollback_to 10, min 100 requests,
/// error_rate max 0.01 and latency_p95 max 0.5 (both rollback).
private func policy() throws -> FeaturePolicy {
    try #require(try ControllerPolicy(yaml: sampleYAML).features.first)
}

private func observation(
    percent current: String = "10", lastPercent: String? = "0", changedMinutesAgo: Int64? = 60, paused: Bool = false, enabled: Bool = true,
    controller: String? = nil, errorRate: Double? = 0.001, latency: Double? = 0.2, requests: Double?? = .some(500)
) -> Observation {
    var state = FeatureState.absent("google")
    state.rolloutPercent = percent(current)
    state.lastPercent = lastPercent.map(percent)
    state.lastChangeTime = changedMinutesAgo.map { t0.advanced(by: .seconds(-$0 * 60)) }
    state.paused = paused
    state.enabled = enabled
    return Observation(
        state: state, controllerPercent: (controller ?? current).isEmpty ? nil : percent(controller ?? current),
        checkValues: ["error_rate": errorRate, "latency_p95": latency], requests: requests)
}

@Suite("The decision table, as a pure function")
struct DecisionTests {
    @Test func healthyAfterTheDwellPromotesToTheNextStep() throws {
        let verdict = decide(policy: try policy(), observation: observation(), now: t0)
        #expect(verdict.action == .promote(to: percent("50")))
        #expect(verdict.holdReason == nil)
        #expect(verdict.checks.map(\.status) == [.ok, .ok])
    }

    @Test func startsFromZero() throws {
        let verdict = decide(policy: try policy(), observation: observation(percent: "0", lastPercent: nil, changedMinutesAgo: nil), now: t0)
        #expect(verdict.action == .promote(to: percent("10")))
    }

    @Test func pausedHoldsEvenWithAViolation() throws {
        let verdict = decide(policy: try policy(), observation: observation(paused: true, errorRate: 0.5), now: t0)
        #expect(verdict.action == .hold && verdict.holdReason == .paused)
    }

    @Test func killSwitchHolds() throws {
        let verdict = decide(policy: try policy(), observation: observation(enabled: false), now: t0)
        #expect(verdict.holdReason == .disabled)
    }

    @Test(arguments: [(true, true), (false, false), (true, false)])
    func aPersonsSwitchWritesNothingAndAsksNoQuery(paused: Bool, enabled: Bool) throws {
        // Even a person's percent change is left unrecorded until the switch is off.
        let seen = observation(paused: paused, enabled: enabled, controller: "50", errorRate: nil, latency: nil, requests: .none)
        #expect(!seen.needsQueries)
        let plan = decide(policy: try policy(), observation: seen, now: t0)
        #expect(plan.writes == .none && plan.acknowledgement == nil)
        #expect(plan.holdReason == (paused ? .paused : .disabled))
        #expect(observation().needsQueries)
    }

    @Test func watchModeHoldsAPromotionButRecordsItsBookkeeping() throws {
        let plan = decide(policy: try policy(), observation: observation(), now: t0, promotions: false)
        #expect(plan.action == .hold && plan.holdReason == .watching)
        #expect(plan.explanation == "healthy; watch mode applies rollback checks only, promotions are the controller's")
        #expect(plan.writes == .bookkeeping(.init(streaks: [:], healthy: true, lastGood: nil, releaseGuard: nil)))
        let rollback = decide(policy: try policy(), observation: observation(percent: "50", errorRate: 0.05), now: t0, promotions: false)
        #expect(rollback.action == .rollback(to: percent("10")))
        guard case .change(let change) = rollback.writes else {
            Issue.record("watch mode did not roll back: \(rollback.writes)")
            return
        }
        #expect(change.direction == .rollback && change.from == percent("50") && change.to == percent("10") && change.time == t0)
    }

    @Test func aPromotionWritesTheNextStepAtTheDecisionTime() throws {
        let plan = decide(policy: try policy(), observation: observation(), now: t0)
        guard case .change(let change) = plan.writes else {
            Issue.record("no change: \(plan.writes)")
            return
        }
        #expect(change.direction == .promote && change.change == "10% -> 50%" && change.time == t0 && plan.time == t0)
        #expect(change.reason == plan.explanation)
        #expect(change.guardWrite == .none && change.lastGood == nil && change.flapPause == nil && change.rollbackRecord == nil)
        #expect(plan.acknowledgement == nil)
    }

    @Test func aChangeAlreadyRecordedIsAcknowledgedWithoutASecondRecord() throws {
        var seen = observation(percent: "25", controller: "10")
        seen.changeAlreadyRecorded = true
        let plan = decide(policy: try policy(), observation: seen, now: t0)
        #expect(plan.acknowledgement == Plan.Acknowledgement(known: percent("10"), current: percent("25"), alreadyRecorded: true))
        #expect(plan.holdReason == .dwell)
        // First sight is never "already recorded": adopting is the controller's own record.
        var first = observation(percent: "50", controller: "")
        first.changeAlreadyRecorded = true
        #expect(decide(policy: try policy(), observation: first, now: t0).acknowledgement?.alreadyRecorded == false)
    }

    @Test func aPersonsChangeAndFirstSightAreAcknowledgedOnce() throws {
        let manual = decide(policy: try policy(), observation: observation(percent: "25", controller: "10"), now: t0)
        #expect(manual.acknowledgement == Plan.Acknowledgement(known: percent("10"), current: percent("25")))
        #expect(manual.acknowledgement?.change == "10% -> 25%" && manual.acknowledgement?.by == "manual-detected")
        #expect(manual.holdReason == .dwell)
        let first = decide(policy: try policy(), observation: observation(percent: "50", controller: ""), now: t0)
        #expect(first.acknowledgement == Plan.Acknowledgement(known: nil, current: percent("50")))
        #expect(first.acknowledgement?.change == "adopted at 50%" && first.acknowledgement?.by == "controller")
        #expect(first.holdReason == .adopted)
        // A rollback at first sight: acknowledged, then rolled back.
        let burning = decide(policy: try policy(), observation: observation(percent: "50", controller: "", errorRate: 0.05), now: t0)
        #expect(burning.acknowledgement != nil)
        #expect(burning.action == .rollback(to: percent("10")))
        #expect(decide(policy: try policy(), observation: observation(), now: t0).acknowledgement == nil)
    }

    @Test func rollbackDoesNotWaitForDwell() throws {
        let verdict = decide(policy: try policy(), observation: observation(percent: "50", lastPercent: "10", changedMinutesAgo: 1, errorRate: 0.05), now: t0)
        #expect(verdict.action == .rollback(to: percent("10")))
    }

    @Test func rollbackDoesNotWaitForCooldown() throws {
        // Just rolled back from 100 to 50 (a rollback), and it burns again.
        let verdict = decide(policy: try policy(), observation: observation(percent: "50", lastPercent: "100", changedMinutesAgo: 2, latency: 0.9), now: t0)
        #expect(verdict.action == .rollback(to: percent("10")))
    }

    @Test func violationAtTheRollbackTargetHolds() throws {
        let verdict = decide(policy: try policy(), observation: observation(percent: "10", errorRate: 0.05), now: t0)
        #expect(verdict.action == .hold && verdict.holdReason == .atRollbackTarget)
    }

    @Test func noDataIsNeverHealthy() throws {
        for values in [(nil, 0.2), (0.001, nil), (nil, nil)] as [(Double?, Double?)] {
            let verdict = decide(policy: try policy(), observation: observation(errorRate: values.0, latency: values.1), now: t0)
            #expect(verdict.action == .hold && verdict.holdReason == .noData)
        }
    }

    @Test func noDataOnOneCheckDoesNotHideAViolationOnAnother() throws {
        let verdict = decide(policy: try policy(), observation: observation(percent: "50", errorRate: nil, latency: 2), now: t0)
        #expect(verdict.action == .rollback(to: percent("10")))
    }

    @Test func tooLittleTrafficHolds() throws {
        let few = decide(policy: try policy(), observation: observation(requests: .some(99)), now: t0)
        #expect(few.holdReason == .insufficientSample)
        let none = decide(policy: try policy(), observation: observation(requests: .some(nil)), now: t0)
        #expect(none.holdReason == .insufficientSample)
        let exactly = decide(policy: try policy(), observation: observation(requests: .some(100)), now: t0)
        #expect(exactly.action == .promote(to: percent("50")))
    }

    @Test func dwellHoldsUntilItHasPassed() throws {
        let early = decide(policy: try policy(), observation: observation(changedMinutesAgo: 14), now: t0)
        #expect(early.holdReason == .dwell)
        #expect(early.explanation.contains("14m of 15m"))
        let onTime = decide(policy: try policy(), observation: observation(changedMinutesAgo: 15), now: t0)
        #expect(onTime.action == .promote(to: percent("50")))
    }

    @Test func cooldownAfterARollbackHoldsPromotion() throws {
        let cooling = decide(policy: try policy(), observation: observation(percent: "10", lastPercent: "50", changedMinutesAgo: 30), now: t0)
        #expect(cooling.holdReason == .cooldown)
        let cooled = decide(policy: try policy(), observation: observation(percent: "10", lastPercent: "50", changedMinutesAgo: 61), now: t0)
        #expect(cooled.action == .promote(to: percent("50")))
    }

    @Test func lastStepHolds() throws {
        let verdict = decide(policy: try policy(), observation: observation(percent: "100", lastPercent: "50"), now: t0)
        #expect(verdict.holdReason == .atLastStep)
    }

    @Test func holdCheckBlocksPromotionOnly() throws {
        var policy = try policy()
        policy.checks[1].onViolation = .hold
        let verdict = decide(policy: policy, observation: observation(latency: 0.9), now: t0)
        #expect(verdict.holdReason == .checkViolated)
    }

    @Test func alertCheckIsReportedOnly() throws {
        var policy = try policy()
        policy.checks[1].onViolation = .alert
        let verdict = decide(policy: policy, observation: observation(latency: 0.9), now: t0)
        #expect(verdict.action == .promote(to: percent("50")))
        #expect(verdict.alerts == ["latency_p95"])
    }

    @Test func minBoundIsAViolationBelowIt() throws {
        var policy = try policy()
        policy.checks[0].max = nil
        policy.checks[0].min = 0.99  // e.g. a success ratio
        #expect(decide(policy: policy, observation: observation(percent: "50", errorRate: 0.98), now: t0).action == .rollback(to: percent("10")))
        #expect(decide(policy: policy, observation: observation(percent: "50", errorRate: 0.995), now: t0).action == .promote(to: percent("100")))
    }

    @Test func manualChangeRestartsTheDwell() throws {
        let verdict = decide(policy: try policy(), observation: observation(percent: "25", controller: "10"), now: t0)
        #expect(verdict.manualChangeDetected)
        #expect(verdict.holdReason == .dwell)
        // Off-step percents promote to the next step up.
        let later = decide(policy: try policy(), observation: observation(percent: "25", controller: "25"), now: t0)
        #expect(later.action == .promote(to: percent("50")))
    }

    /// A negative ratio, latency or count is a broken query or exporter: it holds with
    /// invalid_data, is never healthy, and a rollback check does not roll back on it.
    @Test(arguments: [-0.5, -1e-9, -Double.leastNonzeroMagnitude])
    func aNegativeValueIsInvalidDataNotHealth(value: Double) throws {
        let low = decide(policy: try policy(), observation: observation(percent: "50", errorRate: value), now: t0)
        #expect(low.action == .hold && low.holdReason == .invalidData)
        #expect(low.checks.map(\.status) == [.invalidData, .ok])
        #expect(!low.healthy)
        #expect(low.explanation.contains("error_rate=\(format(value))"))
        // Below a `min:` bound it would be a violation: it is invalid all the same, not a rollback.
        var floor = try policy()
        floor.checks[1].max = nil
        floor.checks[1].min = 0.01
        let below = decide(policy: floor, observation: observation(percent: "50", latency: value), now: t0)
        #expect(below.holdReason == .invalidData)
        #expect(below.checks[1].status == .invalidData)
    }

    @Test func negativeZeroIsZeroAndValid() throws {
        // IEEE 754: -0.0 == 0. A rate of nothing, negated, is no error, not a broken query.
        let verdict = decide(policy: try policy(), observation: observation(errorRate: -0.0), now: t0)
        #expect(verdict.action == .promote(to: percent("50")))
        #expect(verdict.healthy)
        #expect(format(-0.0) == "0")
    }

    @Test func aNegativeValueDoesNotHideAnotherChecksViolation() throws {
        let verdict = decide(policy: try policy(), observation: observation(percent: "50", errorRate: -0.5, latency: 2), now: t0)
        #expect(verdict.action == .rollback(to: percent("10")))
        #expect(verdict.checks.map(\.status) == [.invalidData, .violated])
    }

    @Test func aNegativeValueKeepsTheStreak() throws {
        var seen = observation(percent: "50", errorRate: -0.5)
        seen.streaks = ["error_rate": 2]
        #expect(decide(policy: try policy(), observation: seen, now: t0).streaks["error_rate"] == 2)
    }

    @Test(arguments: [-1.0, -1e-9])
    func aNegativeRequestCountIsInvalidData(requests: Double) throws {
        let verdict = decide(policy: try policy(), observation: observation(requests: .some(requests)), now: t0)
        #expect(verdict.action == .hold && verdict.holdReason == .invalidData)
        #expect(verdict.explanation.contains("min_requests=\(format(requests))"))
        #expect(!verdict.healthy)
        // It blocks no rollback: traffic is not what a rollback needs.
        let burning = decide(policy: try policy(), observation: observation(percent: "50", errorRate: 0.2, requests: .some(requests)), now: t0)
        #expect(burning.action == .rollback(to: percent("10")))
        // Zero requests are a count, too small: insufficient_sample as before.
        #expect(decide(policy: try policy(), observation: observation(requests: .some(-0.0)), now: t0).holdReason == .insufficientSample)
    }

    @Test func manualChangeNeverBlocksARollback() throws {
        let verdict = decide(policy: try policy(), observation: observation(percent: "100", controller: "50", errorRate: 0.2), now: t0)
        #expect(verdict.action == .rollback(to: percent("10")))
        #expect(verdict.manualChangeDetected)
    }
}
