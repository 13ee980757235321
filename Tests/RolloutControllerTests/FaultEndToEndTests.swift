import Foundation
import RolloutAdmin
import RolloutAudit
import RolloutController
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

extension ControllerWorld {
    /// Marks features as known to the controller at their current percent (as if it had run
    /// before), so the next run may promote them instead of adopting them; `at` sets the percent first.
    func known(_ features: [String], at percent: String? = nil) async throws {
        for feature in features {
            if let percent { _ = try await client.send("SET", "flags:\(feature):rollout_percent", percent) }
            let current = try await client.send("GET", "flags:\(feature):rollout_percent").string ?? "0"
            _ = try await client.send("SET", "flags:\(feature):controller_percent", current, "NX")
        }
    }

    /// The audit stream's records as (feature, change), oldest first.
    func streamRecords() async throws -> [(feature: String, change: String)] {
        var records: [(String, String)] = []
        for entry in try await client.send("XRANGE", AuditTrail.streamKey, "-", "+").array ?? [] {
            let flat = entry.array?.last?.array?.compactMap(\.string) ?? []
            var fields: [String: String] = [:]
            for index in stride(from: 0, to: flat.count - 1, by: 2) { fields[flat[index]] = flat[index + 1] }
            records.append((fields["feature"] ?? "", fields["change"] ?? ""))
        }
        return records
    }
}

