import Foundation
import RolloutRedis
import RolloutTestSupport
import Testing

private let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures")

/// 100,000 actor ids as a fleet sees them: ordinary ids, emails, non-ASCII, ids holding ':',
/// the id `anon` itself, and the empty actor, spread through the file.
private func comparisonIDs() -> [String] {
    let shapes = ["user-", "u_", "alice+", "Ünïcødé-", "中文用户", "🙂", "ws-42:nested-", "x@example.com."]
    var ids = ["", "anon", "user_123"]
    ids.reserveCapacity(100_000)
    var index = 0
    while ids.count < 100_000 {
        ids.append(index % 997 == 0 ? "" : "\(shapes[index % shapes.count])\(index)")
        index += 1
    }
    return ids
}

/// `rollout check --actors-from` and the original Python gate's rule
/// (Fixtures/original_gate.py) answering the same ids from the same redis-server.
private struct Comparison {
    let cli: CLI
    let python: String
    let idsPath: String
    let idsText: String
    let count: Int

    init(cli: CLI, python: String) throws {
        self.cli = cli
        self.python = python
        let ids = comparisonIDs()
        count = ids.count
        idsText = ids.map { $0 + "\n" }.joined()
        idsPath = cli.directory + "/ids.txt"
        try idsText.write(toFile: idsPath, atomically: true, encoding: .utf8)
    }

    /// The lines the two answer differently, and how many actors ours turned on.
    func compare(workspace: String?, environment: [String: String] = [:]) async throws -> (disagreements: Int, on: Int) {
        var arguments = ["check", "google", "--actors-from", idsPath]
        if let workspace { arguments += ["--workspace", workspace] }
        let ours = try await cli.run(arguments, environment: environment)
        #expect(ours.status == 0, "\(ours.stderr)")
        let theirs = try await runCommand(
            python, [fixtures.appendingPathComponent("original_gate.py").path, "127.0.0.1", String(cli.server.port), "google", workspace ?? ""],
            environment: environment, input: idsText)
        #expect(theirs.status == 0, "\(theirs.stderr)")
        let ourLines = ours.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        let theirLines = theirs.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        #expect(ourLines.count == count + 1)
        let differing = zip(ourLines, theirLines).filter { $0 != $1 }.count + abs(ourLines.count - theirLines.count)
        return (differing, ourLines.filter { $0.hasSuffix("\ttrue") }.count)
    }
}

@Suite("The original Python gate and ours, side by side", .tags(.cli, .redis), .requiresRedis)
struct OriginalGateComparisonTests {
    private func python() -> String? {
        let path = executablePath("python3")
        if path == nil { #expect(!isCI, "python3 is needed to run the original gate's rule") }
        return path
    }

    @Test func noActorEverDisagreesWithTheOriginalGate() async throws {
        guard let python = python() else { return }
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.send("SET", "flags:google:bucketing", "v1")
        let comparison = try Comparison(cli: cli, python: python)
        var compared = 0
        // Percents written by our CLI, as an operator would (10.0 is written as 10).
        for percent in ["0", "1", "10.0", "37", "50", "99", "100"] {
            let set = try await cli.run("flags", "set-percent", "google", percent, "--reason", "side by side")
            #expect(set.status == 0, "\(set.stderr)")
            for workspace in [nil, "acme"] as [String?] {
                let (disagreements, on) = try await comparison.compare(workspace: workspace)
                #expect(disagreements == 0, "at \(percent)% in workspace \(workspace ?? "none")")
                // About `percent`% of the actors are on: the comparison is not vacuous.
                let expected = Double(percent) ?? 0
                #expect(abs(Double(on) / Double(comparison.count) * 100 - expected) < 2, "\(on) on at \(percent)%")
                compared += comparison.count
            }
        }
        #expect(try await redis.send("GET", "flags:google:rollout_percent").string == "100")
        // rollout_percent absent: both read FLAGS_GOOGLE_ROLLOUT_PERCENT, and 0 without it.
        _ = try await redis.send("DEL", "flags:google:rollout_percent")
        for workspace in [nil, "ws_9"] as [String?] {
            let (disagreements, on) = try await comparison.compare(workspace: workspace, environment: ["FLAGS_GOOGLE_ROLLOUT_PERCENT": "25"])
            #expect(disagreements == 0, "environment fallback, workspace \(workspace ?? "none")")
            #expect(abs(Double(on) / Double(comparison.count) * 100 - 25) < 2)
            compared += comparison.count
        }
        // A variable int() cannot read ("10.0", "37.5") is 0% to the original: to ours too, under v1.
        for text in ["10.0", "37.5"] {
            let (disagreements, on) = try await comparison.compare(workspace: nil, environment: ["FLAGS_GOOGLE_ROLLOUT_PERCENT": text])
            #expect(disagreements == 0 && on == 0, "FLAGS_GOOGLE_ROLLOUT_PERCENT=\(text)")
            compared += comparison.count
        }
        let (disagreements, on) = try await comparison.compare(workspace: nil)
        #expect(disagreements == 0 && on == 0)
        compared += comparison.count
        #expect(compared == 1_900_000)
    }

    @Test func aFractionalPercentForAV1FeatureIsRefusedEverywhereTheCLIWritesOne() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.send("SET", "flags:google:bucketing", "v1")
        #expect(try await cli.run("flags", "set-percent", "google", "10", "--reason", "start").status == 0)
        for arguments in [
            ["flags", "set-percent", "google", "37.5", "--reason", "x"], ["flags", "workspace", "set", "google", "acme", "0.5"],
        ] {
            let refused = try await cli.run(arguments)
            #expect(refused.status == 2, "\(arguments)")
            #expect(refused.stderr.contains("bucketed with v1") && refused.stderr.contains("int()"), "\(refused.stderr)")
            #expect(refused.stderr.contains("whole number") && refused.stderr.contains("v2"), "\(refused.stderr)")
        }
        #expect(try await redis.send("GET", "flags:google:rollout_percent").string == "10")
        #expect(try await redis.send("HGET", "flags:google:workspaces", "acme").isNull)
        #expect(cli.auditLines().count == 1)
        // Whole numbers are written as plain integers, whatever their spelling.
        #expect(try await cli.run("flags", "set-percent", "google", "25.000", "--reason", "x").status == 0)
        #expect(try await redis.send("GET", "flags:google:rollout_percent").string == "25")
        #expect(try await cli.run("flags", "workspace", "set", "google", "acme", "5.0").status == 0)
        #expect(try await redis.send("HGET", "flags:google:workspaces", "acme").string == "5")
        // A v2 feature takes fractions.
        #expect(try await cli.run("flags", "set-percent", "other", "37.5", "--reason", "x").status == 0)
        #expect(try await redis.send("GET", "flags:other:rollout_percent").string == "37.5")
    }

