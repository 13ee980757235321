import RolloutAdmin
import RolloutController
import RolloutGate
import Testing

private func percent(_ text: String) -> RolloutPercent { RolloutPercent(parsing: text) ?? .zero }
private let now = Timestamp(parsing: "2026-11-25T12:00:00Z") ?? Timestamp(microsecondsSinceEpoch: 0)  // a Wednesday

/// checkout: steps 10/50/100, dwell 15m, cooldown 1h; latency (threshold, max 0.5, rollback,
/// consecutive from the argument) and errors (burn rate, SLO 99%: budget 1%, workbook pairs).
private func policy(consecutive: Int = 1, extra: String = "") throws -> FeaturePolicy {
    let yaml = """
        prometheus: http://p:9090
        features:
          checkout:
            steps: [10, 50, 100]
            dwell: 15m
            stability_window: 10m
        \(extra.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))
            checks:
              - {name: latency, query: max(latency), max: 0.5, consecutive: \(consecutive)}
              - {name: errors, type: burn_rate, query: 'ratio[$window]', slo: 0.99}
        """
    return try #require(try ControllerPolicy(yaml: yaml).features.first)
}

/// Error ratios per window: 5m, 30m, 1h, 6h.
private func observation(
    at current: String = "10", changedMinutesAgo: Int64 = 60, lastPercent: String = "0", latency: Double? = 0.1,
    ratios: (Double?, Double?, Double?, Double?) = (0.001, 0.001, 0.001, 0.001)
) -> Observation {
    var state = FeatureState.absent("checkout")
    state.rolloutPercent = percent(current)
    state.lastPercent = percent(lastPercent)
    state.lastChangeTime = now.advanced(by: .seconds(-changedMinutesAgo * 60))
    var observation = Observation(state: state, controllerPercent: state.rolloutPercent, checkValues: ["latency": latency])
    observation.windowValues["errors"] = [.seconds(300): ratios.0, .seconds(1800): ratios.1, .seconds(3600): ratios.2, .seconds(21_600): ratios.3]
    return observation
}

@Suite("Safety rules in the decision table")
struct SafetyDecisionTests {
    @Test func healthyBurnRatesPromote() throws {
        let verdict = decide(policy: try policy(), observation: observation(), now: now)
        #expect(verdict.action == .promote(to: percent("50")))
        #expect(verdict.checks.map(\.name) == ["latency", "errors[1h/5m]", "errors[6h/30m]"])
        #expect(verdict.checks.map(\.status) == [.ok, .ok, .ok])
        #expect(verdict.healthy)
    }

    @Test func fastBurnOverBothWindowsRollsBack() throws {
        // 20% errors against a 1% budget: 20x over 5m and 1h.
        let verdict = decide(policy: try policy(), observation: observation(at: "50", ratios: (0.2, 0.01, 0.2, 0.01)), now: now)
        #expect(verdict.action == .rollback(to: percent("10")))
        #expect(verdict.checks[1].status == .violated && abs((verdict.checks[1].value ?? 0) - 20) < 1e-9)
        #expect(verdict.alerts == ["errors[1h/5m]"])
    }

    @Test func aBurnOverOneWindowOfAPairIsNotAViolation() throws {
        // The 5m window burns at 20x but the hour is calm: a blip, not a burn.
        let blip = decide(policy: try policy(), observation: observation(at: "50", ratios: (0.2, 0.001, 0.001, 0.001)), now: now)
        #expect(blip.action == .promote(to: percent("100")))
        // The hour still shows an old incident, but the last 5 minutes are calm: it is over.
        let over = decide(policy: try policy(), observation: observation(at: "50", ratios: (0.001, 0.001, 0.2, 0.001)), now: now)
        #expect(over.action == .promote(to: percent("100")))
    }

