import Foundation
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("rollout snapshot", .tags(.cli, .redis), .requiresRedis)
struct SnapshotTests {
    @Test func saveThenRestoreBringsEveryKeyBackAtomically() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.pipeline([
            RedisCommand("SET", "flags:google:rollout_percent", "50"), RedisCommand("SET", "flags:google:paused", "false"),
            RedisCommand("SADD", "flags:google:allow", "alice", "acme:bob"), RedisCommand("HSET", "flags:google:workspaces", "acme", "25"),
            RedisCommand("ZADD", "flags:google:rollbacks", "1700000000", "a"), RedisCommand("SET", "flags:google:guard", "on", "PX", "600000"),
            RedisCommand("SET", "flags:pay.v2:enabled", "true"), RedisCommand("SET", "unrelated", "keep"),
            RedisCommand("SET", "flags:google:lock", "someone", "PX", "60000"),
        ])
        let file = cli.directory + "/flags.json"
        let save = try await cli.run("snapshot", "save", file)
        #expect(save.status == 0, "\(save.stderr)")
        #expect(save.stdout.contains("saved 7 keys of 2 feature(s)"))
        let checksum = try String(contentsOfFile: file + ".sha256", encoding: .utf8)
        #expect(checksum.hasSuffix("  flags.json\n"))

        // Things go wrong after the snapshot.
        _ = try await redis.pipeline([
            RedisCommand("SET", "flags:google:rollout_percent", "100"), RedisCommand("DEL", "flags:google:allow"),
            RedisCommand("SET", "flags:google:enabled", "false"),
        ])
        let preview = try await cli.run("snapshot", "restore", file, "--dry-run")
        #expect(preview.status == 0)
        #expect(preview.stdout.contains("~ flags:google:rollout_percent \"100\" -> \"50\""))
        #expect(preview.stdout.contains("+ flags:google:allow set of 2"))
        #expect(preview.stdout.contains("- flags:google:enabled \"false\""))
        #expect(try await redis.send("GET", "flags:google:rollout_percent").string == "100")

        let restore = try await cli.run("snapshot", "restore", file)
        #expect(restore.status == 0, "\(restore.stderr)")
        #expect(try await redis.send("GET", "flags:google:rollout_percent").string == "50")
        #expect(try await redis.send("EXISTS", "flags:google:enabled") == .integer(0))
        #expect(try await redis.send("SCARD", "flags:google:allow") == .integer(2))
        #expect(try await redis.send("HGET", "flags:google:workspaces", "acme").string == "25")
        #expect(try await redis.send("ZSCORE", "flags:google:rollbacks", "a").string == "1700000000")
        #expect((try await redis.send("PTTL", "flags:google:guard").integer ?? -1) > 0)
        #expect(try await redis.send("GET", "unrelated").string == "keep")
        #expect(try await redis.send("GET", "flags:google:lock").string == "someone")
        #expect(cli.auditLines().filter { $0.contains("restored from snapshot") }.count == 2)
        let saved = try FileManager.default.contentsOfDirectory(atPath: cli.directory).filter { $0.contains("pre-restore") }
        #expect(saved.count == 2)  // the JSON and its .sha256
    }

    @Test func aWrongChecksumOrAMalformedSnapshotChangesNothing() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.send("SET", "flags:google:rollout_percent", "10")
        let file = cli.directory + "/flags.json"
        #expect(try await cli.run("snapshot", "save", file).status == 0)
        _ = try await redis.send("SET", "flags:google:rollout_percent", "90")

        var text = try String(contentsOfFile: file, encoding: .utf8)
        text = text.replacingOccurrences(of: "\"10\"", with: "\"100\"")
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        let altered = try await cli.run("snapshot", "restore", file)
        #expect(altered.status == 2)
        #expect(altered.stderr.contains("does not match its checksum"))

        try "{\"version\": 1, \"keys\": [{\"key\": \"other:key\", \"type\": \"string\", \"value\": \"x\"}], \"created_at\": \"x\"}"
            .write(toFile: file, atomically: true, encoding: .utf8)
        let sum = try await runCommand("/usr/bin/sha256sum", [file])
        try sum.stdout.write(toFile: file + ".sha256", atomically: true, encoding: .utf8)
        let foreign = try await cli.run("snapshot", "restore", file)
        #expect(foreign.status == 2)
        #expect(foreign.stderr.contains("other:key is not a flags:<feature>:<key> name"))

        try FileManager.default.removeItem(atPath: file + ".sha256")
        let unchecked = try await cli.run("snapshot", "restore", file)
        #expect(unchecked.status == 2)
        #expect(unchecked.stderr.contains(".sha256 is missing"))

        #expect(try await redis.send("GET", "flags:google:rollout_percent").string == "90")
        #expect(cli.auditLines().isEmpty)
    }
}