    @Test func aSnapshotWithAFractionalV1PercentIsNotRestored() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.send("SET", "flags:google:bucketing", "v1")
        #expect(try await cli.run("flags", "set-percent", "google", "10", "--reason", "start").status == 0)
        let path = cli.directory + "/snapshot.json"
        #expect(try await cli.run("snapshot", "save", path).status == 0)
        for (stored, complaint) in [("37.5", "bucketed with v1"), ("10.0", "write it as 10")] {
            // An edited snapshot (its checksum made to match): a percent the original gate reads as 0.
            let text = try String(contentsOfFile: path, encoding: .utf8)
            let edited = text.replacingOccurrences(of: "\"10\"", with: "\"\(stored)\"")
            #expect(edited != text)
            let editedPath = cli.directory + "/edited-\(stored).json"
            try edited.write(toFile: editedPath, atomically: true, encoding: .utf8)
            let digest = try await runCommand("/usr/bin/sha256sum", [editedPath])
            try digest.stdout.write(toFile: editedPath + ".sha256", atomically: true, encoding: .utf8)
            let restore = try await cli.run("snapshot", "restore", editedPath)
            #expect(restore.status == 2, "\(restore.stdout) \(restore.stderr)")
            #expect(restore.stderr.contains(complaint) && restore.stderr.contains("Nothing was changed"), "\(restore.stderr)")
        }
        #expect(try await redis.send("GET", "flags:google:rollout_percent").string == "10")
    }
}

