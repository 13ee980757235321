import RolloutAdmin
import RolloutController
import RolloutGate
import Testing

private func percent(_ text: String) -> RolloutPercent { RolloutPercent(parsing: text) ?? .zero }
private let now = Timestamp(parsing: "2026-11-25T12:00:00Z") ?? Timestamp(microsecondsSinceEpoch: 0)
private let alert = ForcedRollback(requestedBy: "alert ErrorBudgetBurn (fingerprint 4f2a9c01d3b2e6f7)")

/// checkout: steps 10/50/100, guard window 15m (the default), flap protection at 3 an hour.
private func policy(rollbackTo: String = "previous_step", extra: String = "") throws -> FeaturePolicy {
    let yaml = """
        prometheus: http://p:9090
        features:
          checkout:
            steps: [10, 50, 100]
            rollback_to: \(rollbackTo)
        \(extra.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))
            checks:
              - {name: latency, query: max(latency), max: 0.5}
        """
    return try #require(try ControllerPolicy(yaml: yaml).features.first)
}

/// Healthy checks (a forced rollback does not look at them), changed an hour ago.
private func observation(at current: String = "50", paused: Bool = false, enabled: Bool = true, latency: Double? = 0.1) -> Observation {
    var state = FeatureState.absent("checkout")
    state.rolloutPercent = percent(current)
    state.lastPercent = percent("10")
    state.lastChangeTime = now.advanced(by: .seconds(-3600))
    state.paused = paused
    state.enabled = enabled
    return Observation(state: state, controllerPercent: state.rolloutPercent, checkValues: ["latency": latency])
}

private func change(_ plan: Plan) throws -> Plan.Change {
    guard case .change(let change) = plan.writes else {
        Issue.record("expected a change, the plan writes \(plan.writes)")
        throw NoChange()
    }
    return change
}

private struct NoChange: Error {}

@Suite("A forced rollback (an alert's rollout_action=rollback), as a pure function")
struct ForcedRollbackTests {
    @Test func rollsBackToTheTargetWhileEveryCheckIsHealthy() throws {
        let plan = decide(policy: try policy(), observation: observation(), now: now, promotions: false, forcedRollback: alert)
        #expect(plan.action == .rollback(to: percent("10")))
        #expect(plan.checks.isEmpty)  // not judged: no query is awaited
        let rollback = try change(plan)
        #expect(rollback.direction == .rollback && rollback.from == percent("50") && rollback.to == percent("10"))
        #expect(rollback.reason.hasPrefix("rollback forced by alert ErrorBudgetBurn (fingerprint 4f2a9c01d3b2e6f7); 50% -> 10%"))
        #expect(rollback.rollbackRecord?.at == now)
    }

    @Test func theVerdictWithoutTheForceWouldHold() throws {
        // The same observation, not forced, in watch mode: healthy, nothing to roll back.
        let plan = decide(policy: try policy(), observation: observation(), now: now, promotions: false)
        #expect(plan.action == .hold && plan.holdReason == .watching)
    }

    @Test(arguments: [("previous_step", "100", "50"), ("zero", "50", "0"), ("10", "100", "10"), ("10", "50", "10")])
    func theTargetIsThePolicysRollbackTarget(rollbackTo: String, from: String, to: String) throws {
        let plan = decide(policy: try policy(rollbackTo: rollbackTo), observation: observation(at: from), now: now, forcedRollback: alert)
        #expect(plan.action == .rollback(to: percent(to)), "rollback_to \(rollbackTo) from \(from)%")
    }

    @Test(arguments: ["10", "0"])
    func atOrBelowTheTargetThereIsNothingToDo(current: String) throws {
        let plan = decide(policy: try policy(rollbackTo: "10"), observation: observation(at: current), now: now, forcedRollback: alert)
        #expect(plan.action == .hold && plan.holdReason == .atRollbackTarget)
        #expect(plan.explanation.contains("nothing to do"))
        guard case .bookkeeping(let books) = plan.writes else {
            Issue.record("a hold keeps its books: \(plan.writes)")
            return
        }
        #expect(!books.healthy)  // an alert fires: not healthy, whatever the checks said
    }

    @Test(arguments: [(true, true), (false, false)])
    func aPersonsSwitchWinsAndWritesNothing(paused: Bool, enabled: Bool) throws {
        let seen = observation(paused: paused, enabled: enabled)
        let plan = decide(policy: try policy(), observation: seen, now: now, forcedRollback: alert)
        #expect(plan.action == .hold && plan.holdReason == (paused ? .paused : .disabled))
        #expect(plan.writes == .none && plan.acknowledgement == nil)
        #expect(plan.explanation.contains("nothing to do"))
    }

    @Test func theGuardWindowLocksPromotionsAfterIt() throws {
        let plan = decide(policy: try policy(), observation: observation(), now: now, forcedRollback: alert)
        let rollback = try change(plan)
        guard case .set(let value, let window) = rollback.guardWrite else {
            Issue.record("a forced rollback sets the guard: \(rollback.guardWrite)")
            return
        }
        #expect(window == .seconds(900) && value.hasPrefix("rollback "))
        #expect(rollback.reason.hasSuffix("; guard locked for 15m"))
        // No guard window: none.
        #expect(try change(decide(policy: try policy(extra: "guard_window: 0s"), observation: observation(), now: now, forcedRollback: alert)).guardWrite == .none)
    }

    @Test func flapProtectionCountsAForcedRollback() throws {
        var seen = observation(at: "100")
        seen.rollbacks = [now.advanced(by: .seconds(-600)), now.advanced(by: .seconds(-300))]
        let rollback = try change(decide(policy: try policy(), observation: seen, now: now, forcedRollback: alert))
        #expect(rollback.flapPause == "flap protection: 3 rollbacks within an hour (the last 100% -> 50%); look before resuming")
        seen.rollbacks = [now.advanced(by: .seconds(-600))]
        #expect(try change(decide(policy: try policy(), observation: seen, now: now, forcedRollback: alert)).flapPause == nil)
    }

    @Test func aFreezeWindowDoesNotStopIt() throws {
        let policy = try policy(extra: "freeze:\n  - {from: \"00:00\", to: \"23:59\", time_zone: UTC}")
        let plan = decide(policy: policy, observation: observation(), now: now, forcedRollback: alert)
        #expect(plan.action == .rollback(to: percent("10")))
    }
}