    @Test func slowBurnHoldsAndAlerts() throws {
        // 8% errors: 8x over 30m and 6h (slow pair, factor 6), under 14.4x: hold and alert.
        let verdict = decide(policy: try policy(), observation: observation(at: "50", ratios: (0.08, 0.08, 0.08, 0.08)), now: now)
        #expect(verdict.action == .hold && verdict.holdReason == .checkViolated)
        #expect(verdict.alerts == ["errors[6h/30m]"])
    }

    @Test func aMissingWindowIsNoData() throws {
        let verdict = decide(policy: try policy(), observation: observation(ratios: (0.001, nil, 0.001, 0.001)), now: now)
        #expect(verdict.holdReason == .noData)
        #expect(verdict.checks[2].status == .noData)
    }

    @Test func aNegativeWindowRatioIsInvalidDataForItsPairs() throws {
        // The 5m window is negative: the fast pair is invalid, the slow pair (6h/30m) is fine.
        let verdict = decide(policy: try policy(), observation: observation(at: "50", ratios: (-0.5, 0.001, 0.2, 0.001)), now: now)
        #expect(verdict.action == .hold && verdict.holdReason == .invalidData)
        #expect(verdict.checks.map(\.status) == [.ok, .invalidData, .ok])
        #expect(verdict.checks[1].value.map { $0 < 0 } == true)
        #expect(verdict.alerts.isEmpty && !verdict.healthy)
        // Invalid even when the other window of the pair has no data; -1e-9 too.
        let tiny = decide(policy: try policy(), observation: observation(ratios: (0.001, -1e-9, 0.001, nil)), now: now)
        #expect(tiny.holdReason == .invalidData)
        #expect(tiny.checks[2].status == .invalidData)
        // A negative long window of a burning pair does not roll back.
        let long = decide(policy: try policy(), observation: observation(at: "50", ratios: (0.2, 0.001, -0.2, 0.001)), now: now)
        #expect(long.holdReason == .invalidData)
    }

    @Test func consecutiveViolationsActOnlyAtTheNthRun() throws {
        let feature = try policy(consecutive: 3)
        var seen = observation(at: "50", latency: 0.9)
        // Runs 1 and 2: pending, promotion held, no rollback.
        for run in 1...2 {
            let verdict = decide(policy: feature, observation: seen, now: now)
            #expect(verdict.action == .hold && verdict.holdReason == .violationPending, "run \(run)")
            #expect(verdict.streaks["latency"] == run)
            seen.streaks = verdict.streaks
        }
        // Run 3: it acts.
        let third = decide(policy: feature, observation: seen, now: now)
        #expect(third.action == .rollback(to: percent("10")))
        // A healthy run resets the count; a run without data keeps it.
        var reset = seen
        reset.checkValues["latency"] = 0.1
        #expect(decide(policy: feature, observation: reset, now: now).streaks["latency"] == 0)
        var missing = seen
        missing.checkValues["latency"] = .some(nil)
        #expect(decide(policy: feature, observation: missing, now: now).streaks["latency"] == 2)
    }

    @Test func aGuardLockHoldsPromotionButNeverARollback() throws {
        var locked = observation()
        locked.guardLock = GuardLock(value: GuardLock.value(origin: .operator, time: now, reason: "deploy"), remaining: .seconds(600))
        let hold = decide(policy: try policy(), observation: locked, now: now)
        #expect(hold.holdReason == .guardLocked)
        #expect(!hold.releaseGuard)
        locked.state.rolloutPercent = percent("50")
        locked.checkValues["latency"] = 0.9
        #expect(decide(policy: try policy(), observation: locked, now: now).action == .rollback(to: percent("10")))
    }

