import Foundation
import RolloutAdmin
@testable import RolloutAudit
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Synchronization
import Testing

private let fixedTime = Timestamp(parsing: "2025-10-08T15:00:00.250000Z") ?? Timestamp(microsecondsSinceEpoch: 0)

@Suite("Audit log")
struct AuditLogTests {
    @Test func entryHasTheOriginalFormat() throws {
        var entry = AuditRecord(time: fixedTime, feature: "google", change: "0% -> 10%", reason: "Initial canary", by: "manual")
        #expect(entry.description == "2025-10-08T15:00:00Z  google  0% -> 10%  reason=Initial canary  by=manual")
        entry.id = "1759935600250-0"
        #expect(entry.description == "2025-10-08T15:00:00Z  google  0% -> 10%  reason=Initial canary  by=manual  id=1759935600250-0")
    }

    @Test(arguments: [
        ("line one\nline two", "line one line two"),
        ("tab\there", "tab here"),
        ("\r\n2025-01-01T00:00:00Z  google  0% -> 100%  by=controller", "2025-01-01T00:00:00Z google 0% -> 100% by=controller"),
        ("  spaced   out  ", "spaced out"),
        ("bell\u{07}nul\u{00}esc\u{1b}[31m", "bell nul esc [31m"),
        ("para\u{2028}sep", "para sep"),
        ("", ""),
        ("already one line", "already one line"),
        (" leading", "leading"),
        ("trailing ", "trailing"),
        ("two  spaces", "two spaces"),
        ("delete\u{7F}char", "delete char"),
        ("café  crème", "café crème"),
    ])
    func reasonsAreFoldedToOneLine(input: String, expected: String) {
        #expect(AuditLog.singleLine(input) == expected)
    }

    @Test func headerIsWrittenOnceAndEntriesAppend() async throws {
        let directory = try makeTemporaryDirectory("audit")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = AuditLog(path: directory + "/log.md")
        for index in 0..<3 {
            try await log.appendUnrecorded(AuditRecord(time: fixedTime, feature: "google", change: "paused", reason: "r\(index)\nforged", by: "manual"))
        }
        let text = try String(contentsOfFile: log.path, encoding: .utf8)
        #expect(text.hasPrefix(AuditLog.header))
        let lines = text.dropFirst(AuditLog.header.count).split(separator: "\n")
        #expect(lines == (0..<3).map { "2025-10-08T15:00:00Z  google  paused  reason=r\($0) forged  by=manual" })
    }

    // The time limit guards against a hang (the failure this test looks for); it bounds no speed.
    @Test(.timeLimit(.minutes(2)))
    func appendsWaitingForTheLockLeaveTheCooperativePoolFree() async throws {
        let directory = try makeTemporaryDirectory("audit")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = AuditLog(path: directory + "/log.md")
        // Another holder of the lock (as another process would be): every append must wait.
        let holder = try await offThePool { try LockedFile(path: log.path) }
        let started = StartedAppends()
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<16 {
                group.addTask {
                    started.count.withLock { $0 += 1 }
                    try await log.appendUnrecorded(AuditRecord(time: fixedTime, feature: "google", change: "paused", reason: "r\(index)", by: "manual"))
                }
            }
            try #require(await eventually(within: .seconds(60)) { started.count.withLock { $0 } == 16 })
            // Had the appends blocked in flock on the pool's threads (two here), these tasks
            // could not run until the lock is released, and the test would hang.
            let ran = await withTaskGroup(of: Int.self) { tasks in
                for _ in 0..<200 { tasks.addTask { await Task.yield(); return 1 } }
                return await tasks.reduce(0, +)
            }
            #expect(ran == 200)
            let size = try await offThePool { try holder.size() }
            #expect(size == 0)  // nothing could be written while the lock was held
            try await offThePool { holder.close() }
            try await group.waitForAll()
        }
        let text = try String(contentsOfFile: log.path, encoding: .utf8)
        #expect(text.hasPrefix(AuditLog.header))
        let lines = text.dropFirst(AuditLog.header.count).split(separator: "\n")
        #expect(Set(lines) == Set((0..<16).map { "2025-10-08T15:00:00Z  google  paused  reason=r\($0)  by=manual" }))
        #expect(lines.count == 16)
    }

    @Test func unwritablePathSaysWhatToDo() async {
        let log = AuditLog(path: "/nonexistent-dir/log.md")
        await #expect {
            try await log.appendUnrecorded(AuditRecord(time: fixedTime, feature: "google", change: "paused", reason: "", by: "manual"))
        } throws: { error in
            "\(error)".contains("ROLLOUT_AUDIT_LOG")
        }
    }

    @Test func concurrentAppendsFromManyThreadsNeverInterleave() async throws {
        let directory = try makeTemporaryDirectory("audit")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = AuditLog(path: directory + "/log.md")
        await withTaskGroup(of: Void.self) { group in
            for writer in 0..<20 {
                group.addTask {
                    for index in 0..<50 {
                        try? await log.appendUnrecorded(
                            AuditRecord(time: fixedTime, feature: "google", change: "w\(writer) e\(index)", reason: String(repeating: "x", count: 300), by: "manual"))
                    }
                }
            }
        }
        let text = try String(contentsOfFile: log.path, encoding: .utf8)
        let lines = text.dropFirst(AuditLog.header.count).split(separator: "\n")
        #expect(lines.count == 1000)
        #expect(lines.allSatisfy { $0.hasPrefix("2025-10-08T15:00:00Z  google  w") && $0.hasSuffix("  by=manual") })
    }
}

