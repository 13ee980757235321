import Foundation
import RolloutAdmin
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

/// The safety rules of docs/controller.md, each driven by real metrics: the test's /metrics
/// endpoint, scraped by a real Prometheus, read by the `rollout` binary, against real Redis.
@Suite("Safety policies end to end", .tags(.e2e, .prometheus, .redis), .requiresPrometheus)
struct SafetyEndToEndTests {
    /// The error budget as a burn_rate check over demo_error_ratio (SLO 99%: a 1% budget).
    static let burnChecks = """
        - name: errors
          type: burn_rate
          query: max(max_over_time(demo_error_ratio{feature="{feature}"}[$window]))
          slo: 0.99
        """

    @Test func burnRateHoldsOnASlowBurnRollsBackOnAFastOneAndBudgetReportsIt() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("burn", "dwell: 0s\ncooldown_after_rollback: 0s\nguard_window: 0s")], checks: Self.burnChecks)
        try await world.known(["burn"])
        try await world.serve("burn", errorRatio: 0.001)
        for target in ["10", "50"] {
            let run = try await world.run()
            #expect(run.status == 0 && run.features["burn"]?["decision"] as? String == "promote", "\(run.output.stdout)")
            #expect(try await world.get("flags:burn:rollout_percent") == target)
        }
        // 8% errors: 8x the budget, above the slow pair's 6x, below the fast pair's 14.4x.
        try await world.serve("burn", errorRatio: 0.08)
        let slow = try await world.run()
        #expect(slow.features["burn"]?["reason"] as? String == "check_violated", "\(slow.output.stdout)")
        #expect(slow.features["burn"]?["alerts"] as? [String] == ["errors[6h/30m]"])
        #expect(try await world.get("flags:burn:rollout_percent") == "50")

        let budget = try await runCommand(world.binary, ["budget", "burn", "--config", world.configPath])
        #expect(budget.status == 0, "\(budget.stderr)")
        #expect(budget.stdout.contains("burn rate over 5m: 8x"), "\(budget.stdout)")
        #expect(budget.stdout.contains("pair 6h/30m above 6x -> violated"))
        #expect(budget.stdout.contains("pair 1h/5m above 14.4x -> ok"))
        #expect(budget.stdout.contains("budget left: -700%"))

        // 20%: 20x over both fast windows, roll back at once.
        try await world.serve("burn", errorRatio: 0.2)
        let fast = try await world.run()
        #expect(fast.features["burn"]?["decision"] as? String == "rollback", "\(fast.output.stdout)")
        #expect(try await world.get("flags:burn:rollout_percent") == "10")

        let missing = try await runCommand(world.binary, ["budget", "nope", "--config", world.configPath])
        #expect(missing.status == 2)
    }

    @Test func aRollbackLocksTheGuardWhichIsReleasedAfterTheStabilityWindow() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("guarded", "dwell: 0s\ncooldown_after_rollback: 0s\nguard_window: 10m\nstability_window: 2s")])
        try await world.known(["guarded"])
        try await world.serve("guarded", errorRatio: 0.001)
        _ = try await world.run()
        _ = try await world.run()
        #expect(try await world.get("flags:guarded:rollout_percent") == "50")
        try await world.serve("guarded", errorRatio: 0.5)
        let rollback = try await world.run()
        #expect(rollback.features["guarded"]?["guard_event"] as? String == "locked", "\(rollback.output.stdout)")
        let value = try #require(try await world.get("flags:guarded:guard"))
        #expect(value.hasPrefix("rollback "))
        let ttl = try await world.client.send("PTTL", "flags:guarded:guard").integer ?? 0
        #expect(ttl > 590_000 && ttl <= 600_000)
        let status = try await runCommand(world.binary, ["guard", "status", "guarded", "--redis-url", world.redis.urlString])
        #expect(status.status == 1 && status.stdout.contains("locked for"), "\(status.stdout)")

        // Healthy again: the first healthy run starts the stability window and holds.
        try await world.serve("guarded", errorRatio: 0.001)
        let first = try await world.run()
        #expect(first.features["guarded"]?["reason"] as? String == "guard_locked", "\(first.output.stdout)")
        let recorded = try await world.get("flags:guarded:healthy_since")
        let since = try #require(recorded.flatMap { Timestamp(parsing: $0) })
        // The stability window passes: the run compares healthy_since with its own time, so
        // dating the start of the window 3 s back is the 2 s wait without waiting.
        let earlier = Timestamp(microsecondsSinceEpoch: since.microsecondsSinceEpoch - 3_000_000)
        _ = try await world.client.send("SET", "flags:guarded:healthy_since", earlier.description)
        let released = try await world.run()
        #expect(released.features["guarded"]?["decision"] as? String == "promote", "\(released.output.stdout)")
        #expect(released.features["guarded"]?["guard_event"] as? String == "released")
        #expect(try await world.get("flags:guarded:guard") == nil)
        let log = world.auditLines().joined(separator: "\n")
        #expect(log.contains("guard locked for 10m"))
        #expect(log.contains("guard released"))
    }

    @Test func anOperatorsGuardLockHoldsPromotionUntilUnlocked() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("deploying", "dwell: 0s")])
        try await world.known(["deploying"])
        try await world.serve("deploying", errorRatio: 0.001)
        let redisURL = ["--redis-url", world.redis.urlString, "--audit-log", world.auditLogPath]
        let lock = try await runCommand(world.binary, ["guard", "lock", "deploying", "--window", "10m", "--reason", "deploy 1234"] + redisURL)
        #expect(lock.status == 0, "\(lock.stderr)")
        let held = try await world.run()
        #expect(held.features["deploying"]?["reason"] as? String == "guard_locked", "\(held.output.stdout)")
        #expect(try await world.get("flags:deploying:rollout_percent") == nil)
        // The controller never releases an operator's lock, however healthy.
        _ = try await world.run()
        #expect(try await world.get("flags:deploying:guard")?.hasPrefix("operator ") == true)
        let statusLocked = try await runCommand(world.binary, ["guard", "status", "deploying", "--json"] + redisURL)
        #expect(statusLocked.status == 1 && statusLocked.stdout.contains("\"origin\" : \"operator\""), "\(statusLocked.stdout)")

        let unlock = try await runCommand(world.binary, ["guard", "unlock", "deploying", "--reason", "deploy done"] + redisURL)
        #expect(unlock.status == 0)
        #expect(try await runCommand(world.binary, ["guard", "status", "deploying"] + redisURL).status == 0)
        let promoted = try await world.run()
        #expect(promoted.features["deploying"]?["decision"] as? String == "promote")
        let log = world.auditLines().joined(separator: "\n")
        #expect(log.contains("guard locked for 10m") && log.contains("deploy 1234"))
        #expect(log.contains("guard unlocked") && log.contains("deploy done"))

        let bad = try await runCommand(world.binary, ["guard", "lock", "deploying", "--window", "-5m"] + redisURL)
        #expect(bad.status == 2)
    }

    @Test func theSecondRollbackWithinAnHourPausesTheFeatureForAPerson() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy(
            [("flappy", "dwell: 0s\ncooldown_after_rollback: 0s\nguard_window: 0s\nmax_rollbacks_per_hour: 2")], rollbackTo: "previous_step")
        try await world.known(["flappy"])
        for round in 1...2 {
            try await world.serve("flappy", errorRatio: 0.001)
            while try await world.get("flags:flappy:rollout_percent") != "50" {
                let run = try await world.run()
                #expect(run.features["flappy"]?["decision"] as? String == "promote", "round \(round): \(run.output.stdout)")
            }
            try await world.serve("flappy", errorRatio: 0.5)
            let rollback = try await world.run()
            #expect(rollback.features["flappy"]?["decision"] as? String == "rollback", "round \(round)")
            #expect(rollback.features["flappy"]?["paused_by_flap_protection"] as? Bool == (round == 2))
            #expect(try await world.get("flags:flappy:rollout_percent") == "10")
        }
        #expect(try await world.get("flags:flappy:paused") == "true")
        #expect(try await world.get("flags:flappy:paused_reason")?.contains("flap protection") == true)
        #expect(try await world.client.send("ZCARD", "flags:flappy:rollbacks") == .integer(2))
        // `flags get` shows the sorted set whole: each rollback with its time in Unix ms.
        let get = try await runCommand(world.binary, ["flags", "get", "flappy", "--json", "--redis-url", world.redis.urlString])
        let keys = ((try? JSONSerialization.jsonObject(with: Data(get.stdout.utf8))) as? [String: Any])?["keys"] as? [String: Any]
        #expect((keys?["flags:flappy:rollbacks"] as? [String])?.count == 4, "\(get.stdout)")
        let paused = try await world.run()
        #expect(paused.features["flappy"]?["reason"] as? String == "paused")
        #expect((paused.features["flappy"]?["explanation"] as? String)?.contains("flap protection") == true)
        #expect(world.auditLines().contains { $0.contains("  paused  reason=flap protection") && $0.contains("by=controller") })

        let resume = try await runCommand(
            world.binary, ["flags", "resume", "flappy", "--reason", "looked", "--redis-url", world.redis.urlString, "--audit-log", world.auditLogPath])
        #expect(resume.status == 0)
        #expect(try await world.get("flags:flappy:paused_reason") == nil)
    }

    @Test func consecutiveViolationsActOnlyAtTheNthRun() async throws {
        let world = try await ControllerWorld.make()
        let checks = """
            - name: error_rate
              query: max(demo_error_ratio{feature="{feature}"})
              max: 0.01
              consecutive: 2
            """
        try world.writePolicy([("patient", "dwell: 0s")], checks: checks)
        try await world.known(["patient"])
        try await world.serve("patient", errorRatio: 0.001)
        _ = try await world.run()
        _ = try await world.run()
        #expect(try await world.get("flags:patient:rollout_percent") == "50")
        try await world.serve("patient", errorRatio: 0.5)
        let first = try await world.run()
        #expect(first.features["patient"]?["reason"] as? String == "violation_pending", "\(first.output.stdout)")
        #expect(try await world.client.send("HGET", "flags:patient:streaks", "error_rate").string == "1")
        let second = try await world.run()
        #expect(second.features["patient"]?["decision"] as? String == "rollback")
        #expect(try await world.get("flags:patient:rollout_percent") == "10")
        #expect(try await world.client.send("EXISTS", "flags:patient:streaks") == .integer(0))
    }

    @Test func lastGoodIsRecordedAndRolledBackTo() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("known", "dwell: 0s")], rollbackTo: "last_good")
        try await world.known(["known"])
        try await world.serve("known", errorRatio: 0.001)
        for _ in 0..<3 { _ = try await world.run() }
        #expect(try await world.get("flags:known:rollout_percent") == "100")
        #expect(try await world.get("flags:known:last_good") == "50")
        // Healthy at 100% through the dwell (0s): recorded while holding at the last step.
        let held = try await world.run()
        #expect(held.features["known"]?["reason"] as? String == "at_last_step")
        #expect(try await world.get("flags:known:last_good") == "100")
        // A manual step down and a failure: last_good is never above the current percent.
        _ = try await world.client.send("SET", "flags:known:rollout_percent", "50")
        _ = try await world.client.send("SET", "flags:known:controller_percent", "50")
        _ = try await world.client.send("SET", "flags:known:last_good", "10")
        try await world.serve("known", errorRatio: 0.5)
        let rollback = try await world.run()
        #expect(rollback.features["known"]?["to"] as? String == "10", "\(rollback.output.stdout)")
        #expect(try await world.get("flags:known:rollout_percent") == "10")
    }

    @Test func aFreezeWindowHoldsPromotionsButNotRollbacks() async throws {
        let world = try await ControllerWorld.make()
        // A daily window around now, in UTC.
        let hour = Calendar(identifier: .gregorian).dateComponents(in: TimeZone(identifier: "UTC") ?? .current, from: Date()).hour ?? 0
        let window = String(format: "{from: '%02d:00', to: '%02d:00', time_zone: UTC}", (hour + 23) % 24, (hour + 2) % 24)
        try world.writePolicy([("frozen", "dwell: 0s\nfreeze: [\(window)]")])
        try await world.known(["frozen"])
        try await world.serve("frozen", errorRatio: 0.001)
        let held = try await world.run()
        #expect(held.features["frozen"]?["reason"] as? String == "frozen", "\(held.output.stdout)")
        #expect(try await world.get("flags:frozen:rollout_percent") == nil)
        _ = try await world.client.send("SET", "flags:frozen:rollout_percent", "50")
        _ = try await world.client.send("SET", "flags:frozen:controller_percent", "50")
        try await world.serve("frozen", errorRatio: 0.5)
        let rollback = try await world.run()
        #expect(rollback.features["frozen"]?["decision"] as? String == "rollback")
        #expect(try await world.get("flags:frozen:rollout_percent") == "10")
    }

    @Test func environmentsPickTheirOverridesWithEnv() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("staged", "dwell: 0s\nenvironments:\n  staging:\n    steps: [25, 100]")])
        try await world.known(["staged"])
        try await world.serve("staged", errorRatio: 0.001)
        let staging = try await world.run("--env", "staging")
        #expect(staging.features["staged"]?["to"] as? String == "25", "\(staging.output.stdout) \(staging.output.stderr)")
        let viaEnvironment = try await world.run(environment: ["ROLLOUT_ENV": "staging"])
        #expect(viaEnvironment.features["staged"]?["to"] as? String == "100")
        let unknown = try await world.run("--env", "prod")
        #expect(unknown.status == 2)
        #expect(unknown.output.stderr.contains("\"prod\" is not an environment"))
    }

    @Test func watchExitsZeroWhenCleanOneWhenItRollsBackAndStopsOnCtrlC() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("watched", "dwell: 0s")])
        _ = try await world.client.send("SET", "flags:watched:rollout_percent", "50")
        try await world.known(["watched"])
        try await world.serve("watched", errorRatio: 0.001)
        let watch = ["watch", "watched", "--config", world.configPath, "--fast-interval", "500ms", "--fast-period", "1s", "--slow-interval", "1s"]
        let clean = try await runCommand(world.binary, watch + ["--for", "2s"])
        #expect(clean.status == 0, "\(clean.stdout)\n\(clean.stderr)")
        #expect(clean.stdout.contains("clean:"))
        #expect(clean.stdout.contains("hold [watching]"))
        #expect(try await world.get("flags:watched:rollout_percent") == "50")

        let interrupted = try PipedProcess(world.binary, watch + ["--for", "60s"])
        _ = await interrupted.nextLine()  // the plan
        let poll = await interrupted.nextLine()
        #expect(poll?.contains("50%") == true, "\(poll ?? "nothing")")
        await interrupted.process.terminateOffPool(SIGINT)
        var summary = ""
        while let line = await interrupted.nextLine() { summary = line }
        #expect(await interrupted.process.exitStatus() == 130)
        #expect(summary.contains("stopped by a signal") && summary.contains("watched at 50%"), "\(summary)")

        try await world.serve("watched", errorRatio: 0.5)
        let rolled = try await runCommand(world.binary, watch + ["--for", "30s"])
        #expect(rolled.status == 1, "\(rolled.stdout)")
        #expect(rolled.stdout.contains("rolled back"))
        #expect(try await world.get("flags:watched:rollout_percent") == "10")
    }
}