    @Test func theControllersGuardIsReleasedAfterTheStabilityWindow() throws {
        var seen = observation()
        seen.guardLock = GuardLock(value: GuardLock.value(origin: .rollback, time: now, reason: "after 50% -> 10%"), remaining: .seconds(600))
        seen.healthySince = now.advanced(by: .seconds(-9 * 60))
        let early = decide(policy: try policy(), observation: seen, now: now)
        #expect(early.holdReason == .guardLocked && !early.releaseGuard)
        seen.healthySince = now.advanced(by: .seconds(-10 * 60))
        let stable = decide(policy: try policy(), observation: seen, now: now)
        #expect(stable.releaseGuard)
        #expect(stable.action == .promote(to: percent("50")))
        // An operator's lock is never released by the controller.
        seen.guardLock = GuardLock(value: GuardLock.value(origin: .operator, time: now, reason: "deploy"), remaining: nil)
        #expect(!decide(policy: try policy(), observation: seen, now: now).releaseGuard)
        // Nor while a check has no data or is pending.
        seen.guardLock = GuardLock(value: GuardLock.value(origin: .rollback, time: now, reason: "x"), remaining: nil)
        seen.checkValues["latency"] = .some(nil)
        #expect(!decide(policy: try policy(), observation: seen, now: now).releaseGuard)
    }

    @Test func aFreezeWindowHoldsPromotionButNeverARollback() throws {
        let frozen = try policy(extra: "freeze: [{from: 'Wed 09:00', to: 'Wed 17:00', time_zone: UTC}]")
        let hold = decide(policy: frozen, observation: observation(), now: now)
        #expect(hold.holdReason == .frozen)
        #expect(hold.freezeWindow?.description == "Wed 09:00 to Wed 17:00 (UTC)")
        let rollback = decide(policy: frozen, observation: observation(at: "50", latency: 0.9), now: now)
        #expect(rollback.action == .rollback(to: percent("10")))
        let outside = decide(policy: frozen, observation: observation(), now: now.advanced(by: .seconds(6 * 3600)))
        #expect(outside.action == .promote(to: percent("50")))
    }

    @Test func theLastGoodPercentIsRecordedAfterAHealthyDwell() throws {
        func healthyFor(_ minutes: Int64, changedMinutesAgo: Int64 = 16, latency: Double = 0.1) -> Observation {
            var seen = observation(at: "100", changedMinutesAgo: changedMinutesAgo, latency: latency)
            seen.healthySince = now.advanced(by: .seconds(-minutes * 60))
            return seen
        }
        let verdict = decide(policy: try policy(), observation: healthyFor(16), now: now)
        #expect(verdict.holdReason == .atLastStep)
        #expect(verdict.newLastGood == percent("100"))
        // Not before the dwell has passed, not when it is already recorded, not when unhealthy.
        #expect(decide(policy: try policy(), observation: healthyFor(1, changedMinutesAgo: 1), now: now).newLastGood == nil)
        var recorded = healthyFor(16)
        recorded.lastGood = percent("100")
        #expect(decide(policy: try policy(), observation: recorded, now: now).newLastGood == nil)
        #expect(decide(policy: try policy(consecutive: 2), observation: healthyFor(16, latency: 0.6), now: now).newLastGood == nil)
        // Healthy now, but a run 5 minutes ago was not (healthy_since restarted): not a full dwell.
        #expect(decide(policy: try policy(), observation: healthyFor(5), now: now).newLastGood == nil)
        var unknown = healthyFor(16)
        unknown.healthySince = nil
        #expect(decide(policy: try policy(), observation: unknown, now: now).newLastGood == nil)
    }

    @Test func rollbackToLastGood() throws {
        let feature = try policy(extra: "rollback_to: last_good")
        var seen = observation(at: "100", latency: 0.9)
        seen.lastGood = percent("50")
        #expect(decide(policy: feature, observation: seen, now: now).action == .rollback(to: percent("50")))
        seen.lastGood = nil
        #expect(decide(policy: feature, observation: seen, now: now).action == .rollback(to: .zero))
        seen.lastGood = percent("100")  // 100% was good, and fails now: the step below
        #expect(decide(policy: feature, observation: seen, now: now).action == .rollback(to: percent("50")))
    }

