import Foundation
import InMemoryLogging
import Logging
@testable import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

/// A gate with a snapshot file, polling only on `clock`, with short timeouts so a dead Redis
/// is found out quickly.
private func fileGate(
    _ url: RedisURL, file: String, clock: ManualClock = ManualClock(), maxStaleness: Duration? = nil,
    logs: InMemoryLogHandler = InMemoryLogHandler()
) -> FeatureGate {
    var configuration = FeatureGate.Configuration()
    configuration.pushInvalidation = false
    configuration.refreshInterval = .seconds(5)
    configuration.connectTimeout = .milliseconds(200)
    configuration.commandTimeout = .milliseconds(300)
    configuration.maxStaleness = maxStaleness
    configuration.snapshotFile = file
    return FeatureGate(
        redisURL: url, features: ["google"], configuration: configuration, logger: Logger(label: "test") { _ in logs }, clock: clock)
}

/// The checked file's percent of google, or nil while there is no usable file.
private func filePercent(_ path: String) -> String? {
    guard let snapshot = try? FlagSnapshot.readChecked(from: path).snapshot else { return nil }
    return snapshot.keys.first { $0.key == "flags:google:rollout_percent" }?.value
}

/// A URL where nothing answers: a Redis that is down.
private func deadRedis() throws -> RedisURL {
    RedisURL(endpoint: .tcp(host: "127.0.0.1", port: try freeLoopbackPort()))
}

/// A redis-server with google at 10%, a client for it, and a folder for the file.
private func googleAtTen() async throws -> (RedisServer, RedisClient, String) {
    let server = try await RedisServer.start()
    let admin = RedisClient(url: server.url())
    _ = try await admin.send("SET", "flags:google:rollout_percent", "10")
    return (server, admin, try makeTemporaryDirectory("snapshot-file"))
}

@Suite("The snapshot file: a restart during an outage answers as before")
struct SnapshotFileFormatTests {
    @Test func aGatesRepliesSurviveTheFileAsRedisGaveThem() throws {
        let google: FeatureName = "google"
        let replies: [RedisValue] = [
            .null, .bulkString(Array("37.5".utf8)), .bulkString(Array("yes".utf8)), .null, .null, .null, .bulkString(Array("v1".utf8)),
            .array([.bulkString(Array("b".utf8)), .bulkString(Array("a".utf8))]), .array([]),
            .array([.bulkString(Array("w1".utf8)), .bulkString(Array("80".utf8))]),
        ]
        // A value that breaks the contract is kept as it is: the file decides as Redis did.
        let broken: [RedisValue] = [.bulkString(Array("maybe".utf8))] + Array(repeating: .null, count: 6) + [.array([]), .array([]), .array([])]
        let snapshot = FlagSnapshot(gateReplies: [google: replies, "broken": broken], createdAt: Timestamp(microsecondsSinceEpoch: 0))
        let decoded = try FlagSnapshot.decode(try snapshot.encoded(), path: "test")
        let sortedReplies = replies.enumerated().map { index, reply in
            index == 7 ? .array([.bulkString(Array("a".utf8)), .bulkString(Array("b".utf8))]) : reply
        }
        #expect(decoded.replies(for: google) == sortedReplies)
        #expect(FeatureState.read(google, from: decoded.replies(for: google)) == FeatureState.read(google, from: replies))
        #expect(FeatureState.read("broken", from: decoded.replies(for: "broken")) == FeatureState.read("broken", from: broken))
        #expect(decoded.featureNames == [google, "broken"])
    }

    @Test func aKeyOfTheWrongTypeIsNotAGuess() throws {
        // Redis answered WRONGTYPE (the kill switch written as a list): no file can hold that key,
        // so the feature is listed without keys, which is off for everyone, as it was.
        let wrong: [RedisValue] = [.error("WRONGTYPE Operation against a key holding the wrong kind of value"), .bulkString(Array("100".utf8))]
            + Array(repeating: .null, count: 5) + [.array([]), .array([]), .array([])]
        let snapshot = FlagSnapshot(gateReplies: ["google": wrong], createdAt: Timestamp(microsecondsSinceEpoch: 0))
        #expect(snapshot.keys.isEmpty && snapshot.features == ["google"])
        #expect(try FeatureState.read("google", from: snapshot.replies(for: "google")).get().decide(for: Subject(id: "a")).isOn == false)
        // A file holding a key of another type than the gate reads answers WRONGTYPE, as Redis would.
        var set = FlagSnapshot.Entry(key: "flags:google:enabled", type: "set")
        set.members = ["false"]
        let file = FlagSnapshot(createdAt: "2026-01-01T00:00:00Z", features: nil, keys: [set])
        guard case .failure(let invalid) = FeatureState.read("google", from: file.replies(for: "google")) else {
            Issue.record("a set where a string belongs must be invalid state")
            return
        }
        #expect(invalid.firstKey == "flags:google:enabled")
    }
}