@Suite("Lua scripts")
struct ScriptFileTests {
    /// The scripts are compiled in from redis/ (CRolloutScripts): this catches a build that
    /// did not pick up an edited file, and a script added to redis/ but not to `Scripts`.
    @Test func theScriptsRunAreTheFilesInRedisFolder() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        for (file, source) in Scripts.all {
            let onDisk = try String(contentsOf: root.appendingPathComponent("redis/\(file)"), encoding: .utf8)
            #expect(onDisk == source, "redis/\(file) differs from the script compiled in: rebuild")
        }
        let files = try FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent("redis").path).filter { $0.hasSuffix(".lua") }
        #expect(Set(files) == Set(Scripts.all.map(\.file)))
    }
}

@Suite("Operator writes against a real redis-server", .tags(.redis), .requiresRedis)
struct FeatureStoreTests {
    struct Fixture {
        let server: RedisServer
        let redis: RedisClient
        let store: FeatureStore
        let directory: String

        init() async throws {
            server = try await RedisServer.start()
            redis = RedisClient(url: server.url())
            directory = try makeTemporaryDirectory("store")
            store = FeatureStore(redis: redis, auditLog: AuditLog(path: directory + "/log.md"), now: { fixedTime })
        }

        /// The log's lines without their `  id=` field (the stream's ids differ run to run).
        func auditLines() throws -> [String] {
            let text = (try? String(contentsOfFile: directory + "/log.md", encoding: .utf8)) ?? AuditLog.header
            return text.dropFirst(AuditLog.header.count).split(separator: "\n").map { withoutRecordID(String($0)) }
        }

        func get(_ key: String) async throws -> String? { try await redis.send("GET", key).string }
    }

    @Test func initCreatesTheOriginalInitialStateAndNeverOverwrites() async throws {
        let fixture = try await Fixture()
        _ = try await fixture.redis.send("SET", "flags:google:rollout_percent", "25")
        let created = try await fixture.store.initialize("google", reason: "new")
        #expect(created == ["flags:google:enabled", "flags:google:internal_only", "flags:google:paused"])
        #expect(try await fixture.get("flags:google:rollout_percent") == "25")
        #expect(try await fixture.get("flags:google:internal_only") == "true")
        #expect(try await fixture.store.initialize("google", reason: "again").isEmpty)
        #expect(try fixture.auditLines().count == 1)
    }

    @Test func anInvalidNameLiteralNeverWritesAKey() async throws {
        let fixture = try await Fixture()
        let ten = try #require(RolloutPercent(parsing: "10"))
        await #expect(throws: AdminError.self) { try await fixture.store.setPercent("Google", to: ten, reason: "typo") }
        await #expect(throws: AdminError.self) { try await fixture.store.setEnabled("has space", false, reason: "typo") }
        #expect(try await fixture.redis.send("KEYS", "*").array?.isEmpty == true)
    }

