import Foundation
import RolloutRedis
import RolloutTestSupport
import Testing

/// Runs `rollout` with REDIS_URL pointing at `server` and the audit log in `directory`.
struct CLI {
    let server: RedisServer
    let directory: String
    let binary: String

    init(arguments: [String] = []) async throws {
        server = try await RedisServer.start(arguments: arguments)
        directory = try makeTemporaryDirectory("cli")
        binary = try rolloutBinary()
    }

    var auditLogPath: String { directory + "/rollout_log.md" }

    @discardableResult
    func run(_ arguments: String..., input: String = "", environment: [String: String] = [:]) async throws -> CommandResult {
        try await run(arguments, input: input, environment: environment)
    }

    @discardableResult
    func run(_ arguments: [String], input: String = "", environment: [String: String] = [:]) async throws -> CommandResult {
        try await runCommand(
            binary, arguments, environment: ["REDIS_URL": server.urlString, "ROLLOUT_AUDIT_LOG": auditLogPath].merging(environment) { $1 },
            input: input)
    }

    func auditLines() -> [String] {
        let text = (try? String(contentsOfFile: auditLogPath, encoding: .utf8)) ?? ""
        return text.split(separator: "\n").filter { $0.hasPrefix("20") }.map { withoutRecordID(String($0)) }
    }

    func redis() -> RedisClient { RedisClient(url: server.url()) }
}

@Suite("rollout CLI", .tags(.cli, .redis), .requiresRedis)
struct CLITests {
    @Test func initThenRolloutThenCheck() async throws {
        let cli = try await CLI()
        #expect(try await cli.run("flags", "init", "google").status == 0)
        #expect(try await cli.run("flags", "internal-only", "google", "false", "--reason", "open").status == 0)
        let set = try await cli.run("flags", "set-percent", "google", "50", "--reason", "Half")
        #expect(set.status == 0)
        #expect(set.stdout == "google: 0% -> 50%\n")
        let check = try await cli.run("check", "google", "--actor", "user_123")
        #expect(check.status == 0)
        #expect(check.stdout == "google for user_123: on: bucket 30079 < threshold 50000 (v2, rollout percent 50%)\n")
        let json = try await cli.run("check", "google", "--actor", "user_123", "--workspace", "acme", "--json")
        let document = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect(document["bucket"] as? Int == 23020)  // docs/bucketing.md: acme:user_123
        #expect(document["on"] as? Bool == true)
        #expect(document["reason"] as? String == "bucket")
        #expect(cli.auditLines().count == 3)
        #expect(cli.auditLines().last?.hasSuffix("  google  0% -> 50%  reason=Half  by=manual") == true)
    }