@Suite("The snapshot file against redis-server", .tags(.redis), .requiresRedis, .serialized)
struct SnapshotFileTests {
    @Test func aGateRestartedDuringAnOutageAnswersFromItsFile() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:google:rollout_percent", "100")
        _ = try await admin.send("SADD", "flags:google:deny", "blocked")
        let directory = try makeTemporaryDirectory("snapshot-file")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/gate.json"

        // The first process reads Redis and writes its file.
        let first = fileGate(server.url(), file: file)
        #expect(await first.prepare(["google"]))
        #expect(await eventually(within: .seconds(60)) { filePercent(file) == "100" })
        #expect(FileManager.default.fileExists(atPath: file + ".sha256"))

        // Redis goes away; the process restarts and answers as before, saying from where.
        await server.killOffPool()
        let logs = InMemoryLogHandler()
        let restarted = fileGate(server.url(), file: file, logs: logs)
        #expect(await restarted.prepare(["google"]) == false)
        let decision = restarted.decision("google", for: Subject(id: "a"))
        #expect(decision.isOn)
        guard case .snapshotFile(let written) = decision.freshness else {
            Issue.record("expected an answer from the snapshot file, got \(decision.freshness)")
            return
        }
        #expect("\(decision)".contains("(from snapshot file, written \(written.secondsDescription))"))
        #expect(restarted.decision("google", for: Subject(id: "blocked")).reason == .denied)
        #expect(logs.entries.contains { "\($0.message)".contains("answering from the snapshot file") })
        // A handle made afterwards sees the same.
        #expect(restarted.feature("google").decision(for: Subject(id: "a")) == decision)