    /// last_good is the percent a healthy run saw; for a v1 feature a hand-written "37.5" makes
    /// it fractional, and the controller must not write that back (the original gate's int()
    /// cannot read it): the rollback goes to the whole percent below, never above last_good.
    @Test func aV1RollbackToLastGoodWritesAWholePercent() throws {
        let feature = try policy(extra: "rollback_to: last_good")
        var seen = observation(at: "100", latency: 0.9)
        seen.lastGood = percent("37.5")
        seen.state.bucketing = .v1
        #expect(decide(policy: feature, observation: seen, now: now).action == .rollback(to: percent("37")))
        seen.state.bucketing = .v2
        #expect(decide(policy: feature, observation: seen, now: now).action == .rollback(to: percent("37.5")))
    }

    @Test func aFlapPauseSaysWhy() throws {
        var seen = observation()
        seen.state.paused = true
        seen.pausedReason = "flap protection: 3 rollbacks within an hour"
        let verdict = decide(policy: try policy(), observation: seen, now: now)
        #expect(verdict.holdReason == .paused)
        #expect(verdict.explanation.contains("flap protection"))
    }

    /// The change a plan writes; fails the test when it writes none.
    private func change(_ plan: Plan) throws -> Plan.Change {
        guard case .change(let change) = plan.writes else {
            Issue.record("expected a change, the plan writes \(plan.writes)")
            throw PlanWritesNoChange()
        }
        return change
    }

    private struct PlanWritesNoChange: Error {}