    @Test func switchesListsAndWorkspacesThroughTheCLI() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        let steps: [[String]] = [
            ["flags", "pause", "google", "--reason", "INC-1"], ["flags", "disable", "google"], ["flags", "enable", "google"],
            ["flags", "resume", "google"], ["flags", "allow", "add", "google", "alice", "acme:bob"], ["flags", "deny", "add", "google", "eve"],
            ["flags", "allow", "remove", "google", "alice"], ["flags", "workspace", "set", "google", "acme", "25"],
        ]
        for step in steps {
            let result = try await runCommand(cli.binary, step, environment: ["REDIS_URL": cli.server.urlString, "ROLLOUT_AUDIT_LOG": cli.auditLogPath])
            #expect(result.status == 0, "\(step): \(result.stderr)")
        }
        #expect(try await redis.send("GET", "flags:google:paused").string == "false")
        #expect(try await redis.send("GET", "flags:google:enabled").string == "true")
        #expect(try await redis.send("SMEMBERS", "flags:google:allow") == .array([.bulkString(Array("acme:bob".utf8))]))
        #expect(try await redis.send("HGET", "flags:google:workspaces", "acme").string == "25")
        #expect(cli.auditLines().count == steps.count)
        #expect(cli.auditLines().first?.hasSuffix("google  paused  reason=INC-1  by=manual") == true)
        let json = try await cli.run("flags", "get", "google", "--json")
        let document = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        #expect(document["valid"] as? Bool == true)
        #expect(document["deny"] as? [String] == ["eve"])
        #expect((document["workspaces"] as? [String: String])?["acme"] == "25")
    }

    @Test func invalidInputExitsTwoBeforeConnecting() async throws {
        let cli = try await CLI()
        // A URL nothing listens on: exit 2 proves validation happened before any connect.
        let unreachable = ["REDIS_URL": "redis://127.0.0.1:1"]
        for arguments in [
            ["flags", "set-percent", "google", "150", "--reason", "x"], ["flags", "set-percent", "google", "fifty", "--reason", "x"],
            ["flags", "set-percent", "flags:x", "10", "--reason", "x"], ["flags", "set-percent", "google", "10"],
            ["flags", "get", "Bad Name"], ["check", "google"], ["check", "google", "--actor", "a", "--at", "1e2"],
            ["flags", "internal-only", "google", "maybe"], ["flags", "nonsense"],
        ] {
            let result = try await runCommand(cli.binary, arguments, environment: unreachable)
            #expect(result.status == 2, "\(arguments): \(result.stderr)")
            #expect(!result.stderr.isEmpty)
        }
        #expect(cli.auditLines().isEmpty)
    }

    @Test func unreachableRedisExitsOneAndNeverPrintsThePassword() async throws {
        let cli = try await CLI()
        let port = try freeLoopbackPort()
        let result = try await cli.run("flags", "pause", "google", environment: ["REDIS_URL": "redis://ops:hunter2@127.0.0.1:\(port)"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("Connection refused"))
        #expect(!(result.stdout + result.stderr).contains("hunter2"))
        let badAuth = try await CLI(arguments: ["--requirepass", "right-password"])
        let refused = try await badAuth.run("flags", "get", "google", environment: ["REDIS_URL": "redis://:wrong-password@127.0.0.1:\(badAuth.server.port)"])
        #expect(refused.status == 1)
        #expect(refused.stderr.contains("authentication"))
        #expect(!refused.stderr.contains("wrong-password"))
    }

    @Test func corruptStateExitsThreeNamingTheKey() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.send("SET", "flags:google:last_change_time", "yesterday")
        let get = try await cli.run("flags", "get", "google")
        #expect(get.status == 3)
        #expect(get.stdout.contains("flags:google:last_change_time holds \"yesterday\""))
        #expect(try await cli.run("flags", "list").status == 3)
        let check = try await cli.run("check", "google", "--actor", "a")
        #expect(check.status == 3)
        #expect(check.stdout.contains("invalid state in flags:google:last_change_time"))
    }

    @Test func aKeyOfTheWrongTypeExitsThreeNamingTheKeyAndItsType() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        for (index, wrong) in WrongTypeCase.all.enumerated() {
            let feature = "wrong-\(index)"
            let key = "flags:\(feature):\(wrong.suffix)"
            _ = try await redis.pipeline(wrong.setUp(feature))
            let check = try await cli.run("check", feature, "--actor", "a")
            #expect(check.status == 3, "\(wrong): \(check.stderr)")
            #expect(check.stdout.hasPrefix("\(feature) for a: off: invalid state in \(key):"), "\(wrong): \(check.stdout)")
            let get = try await cli.run("flags", "get", feature)
            #expect(get.status == 3, "\(wrong): \(get.stderr)")
            #expect(get.stdout.contains("state: INVALID"), "\(wrong): \(get.stdout)")
            #expect(get.stdout.contains("- \(key) holds a \(wrong.written), not a \(wrong.expected)"), "\(wrong): \(get.stdout)")
        }
    }

    @Test func actorsFromFileAnswersEveryLineAndPreviewIsASuperset() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.send("SET", "flags:google:rollout_percent", "10")
        let ids = (0..<2000).map { "user-\($0)" }
        let path = cli.directory + "/actors.txt"
        try (ids.joined(separator: "\n") + "\n").write(toFile: path, atomically: true, encoding: .utf8)
        func onSet(_ extra: String...) async throws -> Set<String> {
            let result = try await runCommand(
                cli.binary, ["check", "google", "--actors-from", path] + extra, environment: ["REDIS_URL": cli.server.urlString])
            #expect(result.status == 0)
            let lines = result.stdout.split(separator: "\n")
            #expect(lines.count == ids.count)
            #expect(lines.map { String($0.split(separator: "\t")[0]) } == ids)
            return Set(lines.filter { $0.hasSuffix("\ttrue") }.map { String($0.split(separator: "\t")[0]) })
        }
        let atTen = try await onSet()
        let atFifty = try await onSet("--at", "50")
        #expect(atTen.isSubset(of: atFifty))
        #expect((150...250).contains(atTen.count), "\(atTen.count) of 2000 at 10%")
        #expect((900...1100).contains(atFifty.count))
        #expect(atTen.contains("user-0") == false)  // docs/bucketing.md: bucket 20814
    }

    @Test func actorsFromStdinFollowsALiveKillSwitch() async throws {
        let cli = try await CLI()
        let redis = cli.redis()
        defer { redis.close() }
        _ = try await redis.send("SET", "flags:google:rollout_percent", "100")
        let process = try PipedProcess(cli.binary, ["check", "google", "--actors-from", "-"], environment: ["REDIS_URL": cli.server.urlString])
        process.send("alice")
        #expect(await process.nextLine() == "alice\ttrue")
        #expect(await eventually { (try? await redis.send("PUBSUB", "NUMSUB", "__redis__:invalidate").array?.last?.integer) == 1 })
        _ = try await redis.send("SET", "flags:google:enabled", "false")
        var answer: String?
        let deadline = ContinuousClock.now.advanced(by: .seconds(5))
        repeat {
            process.send("alice")
            answer = await process.nextLine()
        } while answer == "alice\ttrue" && ContinuousClock.now < deadline
        #expect(answer == "alice\tfalse")
        process.closeInput()
        #expect(await process.process.exitStatus() == 0)
    }

    @Test func fiftyConcurrentProcessesAppendWithoutLosingOrInterleaving() async throws {
        let cli = try await CLI()
        let processes = try (0..<50).map { index in
            try ChildProcess(
                cli.binary, ["flags", "allow", "add", "google", "user-\(index)", "--reason", "batch \(index) " + String(repeating: "r", count: 200)],
                stdout: "/dev/null", stderr: nil,
                environment: ProcessInfo.processInfo.environment.merging(["REDIS_URL": cli.server.urlString, "ROLLOUT_AUDIT_LOG": cli.auditLogPath]) { $1 })
        }
        var statuses: [Int32] = []
        for process in processes { statuses.append(await process.exitStatus()) }
        #expect(statuses.allSatisfy { $0 == 0 })
        let text = try String(contentsOfFile: cli.auditLogPath, encoding: .utf8)
        #expect(text.components(separatedBy: "# Rollout audit log").count == 2, "one header")
        let lines = cli.auditLines()
        #expect(lines.count == 50)
        for index in 0..<50 {
            #expect(lines.filter { $0.contains("allow +user-\(index)  reason=batch \(index) r") }.count == 1)
        }
        #expect(lines.allSatisfy { $0.hasSuffix("  by=manual") })
    }

    @Test(arguments: [(["check", "--help"], "check-help.txt"), (["flags", "set-percent", "--help"], "set-percent-help.txt")])
    func helpTextMatchesItsGoldenFile(arguments: [String], golden: String) async throws {
        let result = try await runCommand(try rolloutBinary(), arguments)
        #expect(result.status == 0)
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Golden/\(golden)").path
        // Regenerate after an intended change: .build/debug/rollout ARGS > Tests/RolloutCLITests/Golden/FILE
        #expect(result.stdout == (try String(contentsOfFile: path, encoding: .utf8)))
    }
}