        // Redis is back with a change: live data replaces the file's at the first read.
        try await server.restartOffPool()
        _ = try await admin.send("SET", "flags:google:rollout_percent", "0")
        #expect(await restarted.refresh())
        #expect(restarted.decision("google", for: Subject(id: "a")) .isOn == false)
        #expect(restarted.decision("google", for: Subject(id: "a")).freshness == .live)
        // ...and that change is written to the file in turn.
        #expect(await eventually(within: .seconds(60)) { filePercent(file) == "0" })
    }

    @Test(arguments: ["torn", "tampered", "no checksum", "not json", "absent"])
    func aFileThatCannotBeTrustedIsLoggedAndIgnored(damage: String) async throws {
        let directory = try makeTemporaryDirectory("snapshot-file")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/gate.json"
        var percent = FlagSnapshot.Entry(key: "flags:google:rollout_percent", type: "string")
        percent.value = "0"
        try FlagSnapshot(createdAt: Timestamp.now().description, features: ["google"], keys: [percent]).writeDurably(to: file)
        let good = try Data(contentsOf: URL(fileURLWithPath: file))
        switch damage {
        case "torn": try good.prefix(good.count / 2).write(to: URL(fileURLWithPath: file))
        case "tampered":
            // 0% made 100% without a new checksum: exactly what must never be believed.
            try Data(String(decoding: good, as: UTF8.self).replacingOccurrences(of: "\"0\"", with: "\"100\"").utf8)
                .write(to: URL(fileURLWithPath: file))
        case "no checksum": try FileManager.default.removeItem(atPath: file + ".sha256")
        case "not json":
            let garbage = Data("{\"version\": 1, \"keys\": [{\"key\": 7}]}\n".utf8)
            try garbage.write(to: URL(fileURLWithPath: file))
            try Data("\(sha256Hex(garbage))  gate.json\n".utf8).write(to: URL(fileURLWithPath: file + ".sha256"))
        default: try FileManager.default.removeItem(atPath: file)
        }
        let logs = InMemoryLogHandler()
        let gate = fileGate(try deadRedis(), file: file, logs: logs)
        #expect(await gate.prepare(["google"]) == false)
        #expect(gate.decision("google", for: Subject(id: "a")) == Decision(isOn: false, reason: .noData))
        #expect(logs.entries.contains { $0.level == .error && "\($0.message)".contains("snapshot file cannot be used") })
    }

    @Test func writesAreAtMostOneASecondAndTheLastChangeIsNotLost() async throws {
        let (server, admin, directory) = try await googleAtTen()
        defer {
            admin.close()
            try? FileManager.default.removeItem(atPath: directory)
        }
        let file = directory + "/gate.json"
        let clock = ManualClock()
        let gate = fileGate(server.url(), file: file, clock: clock)
        try await whileRunning(gate) {
            #expect(await eventually(within: .seconds(60)) { filePercent(file) == "10" })
            // Two changes within the same second: neither is written before the second is over...
            _ = try await admin.send("SET", "flags:google:rollout_percent", "20")
            #expect(await gate.refresh())
            _ = try await admin.send("SET", "flags:google:rollout_percent", "30")
            #expect(await gate.refresh())
            // (the refresher's tick and the writer, waiting out its second, both asleep on the clock)
            #expect(await eventually(within: .seconds(60)) { clock.sleepers == 2 })
            #expect(filePercent(file) == "10")
            // ...then the last one is.
            clock.advance(by: .seconds(1))
            #expect(await eventually(within: .seconds(60)) { filePercent(file) == "30" })
        }
    }

    @Test func aRefreshThatChangesNothingDoesNotWrite() async throws {
        let (server, admin, directory) = try await googleAtTen()
        defer {
            admin.close()
            try? FileManager.default.removeItem(atPath: directory)
        }
        let file = directory + "/gate.json"
        let clock = ManualClock()
        let gate = fileGate(server.url(), file: file, clock: clock)
        #expect(await gate.prepare(["google"]))
        #expect(await eventually(within: .seconds(60)) { filePercent(file) == "10" })
        try FileManager.default.removeItem(atPath: file)
        clock.advance(by: .seconds(10))
        #expect(await gate.refresh())
        // Had that unchanged refresh written, this change (same instant, no run() to wait out
        // the second) would be held back and never reach the file.
        _ = try await admin.send("SET", "flags:google:rollout_percent", "11")
        #expect(await gate.refresh())
        #expect(await eventually(within: .seconds(60)) { filePercent(file) == "11" })
    }

    @Test func underAMaxStalenessAnOldFileIsNotUsedAndAYoungOneExpires() async throws {
        let directory = try makeTemporaryDirectory("snapshot-file")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var percent = FlagSnapshot.Entry(key: "flags:google:rollout_percent", type: "string")
        percent.value = "100"
        let old = directory + "/old.json"
        try FlagSnapshot(createdAt: "2020-01-01T00:00:00Z", features: ["google"], keys: [percent]).writeDurably(to: old)
        let oldGate = fileGate(try deadRedis(), file: old, maxStaleness: .seconds(60))
        #expect(await oldGate.prepare(["google"]) == false)
        #expect(oldGate.decision("google", for: Subject(id: "a")) == Decision(isOn: false, reason: .noData))

        // Written 10 s ago (wall clock); 60 s allowed: usable for about 50 s more on the gate's clock.
        let young = directory + "/young.json"
        let tenSecondsAgo = Timestamp(microsecondsSinceEpoch: Timestamp.now().microsecondsSinceEpoch - 10_000_000)
        try FlagSnapshot(createdAt: tenSecondsAgo.description, features: ["google"], keys: [percent]).writeDurably(to: young)
        let clock = ManualClock()
        let youngGate = fileGate(try deadRedis(), file: young, clock: clock, maxStaleness: .seconds(60))
        #expect(await youngGate.prepare(["google"]) == false)
        #expect(youngGate.isEnabled("google", for: Subject(id: "a")))
        clock.advance(by: .seconds(51))
        #expect(youngGate.decision("google", for: Subject(id: "a")) == Decision(isOn: false, reason: .staleSnapshot))
    }
}
