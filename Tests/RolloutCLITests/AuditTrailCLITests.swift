import Foundation
import RolloutRedis
import RolloutTestSupport
import Testing

/// The promises under faults, through the binary: a change the CLI gave up on never lands
/// later, an unwritable log stops a change before it is made, and a record left in Redis by a
/// process that could not write the log is written by the next command, once.
@Suite("Audit trail and faults through the CLI", .tags(.cli, .redis), .requiresRedis)
struct AuditTrailCLITests {
    /// The CLI's change script, loaded so that EVALSHA runs it (its SHA-1 in the reply).
    func loadOperatorScript(_ redis: RedisClient) async throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let source = try String(contentsOf: root.appendingPathComponent("redis/operator_change.lua"), encoding: .utf8)
        return try #require(try await redis.send("SCRIPT", "LOAD", source).string)
    }

    @Test func aChangeSentToAFrozenRedisNeverLandsAfterTheCLIGaveUp() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.send("SET", "flags:frozen:rollout_percent", "10")
        let sha = try await loadOperatorScript(redis)
        // The server freezes the moment the change script reaches it, and thaws only after the
        // CLI has timed out and exited.
        let server = cli.server
        let proxy = try TriggeredProxy(to: server.port, trigger: sha) { server.freeze() }
        let result = try await cli.run(
            "flags", "set-percent", "frozen", "50", "--reason", "frozen test", environment: ["REDIS_URL": "redis://127.0.0.1:\(proxy.port)"])
        #expect(proxy.hasFired)
        #expect(result.status == 1, "\(result.stderr)")
        #expect(result.stderr.contains("not confirmed"))
        server.thaw()
        // The queued script runs now, finds its deadline passed, and writes nothing.
        #expect(await eventually(within: .seconds(30)) { ((try? await redis.send("INFO", "commandstats").string) ?? "").contains("cmdstat_evalsha:calls=1") })
        #expect(try await redis.send("GET", "flags:frozen:rollout_percent").string == "10")
        #expect(try await redis.send("EXISTS", "rollout:audit") == .integer(0))
        #expect(cli.auditLines().isEmpty)
    }

    @Test func anUnwritableAuditLogIsExitTwoAndNothingChanges() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        let directory = cli.directory + "/a-directory"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let dangling = cli.directory + "/link.md"
        try FileManager.default.createSymbolicLink(atPath: dangling, withDestinationPath: cli.directory + "/gone/log.md")
        for path in [directory, cli.directory + "/no/such/folder/log.md", "/dev/full", dangling] {
            for arguments in [["flags", "set-percent", "f", "50", "--reason", "r"], ["flags", "disable", "f", "--reason", "r"], ["flags", "allow", "add", "f", "alice"]] {
                let result = try await cli.run(arguments, environment: ["ROLLOUT_AUDIT_LOG": path])
                #expect(result.status == 2, "\(arguments) with \(path): \(result.stderr)")
                #expect(result.stderr.contains(path), "\(result.stderr)")
                #expect(result.stderr.contains("Nothing was changed"), "\(result.stderr)")
            }
        }
        #expect(try await redis.scan(matching: "*").isEmpty)
    }

    @Test func aRecordLeftInRedisIsWrittenByTheNextCommandOnce() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        try await cli.run("flags", "set-percent", "left", "10", "--reason", "first")
        // As a process killed between its change and the file would leave it: a record in the
        // stream that the Markdown log does not have.
        _ = try await redis.send(
            "XADD", "rollout:audit", "*", "time", "2026-12-01T10:00:00.000000+00:00", "feature", "left", "change", "10% -> 25%", "reason",
            "killed before the file", "by", "manual", "run", "rollout@elsewhere:1")
        let paused = try await cli.run("flags", "pause", "left", "--reason", "second")
        #expect(paused.status == 0, "\(paused.stderr)")
        let lines = cli.auditLines()
        #expect(lines.map { $0.split(separator: "  ").dropFirst(2).first.map(String.init) ?? "" } == ["0% -> 10%", "10% -> 25%", "paused"])
        // Every line carries the id of its record, and the stream holds exactly those.
        let ids = try await redis.send("XRANGE", "rollout:audit", "-", "+").array?.compactMap { $0.array?.first?.string } ?? []
        let text = try String(contentsOfFile: cli.auditLogPath, encoding: .utf8)
        #expect(ids.count == 3)
        #expect(ids.allSatisfy { id in text.components(separatedBy: "  id=\(id)\n").count == 2 })
        let sync = try await cli.run("audit", "sync")
        #expect(sync.status == 0)
        #expect(sync.stdout.contains("0 records written"))
        #expect(cli.auditLines().count == 3)
    }

    @Test func aWriteOverAKeyOfTheWrongTypeIsExitThreeAndChangesNothing() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.send("RPUSH", "flags:typed:rollout_percent", "50")
        _ = try await redis.send("SET", "flags:typed:allow", "alice")
        let percent = try await cli.run("flags", "set-percent", "typed", "60", "--reason", "r")
        #expect(percent.status == 3, "\(percent.stderr)")
        #expect(percent.stderr.contains("flags:typed:rollout_percent"))
        let allow = try await cli.run("flags", "allow", "add", "typed", "bob")
        #expect(allow.status == 3, "\(allow.stderr)")
        #expect(allow.stderr.contains("flags:typed:allow"))
        #expect(try await redis.send("LRANGE", "flags:typed:rollout_percent", "0", "-1") == .array([.bulkString(Array("50".utf8))]))
        #expect(try await redis.send("GET", "flags:typed:allow").string == "alice")
        #expect(try await redis.send("EXISTS", "rollout:audit") == .integer(0))
        #expect(cli.auditLines().isEmpty)
    }
}