    @Test(arguments: [(0, 2, false), (1, 1, false), (2, 0, true), (2, 5, true), (3, 0, true)])
    func theNthRollbackWithinAnHourPausesTheFeature(recent: Int, older: Int, pauses: Bool) throws {
        // max_rollbacks_per_hour 3 (the default): this rollback is the third of the last hour.
        var seen = observation(at: "50", latency: 0.9)
        seen.rollbacks =
            (0..<recent).map { now.advanced(by: .seconds(-60 * Int64($0 + 1))) }
            + (0..<older).map { now.advanced(by: .seconds(-3601 - 60 * Int64($0))) }
        let rollback = try change(decide(policy: try policy(), observation: seen, now: now))
        #expect(rollback.direction == .rollback)
        #expect(rollback.rollbackRecord?.at == now)
        #expect(rollback.rollbackRecord?.forgetBefore == now.advanced(by: .seconds(-3600)))
        #expect(
            rollback.flapPause == (pauses ? "flap protection: 3 rollbacks within an hour (the last 50% -> 10%); look before resuming" : nil),
            "\(recent) recent, \(older) older")
    }

    @Test func aRollbackExactlyAnHourAfterAnotherStillCountsIt() throws {
        var seen = observation(at: "50", latency: 0.9)
        seen.rollbacks = [now.advanced(by: .seconds(-3600)), now.advanced(by: .seconds(-10))]
        #expect(try change(decide(policy: try policy(), observation: seen, now: now)).flapPause != nil)
        seen.rollbacks[0] = now.advanced(by: .milliseconds(-3_600_001))
        #expect(try change(decide(policy: try policy(), observation: seen, now: now)).flapPause == nil)
    }

    @Test func flapProtectionOffNeverPauses() throws {
        var seen = observation(at: "50", latency: 0.9)
        seen.rollbacks = Array(repeating: now, count: 10)
        #expect(try change(decide(policy: try policy(extra: "max_rollbacks_per_hour: 0"), observation: seen, now: now)).flapPause == nil)
        #expect(try change(decide(policy: try policy(extra: "max_rollbacks_per_hour: 1"), observation: observation(at: "50", latency: 0.9), now: now)).flapPause != nil)
    }

    @Test(arguments: [
        (Duration?.some(.seconds(60)), true, "a shorter guard is extended to the window"),
        (.some(.seconds(899)), true, "one just under the window too"),
        (.some(.seconds(900)), false, "one as long is kept"),
        (.some(.seconds(7200)), false, "a longer one is kept"),
        (nil, false, "one with no expiry is kept"),
    ])
    func aRollbackSetsItsGuardUnlessALongerOneIsThere(remaining: Duration?, sets: Bool, what: String) throws {
        var seen = observation(at: "50", latency: 0.9)
        seen.guardLock = GuardLock(value: GuardLock.value(origin: .operator, time: now, reason: "deploy"), remaining: remaining)
        let plan = decide(policy: try policy(), observation: seen, now: now)
        let rollback = try change(plan)
        let guardValue = "rollback 2026-11-25T12:00:00.000000+00:00 after 50% -> 10%: \(plan.explanation)"
        #expect(rollback.guardWrite == (sets ? .set(value: guardValue, window: .seconds(900)) : .keep), "\(what)")
        #expect(rollback.leavesGuard)
        #expect(rollback.reason.hasSuffix("; guard locked for 15m"))
    }

    @Test func aRollbackWithoutAGuardLocksOneAndNoWindowLocksNone() throws {
        let rollback = try change(decide(policy: try policy(), observation: observation(at: "50", latency: 0.9), now: now))
        guard case .set(let value, let window) = rollback.guardWrite else {
            Issue.record("no guard set: \(rollback.guardWrite)")
            return
        }
        #expect(value.hasPrefix("rollback 2026-11-25T12:00:00.000000+00:00 after 50% -> 10%: rollback: latency=0.9 violated"))
        #expect(window == .seconds(900))
        let unguarded = try change(decide(policy: try policy(extra: "guard_window: 0s"), observation: observation(at: "50", latency: 0.9), now: now))
        #expect(unguarded.guardWrite == .none && !unguarded.leavesGuard)
        #expect(!unguarded.reason.contains("guard"))
    }

    @Test func aPromotionReleasesTheGuardItRead() throws {
        var seen = observation()
        seen.guardLock = GuardLock(value: GuardLock.value(origin: .rollback, time: now, reason: "after 50% -> 10%"), remaining: .seconds(60))
        seen.healthySince = now.advanced(by: .seconds(-10 * 60))
        let promotion = try change(decide(policy: try policy(), observation: seen, now: now))
        #expect(promotion.direction == .promote && promotion.to == percent("50"))
        #expect(promotion.guardWrite == .release && !promotion.leavesGuard)
        #expect(promotion.rollbackRecord == nil && promotion.flapPause == nil)
        #expect(try change(decide(policy: try policy(), observation: observation(), now: now)).guardWrite == .none)
    }

    @Test(arguments: [("50", "10"), ("100", "10"), ("10", nil), ("5", nil), (nil, nil)] as [(String?, String?)])
    func aRollbackLowersLastGoodToItsTarget(lastGood: String?, recorded: String?) throws {
        var seen = observation(at: "50", latency: 0.9)
        seen.lastGood = lastGood.map(percent)
        #expect(try change(decide(policy: try policy(), observation: seen, now: now)).lastGood == recorded.map(percent))
    }

    @Test func aHoldRecordsItsBookkeeping() throws {
        var seen = observation(at: "100", changedMinutesAgo: 16)
        seen.healthySince = now.advanced(by: .seconds(-16 * 60))
        seen.guardLock = GuardLock(value: GuardLock.value(origin: .rollback, time: now, reason: "x"), remaining: .seconds(60))
        let plan = decide(policy: try policy(), observation: seen, now: now)
        #expect(plan.holdReason == .atLastStep)
        #expect(plan.writes == .bookkeeping(.init(streaks: [:], healthy: true, lastGood: percent("100"), releaseGuard: seen.guardLock?.value)))
        let pending = decide(policy: try policy(consecutive: 2), observation: observation(at: "50", latency: 0.9), now: now)
        #expect(pending.writes == .bookkeeping(.init(streaks: ["latency": 1], healthy: false, lastGood: nil, releaseGuard: nil)))
    }
}