@Suite("rollout check: what a fleet migrating from the original gate runs into", .tags(.cli, .redis), .requiresRedis)
struct MigratingCheckTests {
    @Test func theEnvironmentPercentAppliesOnlyWhenRolloutPercentIsAbsent() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.send("SET", "flags:google:enabled", "true")
        let environment = ["FLAGS_GOOGLE_ROLLOUT_PERCENT": "50"]
        // Absent: the variable's 50% (bucket 30079 < 50000: on).
        let absent = try await cli.run(["check", "google", "--actor", "user_123", "--json"], environment: environment)
        #expect(absent.status == 0, "\(absent.stderr)")
        let document = try #require(try JSONSerialization.jsonObject(with: Data(absent.stdout.utf8)) as? [String: Any])
        #expect(document["on"] as? Bool == true)
        #expect(document["percent"] as? String == "50")
        #expect(document["percent_source"] as? String == "environment")
        #expect(document["percent_variable"] as? String == "FLAGS_GOOGLE_ROLLOUT_PERCENT")
        let text = try await cli.run(["check", "google", "--actor", "user_123"], environment: environment)
        #expect(text.stdout.contains("rollout percent 50%") && text.stdout.contains("FLAGS_GOOGLE_ROLLOUT_PERCENT"), "\(text.stdout)")
        // Below every Redis value: a rollout_percent of 0 wins, and a workspace's own percent.
        _ = try await redis.send("SET", "flags:google:rollout_percent", "0")
        let zero = try await cli.run(["check", "google", "--actor", "user_123"], environment: environment)
        #expect(zero.stdout.hasPrefix("google for user_123: off: bucket 30079 >= threshold 0"), "\(zero.stdout)")
        _ = try await redis.send("DEL", "flags:google:rollout_percent")
        _ = try await redis.send("HSET", "flags:google:workspaces", "acme", "0")
        let workspace = try await cli.run(["check", "google", "--actor", "user_123", "--workspace", "acme"], environment: environment)
        #expect(workspace.stdout.contains("off: bucket 23020 >= threshold 0 (v2, workspace percent 0%)"), "\(workspace.stdout)")
        // The name as Python's upper() spells it, '-' kept; a value that is no percent is ignored.
        let dashed = try await cli.run(
            ["check", "new-checkout", "--actor", "user_123"], environment: ["FLAGS_NEW-CHECKOUT_ROLLOUT_PERCENT": "100"])
        #expect(dashed.stdout.contains(": on: "), "\(dashed.stdout)")
        let junk = try await cli.run(["check", "google", "--actor", "user_123"], environment: ["FLAGS_GOOGLE_ROLLOUT_PERCENT": "lots"])
        #expect(junk.stdout.contains("off: bucket 30079 >= threshold 0"), "\(junk.stdout)")
    }

    @Test func anInvalidStateExitsThreeWithJSONAndWithActorsFrom() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.send("SET", "flags:google:rollout_percent", "fifty")
        let json = try await cli.run("check", "google", "--actor", "user_123", "--json")
        #expect(json.status == 3)
        let document = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any], "\(json.stdout)")
        #expect(document["on"] as? Bool == false)
        #expect(document["reason"] as? String == "invalid_state")
        #expect((document["error"] as? String)?.contains("flags:google:rollout_percent") == true)
        #expect(json.stderr.contains("flags:google:rollout_percent"))
        let path = cli.directory + "/actors.txt"
        try "user_123\nalice\n\n".write(toFile: path, atomically: true, encoding: .utf8)
        let file = try await cli.run("check", "google", "--actors-from", path)
        #expect(file.status == 3)
        #expect(file.stdout == "user_123\tfalse\nalice\tfalse\n\tfalse\n")
        #expect(file.stderr.contains("flags:google:rollout_percent"))
        let stream = try await cli.run(["check", "google", "--actors-from", "-"], input: "user_123\n")
        #expect(stream.status == 3)
        #expect(stream.stdout == "user_123\tfalse\n")
    }

    @Test func anEmptyActorValueIsTheEmptyActor() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.pipeline([
            RedisCommand("SET", "flags:google:bucketing", "v1"), RedisCommand("SET", "flags:google:rollout_percent", "38"),
        ])
        // v1: the original gate's anon, bucket 38 (docs/bucketing.md).
        let v1 = try await cli.run("check", "google", "--actor=")
        #expect(v1.status == 0, "\(v1.stderr)")
        #expect(v1.stdout == "google for : on: bucket 38 <= threshold 38 (v1, rollout percent 38%)\n")
        let spelled = try await cli.run("check", "google", "--actor", "")
        #expect(spelled.stdout == v1.stdout)
        // v2: on only at 100%.
        _ = try await redis.send("SET", "flags:google:bucketing", "v2")
        let v2 = try await cli.run("check", "google", "--actor=", "--json")
        let document = try #require(try JSONSerialization.jsonObject(with: Data(v2.stdout.utf8)) as? [String: Any], "\(v2.stdout) \(v2.stderr)")
        #expect(document["reason"] as? String == "anonymous_actor")
        #expect(document["actor"] as? String == "")
    }

    @Test func aTimestampWithoutAZoneReadsAsUTC() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.pipeline([
            RedisCommand("SET", "flags:google:rollout_percent", "50"), RedisCommand("SET", "flags:google:last_change_time", "2025-10-08T15:30:00"),
        ])
        let check = try await cli.run("check", "google", "--actor", "user_123")
        #expect(check.status == 0, "\(check.stdout) \(check.stderr)")
        let get = try await cli.run("flags", "get", "google", "--json")
        #expect(get.status == 0, "\(get.stderr)")
        #expect(get.stdout.contains("2025-10-08T15:30:00.000000+00:00"), "\(get.stdout)")
    }
}