    @Test func setPercentRecordsPreviousAndTimeAtomically() async throws {
        let fixture = try await Fixture()
        let ten = try #require(RolloutPercent(parsing: "10"))
        let previous = try await fixture.store.setPercent("google", to: ten, reason: "Initial canary")
        #expect(previous == nil)
        #expect(try await fixture.get("flags:google:rollout_percent") == "10")
        #expect(try await fixture.get("flags:google:last_percent") == "0")
        #expect(try await fixture.get("flags:google:last_change_time") == "2025-10-08T15:00:00.250000+00:00")
        _ = try await fixture.store.setPercent("google", to: try #require(RolloutPercent(parsing: "37.125")), reason: "more")
        #expect(try await fixture.get("flags:google:last_percent") == "10")
        #expect(
            try fixture.auditLines() == [
                "2025-10-08T15:00:00Z  google  0% -> 10%  reason=Initial canary  by=manual",
                "2025-10-08T15:00:00Z  google  10% -> 37.125%  reason=more  by=manual",
            ])
        // The gate reads what was written as valid state.
        let state = try #require(try await fixture.store.read(["google"]).first).get()
        #expect(state.rolloutPercent == (try #require(RolloutPercent(parsing: "37.125"))))
        #expect(state.lastPercent == ten)
    }

    @Test func setPercentOverAnInvalidValueDropsItInsteadOfCopyingIt() async throws {
        let fixture = try await Fixture()
        _ = try await fixture.redis.send("SET", "flags:google:rollout_percent", "fifty")
        _ = try await fixture.store.setPercent("google", to: .zero, reason: "repair")
        #expect(try await fixture.get("flags:google:last_percent") == nil)
        #expect(try fixture.auditLines().last?.contains("\"fifty\" (invalid) -> 0%") == true)
    }

    @Test func switchesAndListsAreWrittenAndAudited() async throws {
        let fixture = try await Fixture()
        try await fixture.store.setPaused("google", true, reason: "3am page")
        try await fixture.store.setEnabled("google", false, reason: "hard kill")
        try await fixture.store.setInternalOnly("google", false, reason: "open up")
        #expect(try await fixture.store.add(["alice", "acme:bob"], to: .allow, of: "google", reason: "beta") == 2)
        #expect(try await fixture.store.remove(["alice"], from: .allow, of: "google", reason: "done") == 1)
        #expect(try await fixture.store.add(["mallory"], to: .deny, of: "google", reason: "abuse") == 1)
        try await fixture.store.setWorkspace("acme", of: "google", to: .full, reason: "design partner")
        try await fixture.store.unsetWorkspace("acme", of: "google", reason: "done")
        #expect(try await fixture.get("flags:google:paused") == "true")
        #expect(try await fixture.get("flags:google:enabled") == "false")
        #expect(try await fixture.redis.send("SMEMBERS", "flags:google:allow") == .array([.bulkString(Array("acme:bob".utf8))]))
        #expect(try await fixture.redis.send("HLEN", "flags:google:workspaces") == .integer(0))
        #expect(
            try fixture.auditLines().map { $0.split(separator: "  ").dropFirst(2).first.map(String.init) ?? "" } == [
                "paused", "kill switch on (disabled)", "internal_only false", "allow +alice,acme:bob", "allow -alice",
                "deny +mallory", "workspace acme -> 100%", "workspace acme unset",
            ])
    }

    @Test func longIdListsAreSummarisedInTheAuditLog() async throws {
        let fixture = try await Fixture()
        let ids = (0..<25).map { "a\($0)" }
        #expect(try await fixture.store.add(ids, to: .allow, of: "google", reason: "beta") == 25)
        #expect(try await fixture.redis.send("SCARD", "flags:google:allow") == .integer(25))
        #expect(try fixture.auditLines() == ["2025-10-08T15:00:00Z  google  allow +25 ids (a0,a1,a2 … a24)  reason=beta  by=manual"])
    }

    @Test func emptyIdsAreRefusedAndNothingIsWritten() async throws {
        let fixture = try await Fixture()
        await #expect(throws: AdminError.self) { try await fixture.store.add(["ok", ""], to: .allow, of: "google", reason: "") }
        #expect(try await fixture.redis.send("EXISTS", "flags:google:allow") == .integer(0))
        #expect(try fixture.auditLines().isEmpty)
    }

    @Test func listFindsFeaturesWithScanAndReportsStrayKeys() async throws {
        let fixture = try await Fixture()
        _ = try await fixture.redis.pipeline([
            RedisCommand("SET", "flags:google:enabled", "true"), RedisCommand("SADD", "flags:pay.v2:allow", "a"),
            RedisCommand("SET", "flags:Bad Name:enabled", "true"), RedisCommand("SET", "unrelated", "x"),
        ])
        let (features, stray) = try await fixture.store.listFeatures()
        #expect(features == ["google", "pay.v2"])
        #expect(stray == ["flags:Bad Name:enabled"])
    }
}

