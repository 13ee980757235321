import Foundation
import RolloutAudit
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

/// The original Python controller and ours on the same keys and the same audit log
/// (docs/migrating.md).
@Suite("Controller beside the original Python controller", .tags(.e2e, .prometheus, .redis), .requiresPrometheus)
struct MigrationEndToEndTests {
    @Test func theOriginalControllersChangeIsNotRecordedASecondTime() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("legacy", "dwell: 1h")])
        try await world.known(["legacy"], at: "10")
        try await world.serve("legacy", errorRatio: 0.001)
        // The original controller promotes 10 -> 25: its three SETs (a zone-less time, as its
        // datetime.utcnow().isoformat() wrote) and its own line in the shared Markdown log.
        let now = Timestamp.now()
        let naive = String(now.description.prefix(26))  // 2026-12-04T22:00:00.123456
        _ = try await world.client.pipeline([
            RedisCommand("SET", "flags:legacy:rollout_percent", "25"), RedisCommand("SET", "flags:legacy:last_percent", "10"),
            RedisCommand("SET", "flags:legacy:last_change_time", naive),
        ])
        let line = "\(now.secondsDescription)  legacy  10% -> 25%  reason=auto-promote: healthy for 15 min  by=controller\n"
        try (AuditLog.header + line).write(toFile: world.auditLogPath, atomically: true, encoding: .utf8)
        let run = try await world.run()
        #expect(run.status == 0, "\(run.output.stderr)")
        #expect(run.features["legacy"]?["reason"] as? String == "dwell")
        #expect(try await world.get("flags:legacy:controller_percent") == "25")
        // Acknowledged (the dwell restarts), but the change shows once in the log.
        #expect(world.auditLines().filter { $0.contains("10% -> 25%") }.count == 1, "\(world.auditLines())")
        #expect(!world.auditLines().contains { $0.contains("manual-detected") })
        let again = try await world.run()
        #expect(again.features["legacy"]?["manual_change_detected"] as? Bool == false)
    }

    @Test func aChangeMadeWithTheCLIIsNotRecordedASecondTime() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("cli", "dwell: 1h")])
        try await world.known(["cli"], at: "10")
        try await world.serve("cli", errorRatio: 0.001)
        let set = try await runCommand(
            world.binary, ["flags", "set-percent", "cli", "25", "--reason", "by hand"],
            environment: ["REDIS_URL": world.redis.urlString, "ROLLOUT_AUDIT_LOG": world.auditLogPath])
        #expect(set.status == 0, "\(set.stderr)")
        let run = try await world.run()
        #expect(run.features["cli"]?["reason"] as? String == "dwell")
        #expect(try await world.get("flags:cli:controller_percent") == "25")
        #expect(world.auditLines().filter { $0.contains("10% -> 25%") }.count == 1, "\(world.auditLines())")
        #expect(world.auditLines().contains { $0.hasSuffix("cli  10% -> 25%  reason=by hand  by=manual") })
    }

    @Test func aChangeRecordedLongBeforeIsStillANewManualChange() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("old", "dwell: 1h")])
        try await world.known(["old"], at: "10")
        try await world.serve("old", errorRatio: 0.001)
        // The same 10 -> 25 in the log, an hour before this change: not this change's record.
        let hourAgo = Timestamp.now().advanced(by: .seconds(-3600))
        try (AuditLog.header + "\(hourAgo.secondsDescription)  old  10% -> 25%  reason=x  by=controller\n")
            .write(toFile: world.auditLogPath, atomically: true, encoding: .utf8)
        _ = try await world.client.send("SET", "flags:old:rollout_percent", "25")
        _ = try await world.client.send("SET", "flags:old:last_change_time", Timestamp.now().description)
        _ = try await world.run()
        #expect(world.auditLines().filter { $0.contains("old  10% -> 25%") && $0.hasSuffix("by=manual-detected") }.count == 1, "\(world.auditLines())")
    }

    /// A record counts for a change only while it is the feature's newest percent change: a
    /// later redis-cli change back to the same percent, seen within a minute of the last
    /// acknowledgement, is a new change and gets its own record.
    @Test func aChangeBackToAnAlreadyRecordedPercentIsRecordedAgain() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("flip", "dwell: 1h")])
        try await world.known(["flip"], at: "10")
        try await world.serve("flip", errorRatio: 0.001)
        let set = try await runCommand(
            world.binary, ["flags", "set-percent", "flip", "25", "--reason", "by hand"],
            environment: ["REDIS_URL": world.redis.urlString, "ROLLOUT_AUDIT_LOG": world.auditLogPath])
        #expect(set.status == 0, "\(set.stderr)")
        _ = try await world.run()  // acknowledges 10 -> 25 without a second record
        _ = try await world.client.send("SET", "flags:flip:rollout_percent", "10")
        _ = try await world.run()  // records 25 -> 10 (manual-detected)
        _ = try await world.client.send("SET", "flags:flip:rollout_percent", "25")
        let run = try await world.run()
        #expect(run.features["flip"]?["manual_change_detected"] as? Bool == true, "\(run.output.stdout)")
        let lines = world.auditLines()
        #expect(lines.filter { $0.contains("flip  10% -> 25%") }.count == 2, "\(lines)")
        #expect(lines.filter { $0.contains("flip  10% -> 25%") && $0.hasSuffix("by=manual-detected") }.count == 1, "\(lines)")
        #expect(lines.filter { $0.contains("flip  25% -> 10%") && $0.hasSuffix("by=manual-detected") }.count == 1, "\(lines)")
    }

    @Test func aFractionalStepForAV1FeatureHoldsWithInvalidPolicyAndWritesNothing() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("legacy", "dwell: 0s")], rollbackTo: "0.5")
        _ = try await world.client.send("SET", "flags:legacy:bucketing", "v1")
        try await world.known(["legacy"], at: "10")
        try await world.serve("legacy", errorRatio: 0.001)
        // `controller validate --online` finds it before any run.
        let validate = try await runCommand(world.binary, ["controller", "validate", "--config", world.configPath, "--online"])
        #expect(validate.status == 2, "\(validate.stdout) \(validate.stderr)")
        #expect(validate.stdout.contains("legacy: features.legacy.rollback_to 0.5 cannot be written for legacy"), "\(validate.stdout)")
        let run = try await world.run()
        #expect(run.status == 2, "\(run.output.stdout)")
        #expect(run.features["legacy"]?["reason"] as? String == "invalid_policy")
        // The run's status says so too (it reaches the Pushgateway as runs_total{status}): never "ok".
        let document = (try? JSONSerialization.jsonObject(with: Data(run.output.stdout.utf8))) as? [String: Any]
        #expect(document?["status"] as? String == "invalid_policy")
        let explanation = run.features["legacy"]?["explanation"] as? String ?? ""
        #expect(explanation.contains("features.legacy.rollback_to") && explanation.contains("int()"), "\(explanation)")
        #expect(try await world.get("flags:legacy:rollout_percent") == "10")
        #expect(world.auditLines().isEmpty)
        // The same policy for a v2 feature runs.
        _ = try await world.client.send("DEL", "flags:legacy:bucketing")
        #expect(try await runCommand(world.binary, ["controller", "validate", "--config", world.configPath, "--online"]).status == 0)
        let v2 = try await world.run()
        #expect(v2.status == 0)
        #expect(try await world.get("flags:legacy:rollout_percent") == "50")
    }
}