@Suite("rollout check --snapshot-file: what a restarted service answers during an outage", .tags(.cli, .redis), .requiresRedis)
struct CheckSnapshotFileTests {
    @Test func answersFromTheFileWhenRedisIsDownAndOnlyReadsIt() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.pipeline([
            RedisCommand("SET", "flags:google:rollout_percent", "100"), RedisCommand("SADD", "flags:google:deny", "blocked"),
        ])
        // The file a service's gate writes, then the same state saved by an operator.
        let gateFile = cli.directory + "/gate.json"
        var configuration = FeatureGate.Configuration()
        configuration.snapshotFile = gateFile
        let gate = FeatureGate(redisURL: cli.server.url(), features: ["google"], configuration: configuration)
        #expect(await gate.prepare(["google"]))
        #expect(await eventually(within: .seconds(60)) { FileManager.default.fileExists(atPath: gateFile + ".sha256") })
        // It is a snapshot `rollout snapshot restore` accepts: restoring it would change nothing the gate reads.
        let preview = try await cli.run("snapshot", "restore", gateFile, "--dry-run")
        #expect(preview.status == 0, "\(preview.stderr)")
        #expect(!preview.stdout.contains("rollout_percent") && !preview.stdout.contains("deny"), "\(preview.stdout)")

        // With Redis up the answer is live and the file is never written by check.
        let unwritten = cli.directory + "/never.json"
        let live = try await cli.run("check", "google", "--actor", "a", "--snapshot-file", unwritten)
        #expect(live.status == 0 && live.stdout.contains(": on"), "\(live.stdout) \(live.stderr)")
        #expect(!live.stdout.contains("snapshot file"))
        #expect(!FileManager.default.fileExists(atPath: unwritten))

        await cli.server.killOffPool()
        let down = try await cli.run("check", "google", "--actor", "a", "--snapshot-file", gateFile)
        #expect(down.status == 0, "\(down.stderr)")
        #expect(down.stdout.contains(": on") && down.stdout.contains("(from snapshot file, written 20"), "\(down.stdout)")
        #expect(down.stderr.contains("answering from the snapshot file \(gateFile)"))
        let denied = try await cli.run(
            "check", "google", "--actor", "blocked", "--json", environment: ["ROLLOUT_SNAPSHOT_FILE": gateFile])
        #expect(denied.status == 0, "\(denied.stderr)")
        let document = try #require(try JSONSerialization.jsonObject(with: Data(denied.stdout.utf8)) as? [String: Any])
        #expect(document["on"] as? Bool == false && document["reason"] as? String == "denied")
        #expect(document["freshness"] as? String == "snapshot_file")
        #expect((document["snapshot_written_at"] as? String)?.hasPrefix("20") == true)

        // No usable file: unreachable, as without one.
        let damaged = cli.directory + "/damaged.json"
        try Data("{}".utf8).write(to: URL(fileURLWithPath: damaged))
        let refused = try await cli.run("check", "google", "--actor", "a", "--snapshot-file", damaged)
        #expect(refused.status == 1, "\(refused.stdout) \(refused.stderr)")
        #expect(refused.stderr.contains(".sha256 is missing"))
    }
}