/// The pure parts of the audit trail and the write deadline.
@Suite("Audit trail values")
struct AuditTrailValueTests {
    @Test(arguments: [
        ("2025-10-08T15:00:00Z  google  paused  reason=r  by=manual  id=1759935600250-3", "1759935600250-3"),
        ("2025-10-08T15:00:00Z  google  paused  reason=x  id=1-1 in a reason  by=manual  id=2-0", "2-0"),
        ("2025-10-08T15:00:00Z  google  paused  reason=r  by=manual", nil),
        ("2025-10-08T15:00:00Z  google  paused  reason=r  by=manual  id=garbage", nil),
    ] as [(String, String?)])
    func theRecordIdIsTheLastIdField(line: String, id: String?) {
        #expect(recordID(inLine: line)?.description == id)
    }

    @Test func streamIdsCompareAsNumbersNotText() throws {
        let small = try #require(StreamID("999-0"))
        let large = try #require(StreamID("1000-0"))
        #expect(small < large)
        #expect(try #require(StreamID("1000-2")) < (try #require(StreamID("1000-10"))))
        #expect(StreamID("1000") == nil && StreamID("a-b") == nil)
    }

    @Test func serverTimeParsesTimeAndTheClientWaitsPastTheServerDeadline() throws {
        let read = ContinuousClock.now
        let time = try RedisServerTime(reply: .array([.bulkString(Array("1759935600".utf8)), .bulkString(Array("250999".utf8))]), readAt: read)
        #expect(time.milliseconds == 1_759_935_600_250)
        let deadline = time.writeDeadline(within: .seconds(3))
        // The server may run the write until about 3 s after TIME answered; the client waits
        // until at least as late by its own clock, so it never stops waiting while the write may still run.
        #expect(deadline.serverMilliseconds >= time.milliseconds + 3000)
        #expect(deadline.waitUntil - read >= .milliseconds(deadline.serverMilliseconds - time.milliseconds))
        #expect(throws: RedisError.self) { try RedisServerTime(reply: .array([.bulkString(Array("x".utf8))])) }
    }
}

/// How many appends have started, shared with the tasks that make them.
private final class StartedAppends: Sendable {
    let count = Mutex(0)
}

/// `flags:<f>:last_verdict`'s text: written and read back, anything else refused.
@Suite("The controller's last verdict as stored")
struct LastVerdictTests {
    @Test func aVerdictReadsBackAndAnythingElseIsRefused() throws {
        let time = try #require(Timestamp(parsing: "2026-12-04T21:00:00.000000+00:00"))
        let verdict = LastVerdict(result: .hold, time: time, reason: "dwell")
        #expect(verdict.description == "hold 2026-12-04T21:00:00.000000+00:00 dwell")
        #expect(LastVerdict(parsing: verdict.description) == verdict)
        // A reason with spaces is folded, so it still reads back.
        let spaced = LastVerdict(result: .rollback, time: time, reason: "budget 1h")
        #expect(spaced.reason == "budget_1h" && LastVerdict(parsing: spaced.description) == spaced)
        for bad in ["", "hold", "hold 2026-12-04T21:00:00Z", "maybe 2026-12-04T21:00:00Z dwell", "hold soon dwell", "hold 2026-12-04T21:00:00Z two words", "hold  dwell"] {
            #expect(LastVerdict(parsing: bad) == nil, "\(bad)")
        }
    }
}