/// The controller's promises under faults, through the binary against real servers.
// Serialized: each test runs its own Prometheus; several at once starve a 2-core machine.
@Suite("Controller under faults", .tags(.e2e, .prometheus, .redis), .requiresPrometheus, .serialized)
struct FaultEndToEndTests {
    @Test func firstSightAdoptsThePercentAndHoldsForTheDwell() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("new", "dwell: 15m")])
        _ = try await world.client.send("SET", "flags:new:rollout_percent", "50")  // redis-cli, moments ago
        try await world.serve("new", errorRatio: 0.001)
        let before = Timestamp.now()
        let first = try await world.run()
        #expect(first.status == 0, "\(first.output.stderr)")
        #expect(first.features["new"]?["reason"] as? String == "adopted")
        #expect(first.features["new"]?["adopted"] as? Bool == true)
        #expect(try await world.get("flags:new:rollout_percent") == "50")
        #expect(try await world.get("flags:new:controller_percent") == "50")
        let adoptedAt = try #require(Timestamp(parsing: try await world.get("flags:new:last_change_time") ?? ""))
        #expect(adoptedAt >= Timestamp(microsecondsSinceEpoch: before.microsecondsSinceEpoch - 1_000_000))
        #expect(world.auditLines().count == 1)
        #expect(world.auditLines().first?.contains("  new  adopted at 50%  reason=first sight") == true)
        let second = try await world.run()
        #expect(second.features["new"]?["reason"] as? String == "dwell")
        #expect(second.features["new"]?["adopted"] as? Bool == false)
        #expect(try await world.get("flags:new:rollout_percent") == "50")
        #expect(world.auditLines().count == 1)
    }

    @Test func anUnwritableAuditLogIsExitTwoBeforeAnyChange() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("logged", "dwell: 0s")])
        try await world.known(["logged"], at: "0")
        try await world.serve("logged", errorRatio: 0.001)
        let directory = world.directory + "/a-directory"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let policy = try String(contentsOfFile: world.configPath, encoding: .utf8)
        for path in [directory, "/dev/full", world.directory + "/no/such/folder/log.md"] {
            try policy.replacingOccurrences(of: world.auditLogPath, with: path).write(toFile: world.configPath, atomically: true, encoding: .utf8)
            let run = try await world.run()
            #expect(run.status == 2, "\(path): \(run.output.stderr)")
            #expect(run.output.stderr.contains(path))
            #expect(try await world.get("flags:logged:rollout_percent") == "0")
            #expect(try await world.client.send("EXISTS", "flags:logged:lock", AuditTrail.streamKey) == .integer(0))
        }
    }

    @Test func aPromotionSentToAFrozenRedisNeverLandsAfterTheRunGaveUp() async throws {
        let world = try await ControllerWorld.make()
        for (_, source) in Scripts.all { _ = try await world.client.send("SCRIPT", "LOAD", source) }
        let server = world.redis
        let proxy = try TriggeredProxy(to: server.port, trigger: Scripts.applyChange.sha1) { server.freeze() }
        try world.writePolicy([("frozen", "dwell: 0s")], redisURL: "redis://127.0.0.1:\(proxy.port)")
        try await world.known(["frozen"], at: "10")
        try await world.serve("frozen", errorRatio: 0.001)
        let run = try await world.run()
        #expect(proxy.hasFired)
        #expect(run.status == 1, "\(run.output.stdout)")
        #expect(run.features["frozen"]?["reason"] as? String == "redis_error")
        server.thaw()
        // The queued compare-and-set runs now, past its deadline. (The lock's release is not
        // queued behind it: its new connection's handshake, HELLO, timed out against the frozen
        // server; the lock ends with its TTL.)
        #expect(await eventually(within: .seconds(30)) { ((try? await world.client.send("INFO", "commandstats").string) ?? "").contains("cmdstat_evalsha:calls=1,") })
        #expect(try await world.get("flags:frozen:rollout_percent") == "10")
        #expect(try await world.get("flags:frozen:controller_percent") == "10")
        #expect(try await world.client.send("EXISTS", AuditTrail.streamKey) == .integer(0))
        #expect(world.auditLines().isEmpty)
    }

    /// Runs killed at random moments (SIGKILL), then one that finishes: every change in Redis
    /// has its record, each record has exactly one line, and each feature's records chain from
    /// adoption to 100% with no gap (a change without a record would break the chain).
    @Test func controllerRunsKilledAtRandomMomentsLoseNoAuditRecord() async throws {
        let world = try await ControllerWorld.make()
        let features = (0..<12).map { "killed\($0)" }
        try world.writePolicy(features.map { ($0, "dwell: 0s") })
        for feature in features { try await world.serve(feature, errorRatio: 0.001) }
        var generator = SystemRandomNumberGenerator()
        for round in 0..<16 {
            let process = try ChildProcess(
                world.binary, ["controller", "run", "--config", world.configPath], stdout: world.directory + "/out\(round).txt",
                stderr: world.directory + "/err\(round).txt")
            // Killed once the run has written a random number of records (0: as it starts), so
            // the kill falls between a script and its line, or anywhere else in a run, whatever
            // the machine's speed.
            let recorded = try await world.client.send("XLEN", "rollout:audit").integer ?? 0
            let target = recorded + Int64.random(in: 0...12, using: &generator)
            _ = await eventually(within: .seconds(60), every: .milliseconds(1)) {
                if process.hasExited() { return true }
                return ((try? await world.client.send("XLEN", "rollout:audit").integer) ?? 0) >= target
            }
            await process.terminateOffPool(SIGKILL)
            // A killed run's locks expire by themselves; here, at once.
            let locks = try await world.client.scan(matching: "flags:*:lock")
            if !locks.isEmpty { _ = try await world.client.send(RedisCommand("DEL", locks)) }
        }
        for _ in 0..<5 { _ = try await world.run() }
        let sync = try await runCommand(world.binary, ["audit", "sync", "--audit-log", world.auditLogPath, "--redis-url", world.redis.urlString])
        #expect(sync.status == 0, "\(sync.stderr)")

        let records = try await world.streamRecords()
        let text = try String(contentsOfFile: world.auditLogPath, encoding: .utf8)
        let lines = text.split(separator: "\n").filter { $0.hasPrefix("20") }
        #expect(lines.count == records.count, "every record has exactly one line")
        let ids = try await world.client.send("XRANGE", AuditTrail.streamKey, "-", "+").array?.compactMap { $0.array?.first?.string } ?? []
        #expect(Set(lines.compactMap { line in line.range(of: "  id=").map { String(line[$0.upperBound...]) } }) == Set(ids))
        for feature in features {
            let changes = records.filter { $0.feature == feature }.map(\.change)
            #expect(changes == ["adopted at 0%", "0% -> 10%", "10% -> 50%", "50% -> 100%"], "\(feature): \(changes)")
            #expect(try await world.get("flags:\(feature):rollout_percent") == "100")
        }
    }

    /// The disk fills between the check and the write: the change stands, recorded in Redis; the
    /// run says the log was not written (the executable exits 1 for that: RolloutExitTests); the
    /// next sync writes the line.
    @Test func aLogThatFailsAfterTheChangeIsExitOneAndCaughtUpLater() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("late", "dwell: 0s")])
        try await world.known(["late"])
        try await world.serve("late", errorRatio: 0.001)
        // In process, past the executable's check: the log's path is a directory by the time
        // the run writes it.
        let unwritable = world.directory + "/became-a-directory"
        try FileManager.default.createDirectory(atPath: unwritable, withIntermediateDirectories: true)
        let yaml = try String(contentsOfFile: world.configPath, encoding: .utf8).replacingOccurrences(of: world.auditLogPath, with: unwritable)
        let controller = Controller(policy: try ControllerPolicy(yaml: yaml))
        let report = await controller.run()
        #expect(report.features.first?.applied == true)
        #expect(report.auditLogError?.contains(unwritable) == true)
        #expect(try await world.get("flags:late:rollout_percent") == "10")
        #expect(try await world.streamRecords().map(\.change) == ["0% -> 10%"])
        let sync = try await runCommand(world.binary, ["audit", "sync", "--audit-log", world.auditLogPath, "--redis-url", world.redis.urlString])
        #expect(sync.status == 0, "\(sync.stderr)")
        #expect(world.auditLines().count == 1)
        #expect(world.auditLines().first?.contains("  late  0% -> 10%  ") == true)
    }
}
