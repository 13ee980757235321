import AsyncHTTPClient
import Foundation
import NIOHTTP1
import RolloutRedis
import RolloutTestSupport
import Testing

/// A problem answer's members, checked against RFC 9457's shape.
private func expectProblem(
    _ answer: Answer, _ status: Int, _ type: String, field: String? = nil, sourceLocation: SourceLocation = #_sourceLocation
) {
    #expect(answer.status == status, "\(answer.body)", sourceLocation: sourceLocation)
    #expect(answer.headers.first(name: "Content-Type") == "application/problem+json", sourceLocation: sourceLocation)
    let json = answer.json
    #expect(json["type"] as? String == "urn:rollout-gate:problem:" + type, "\(answer.body)", sourceLocation: sourceLocation)
    #expect(json["status"] as? Int == status, sourceLocation: sourceLocation)
    #expect((json["title"] as? String)?.isEmpty == false, sourceLocation: sourceLocation)
    #expect((json["detail"] as? String)?.isEmpty == false, sourceLocation: sourceLocation)
    #expect(json["field"] as? String == field, "\(answer.body)", sourceLocation: sourceLocation)
}

/// The audit stream's records, oldest first, as field dictionaries.
private func streamRecords(_ admin: RedisClient) async throws -> [[String: String]] {
    let reply = try await admin.send("XRANGE", "rollout:audit", "-", "+")
    return (reply.array ?? []).map { entry in
        let flat = entry.array?.last?.array?.compactMap(\.string) ?? []
        return Dictionary(stride(from: 0, to: flat.count - 1, by: 2).map { (flat[$0], flat[$0 + 1]) }) { $1 }
    }
}

/// Runs `rollout ARGUMENTS` against `server` with its audit log in `directory`, as an operator
/// would from a shell, and expects it to succeed.
private func rolloutSucceeds(
    _ arguments: [String], on server: RedisServer, directory: String, sourceLocation: SourceLocation = #_sourceLocation
) async throws {
    let environment = ["REDIS_URL": server.urlString, "ROLLOUT_AUDIT_LOG": directory + "/rollout_log.md"]
    let result = try await runCommand(try rolloutBinary(), arguments, environment: environment)
    #expect(result.status == 0, "\(result.stderr)", sourceLocation: sourceLocation)
}

@Suite("rollout serve: the operator API, against redis-server", .tags(.redis), .requiresRedis, .serialized)
struct OperatorAPITests {
    @Test func statusShowsEveryFeatureWithItsControllerMarksInvalidKeysAndLastChange() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        let directory = try makeTemporaryDirectory("serve-api")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A change made with the CLI: the last change the API shows.
        try await rolloutSucceeds(["flags", "set-percent", "checkout", "37.5", "--reason", "canary"], on: server, directory: directory)
        _ = try await admin.pipeline([
            RedisCommand("SET", "flags:checkout:bucketing", "v1"),
            RedisCommand("SET", "flags:frozen:rollout_percent", "20"), RedisCommand("SET", "flags:frozen:paused", "true"),
            RedisCommand("SET", "flags:frozen:paused_reason", "flap protection: 3 rollbacks within an hour"),
            RedisCommand("SET", "flags:frozen:guard", "rollback 2026-12-02T19:00:00.000Z after 40% -> 20%", "PX", "600000"),
            RedisCommand("SET", "flags:broken:rollout_percent", "fifty"), RedisCommand("SET", "flags:no-feature-here", "1"),
        ])
        let serve = try Serve(server, directory: directory)
        #expect(await ready(serve))

        let list = try await call(serve.base + "/v1/features", method: .GET)
        #expect(list.status == 200 && list.headers.first(name: "Content-Type") == "application/json", "\(list.body)")
        let features = try #require(list.json["features"] as? [[String: Any]])
        #expect(features.compactMap { $0["feature"] as? String } == ["broken", "checkout", "frozen"])
        #expect(list.json["stray_keys"] as? [String] == ["flags:no-feature-here"])
        let snapshot = try #require(list.json["snapshot"] as? [String: Any])
        #expect(snapshot["loaded"] as? Bool == true && snapshot["freshness"] as? String == "live" && snapshot["age_ms"] is Int)

        let checkout = features[1]
        #expect(checkout["valid"] as? Bool == true && checkout["exists"] as? Bool == true)
        #expect(checkout["rollout_percent"] as? Double == 37.5 && checkout["enabled"] as? Bool == true)
        #expect(checkout["paused"] as? Bool == false && checkout["frozen"] as? Bool == false && checkout["bucketing"] as? String == "v1")
        #expect(checkout["guard"] == nil && checkout["paused_reason"] == nil)
        #expect((checkout["invalid_keys"] as? [Any])?.isEmpty == true)
        let change = try #require(checkout["last_change"] as? [String: Any])
        #expect(change["from"] as? Double == 0 && change["to"] as? Double == 37.5, "\(change)")
        #expect(change["by"] as? String == "manual" && change["reason"] as? String == "canary" && change["change"] as? String == "0% -> 37.5%")
        #expect((change["time"] as? String)?.hasSuffix("+00:00") == true && (change["id"] as? String)?.contains("-") == true)

        let frozen = features[2]
        #expect(frozen["paused"] as? Bool == true && frozen["frozen"] as? Bool == true)
        #expect(frozen["paused_reason"] as? String == "flap protection: 3 rollbacks within an hour")
        let guardLock = try #require(frozen["guard"] as? [String: Any])
        #expect(guardLock["origin"] as? String == "rollback" && (guardLock["value"] as? String)?.hasPrefix("rollback ") == true)
        #expect((guardLock["remaining_ms"] as? Int).map { $0 > 0 && $0 <= 600_000 } == true)
        #expect(frozen["last_change"] == nil)

        let broken = features[0]
        #expect(broken["valid"] as? Bool == false && broken["exists"] as? Bool == true && broken["rollout_percent"] == nil)
        let problems = try #require(broken["invalid_keys"] as? [[String: Any]])
        #expect(problems.first?["key"] as? String == "flags:broken:rollout_percent" && problems.first?["message"] is String)

        // One feature: the same status, with the snapshot.
        let one = try await call(serve.base + "/v1/features/frozen", method: .GET)
        #expect(one.status == 200 && one.json["frozen"] as? Bool == true && one.json["snapshot"] is [String: Any], "\(one.body)")
        expectProblem(try await call(serve.base + "/v1/features/nothing-here", method: .GET), 404, "unknown-feature")
        expectProblem(try await call(serve.base + "/v1/features/Bad%20Name", method: .GET), 404, "unknown-feature")

        // Its audit records, newest first, bounded by limit.
        try await rolloutSucceeds(["flags", "pause", "checkout", "--reason", "look"], on: server, directory: directory)
        let audit = try await call(serve.base + "/v1/features/checkout/audit", method: .GET)
        let records = try #require(audit.json["records"] as? [[String: Any]], "\(audit.body)")
        #expect(records.compactMap { $0["change"] as? String } == ["paused", "0% -> 37.5%"])
        #expect(records.first?["from"] == nil && records.last?["to"] as? Double == 37.5 && audit.json["feature"] as? String == "checkout")
        let limited = try await call(serve.base + "/v1/features/checkout/audit?limit=1", method: .GET)
        #expect((limited.json["records"] as? [[String: Any]])?.compactMap { $0["change"] as? String } == ["paused"])
        for bad in ["0", "1001", "ten", "-1"] {
            expectProblem(try await call(serve.base + "/v1/features/checkout/audit?limit=\(bad)", method: .GET), 400, "invalid-parameter", field: "limit")
        }
        expectProblem(try await call(serve.base + "/v1/features/nothing-here/audit", method: .GET), 404, "unknown-feature")

        // Without a tokens file (loopback only) a change is by api:anonymous.
        let kill = try await call(serve.base + "/v1/features/checkout/kill", body: "{\"reason\": \"incident 42\"}")
        #expect(kill.status == 200 && kill.json["enabled"] as? Bool == false, "\(kill.body)")
        #expect(try await streamRecords(admin).last?["by"] == "api:anonymous")
    }

    @Test func theControllersLastVerdictIsShownAndAMalformedOneIsLeftOut() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        let directory = try makeTemporaryDirectory("serve-api")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try await admin.pipeline([
            RedisCommand("SET", "flags:held:rollout_percent", "10"),
            RedisCommand("SET", "flags:held:last_verdict", "hold 2026-12-04T21:00:00.000000+00:00 dwell"),
            RedisCommand("SET", "flags:rolled:rollout_percent", "10"),
            RedisCommand("SET", "flags:rolled:last_verdict", "rollback 2026-12-04T21:05:00.5Z error_rate"),
            RedisCommand("SET", "flags:garbled:rollout_percent", "10"), RedisCommand("SET", "flags:garbled:last_verdict", "maybe yesterday because"),
            RedisCommand("SET", "flags:untimed:rollout_percent", "10"), RedisCommand("SET", "flags:untimed:last_verdict", "hold soon dwell"),
            RedisCommand("SET", "flags:typed:rollout_percent", "10"), RedisCommand("HSET", "flags:typed:last_verdict", "hold", "dwell"),
            RedisCommand("SET", "flags:none:rollout_percent", "10"),
        ])
        let serve = try Serve(server, directory: directory)
        #expect(await ready(serve))
        let list = try await call(serve.base + "/v1/features", method: .GET)
        #expect(list.status == 200, "\(list.body)")
        let features = try #require(list.json["features"] as? [[String: Any]])
        var byName: [String: [String: Any]] = [:]
        for feature in features { if let name = feature["feature"] as? String { byName[name] = feature } }
        let held = try #require(byName["held"]?["last_verdict"] as? [String: String], "\(list.body)")
        #expect(held == ["result": "hold", "time": "2026-12-04T21:00:00.000000+00:00", "reason": "dwell"])
        let rolled = try #require(byName["rolled"]?["last_verdict"] as? [String: String])
        #expect(rolled["result"] == "rollback" && rolled["reason"] == "error_rate" && rolled["time"]?.hasPrefix("2026-12-04T21:05:00.5") == true)
        for name in ["garbled", "untimed", "typed", "none"] {
            #expect(byName[name] != nil && byName[name]?["last_verdict"] == nil, "\(name): \(list.body)")
            #expect(byName[name]?["valid"] as? Bool == true)
        }
        let one = try await call(serve.base + "/v1/features/held", method: .GET)
        #expect((one.json["last_verdict"] as? [String: String])?["reason"] == "dwell", "\(one.body)")
        let typed = try await call(serve.base + "/v1/features/typed", method: .GET)
        #expect(typed.status == 200 && typed.json["last_verdict"] == nil, "\(typed.body)")
    }

    @Test func actionsNeedOperateAndAreAuditedAsTheTokensName() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.pipeline([
            RedisCommand("SET", "flags:checkout:rollout_percent", "10"), RedisCommand("SET", "flags:checkout:paused", "true"),
            RedisCommand("SET", "flags:checkout:paused_reason", "flap protection"), RedisCommand("SADD", "flags:listy:rollout_percent", "10"),
        ])
        let directory = try makeTemporaryDirectory("serve-api")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/tokens"
        var tokens: [String: String] = [:]
        for (name, scopes) in [("oncall", "operate"), ("viewer", "read"), ("web", "evaluate")] {
            let added = try await runCommand(try rolloutBinary(), ["tokens", "add", name, "--scopes", scopes, "--tokens-file", file])
            tokens[name] = String(added.stdout.split(separator: "\n").last ?? "")
        }
        let serve = try Serve(server, directory: directory, arguments: ["--tokens-file", file])
        #expect(await ready(serve))
        func act(_ feature: String, _ action: String, _ body: String, as token: String? = "oncall") async throws -> Answer {
            try await call(
                serve.base + "/v1/features/\(feature)/\(action)", body: body, headers: token.map { [("Authorization", "Bearer \(tokens[$0] ?? "")")] } ?? [])
        }
        func get(_ path: String, as token: String) async throws -> Answer {
            try await call(serve.base + path, method: .GET, headers: [("X-API-Key", tokens[token] ?? "")])
        }

        // Scopes: read for the status, operate for the actions; 401 and 403 have no body.
        let anonymous = try await act("checkout", "pause", "{\"reason\": \"x\"}", as: nil)
        #expect(anonymous.status == 401 && anonymous.body.isEmpty)
        for token in ["viewer", "web"] {
            let refused = try await act("checkout", "pause", "{\"reason\": \"x\"}", as: token)
            #expect(refused.status == 403 && refused.body.isEmpty)
        }
        #expect(try await get("/v1/features", as: "viewer").status == 200)
        #expect(try await get("/v1/features", as: "oncall").status == 403)
        #expect(try await get("/v1/features/checkout/audit", as: "web").status == 403)

        // Resume clears the flap protection's reason; every action answers the new state.
        let resumed = try await act("checkout", "resume", "{\"reason\": \"looked at it\"}")
        #expect(resumed.status == 200 && resumed.json["paused"] as? Bool == false && resumed.json["frozen"] as? Bool == false, "\(resumed.body)")
        #expect(resumed.json["paused_reason"] == nil && resumed.json["snapshot"] is [String: Any])
        #expect(try await act("checkout", "pause", "{\"reason\": \"hold on\"}").json["paused"] as? Bool == true)
        #expect(try await act("checkout", "kill", "{\"reason\": \"incident\"}").json["enabled"] as? Bool == false)
        #expect(try await act("checkout", "unkill", "{\"reason\": \"fixed\"}").json["enabled"] as? Bool == true)
        let number = try await act("checkout", "set-percent", "{\"reason\": \"next step\", \"percent\": 12.5}")
        #expect(number.status == 200 && number.json["rollout_percent"] as? Double == 12.5 && number.json["last_percent"] as? Double == 10)
        let last = try #require(number.json["last_change"] as? [String: Any])
        #expect(last["from"] as? Double == 10 && last["to"] as? Double == 12.5 && last["by"] as? String == "api:oncall")
        #expect(try await act("checkout", "set-percent", "{\"percent\": \"0.125\", \"reason\": \"string\"}").json["rollout_percent"] as? Double == 0.125)

        // Recorded in the stream and in the Markdown log as api:oncall.
        let records = try await streamRecords(admin)
        #expect(records.map { $0["change"] ?? "" } == ["resumed", "paused", "kill switch on (disabled)", "kill switch off (enabled)", "10% -> 12.5%", "12.5% -> 0.125%"])
        #expect(records.allSatisfy { $0["by"] == "api:oncall" })
        #expect(records.first?["reason"] == "looked at it")
        let log = try String(contentsOfFile: serve.auditLog, encoding: .utf8)
        #expect(log.contains("checkout  10% -> 12.5%  reason=next step  by=api:oncall  id="), "\(log)")
        #expect(!log.contains(tokens["oncall"] ?? "-") && !serve.logText.contains(tokens["oncall"] ?? "-"))

        // The body's problems, each naming the member at fault.
        let reasonless = ["{}", "{\"reason\": \"\"}", "{\"reason\": \" \\n \"}", "{\"reason\": null}"]
        for body in reasonless { expectProblem(try await act("checkout", "pause", body), 400, "invalid-field", field: "reason") }
        expectProblem(try await act("checkout", "kill", "{\"reason\": 7}"), 400, "invalid-field", field: "reason")
        expectProblem(try await act("checkout", "pause", "{\"reason\": \"x\", \"reasn\": \"y\"}"), 400, "invalid-field", field: "reasn")
        expectProblem(try await act("checkout", "pause", "{\"reason\": \"x\", \"percent\": 5}"), 400, "invalid-field", field: "percent")
        expectProblem(try await act("checkout", "set-percent", "{\"reason\": \"x\"}"), 400, "invalid-field", field: "percent")
        for body in ["{\"reason\": ", "[]", "", "{\"reason\": \"x\",}", "{\"reason\": \"x\"} {}"] {
            expectProblem(try await act("checkout", "pause", body), 400, "malformed-body")
        }
        let huge = "{\"reason\": \"" + String(repeating: "x", count: 70_000) + "\"}"
        expectProblem(try await act("checkout", "pause", huge), 413, "body-too-large")
        expectProblem(try await act("nothing-here", "pause", "{\"reason\": \"x\"}"), 404, "unknown-feature")
        #expect(try await admin.send("EXISTS", "flags:nothing-here:paused") == .integer(0))
        // A key of the wrong type: the change refuses itself, nothing is written.
        expectProblem(try await act("listy", "set-percent", "{\"reason\": \"x\", \"percent\": 5}"), 409, "corrupt-state")
        #expect(try await streamRecords(admin).count == records.count)
        // A v1 feature takes whole percents only (the original Python gate reads them with int()).
        _ = try await admin.send("SET", "flags:checkout:bucketing", "v1")
        let fractional = try await act("checkout", "set-percent", "{\"reason\": \"x\", \"percent\": 37.5}")
        expectProblem(fractional, 400, "invalid-field")
        #expect((fractional.json["detail"] as? String)?.contains("int()") == true, "\(fractional.body)")
        #expect(try await admin.send("GET", "flags:checkout:rollout_percent").string == "0.125")
        #expect(try await act("checkout", "set-percent", "{\"reason\": \"x\", \"percent\": 25.0}").status == 200)
        #expect(try await admin.send("GET", "flags:checkout:rollout_percent").string == "25")
    }

    /// The percents `rollout flags set-percent` takes are the ones the API takes, and no other.
    @Test func setPercentTakesWhatTheCLITakes() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:checkout:rollout_percent", "0")
        let directory = try makeTemporaryDirectory("serve-api")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let serve = try Serve(server, directory: directory)
        #expect(await ready(serve))
        let environment = ["REDIS_URL": server.urlString, "ROLLOUT_AUDIT_LOG": serve.auditLog]
        // (the CLI's argument, the JSON value sent)
        let cases: [(String, String)] = [
            ("10", "10"), ("0.5", "0.5"), ("37.125", "37.125"), ("100", "100"), ("0", "0"), ("10.0", "10.0"),
            ("150", "150"), ("-1", "-1"), ("1e2", "1e2"), ("12.3456", "12.3456"), ("fifty", "\"fifty\""), ("10%", "\"10%\""),
            ("100.001", "100.001"), ("", "\"\""), ("7", "\"7\""),
        ]
        for (argument, json) in cases {
            let cli = try await runCommand(
                try rolloutBinary(), ["flags", "set-percent", "checkout", argument, "--reason", "cli"], environment: environment)
            let api = try await call(serve.base + "/v1/features/checkout/set-percent", body: "{\"reason\": \"api\", \"percent\": \(json)}")
            if cli.status == 0 {
                #expect(api.status == 200, "\(argument): \(api.body)")
                #expect(api.json["rollout_percent"] as? Double == Double(argument), "\(argument): \(api.body)")
            } else {
                #expect(cli.status == 2, "\(argument): \(cli.stderr)")
                expectProblem(api, 400, "invalid-field", field: "percent")
            }
        }
        for json in ["true", "[10]", "{}", "null"] {
            expectProblem(
                try await call(serve.base + "/v1/features/checkout/set-percent", body: "{\"reason\": \"api\", \"percent\": \(json)}"), 400,
                "invalid-field", field: "percent")
        }
    }

    @Test func redisUnreachableIs503() async throws {
        let directory = try makeTemporaryDirectory("serve-api")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let serve = try Serve(redisURL: "redis://127.0.0.1:\(try freeLoopbackPort())", directory: directory)
        #expect(await eventually(within: .seconds(60)) { (try? await call(serve.base + "/healthz", method: .GET))?.status == 200 })
        let answer = try await call(serve.base + "/v1/features", method: .GET)
        expectProblem(answer, 503, "redis-unavailable")
        expectProblem(try await call(serve.base + "/v1/features/checkout/pause", body: "{\"reason\": \"x\"}"), 503, "redis-unavailable")
    }

    @Test func theShippedControllerUserMayUseItAndTheGateUserGets503() async throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let server = try await RedisServer.start(arguments: ["--aclfile", root.appendingPathComponent("redis/users.acl").path])
        let controller = RedisClient(url: server.url(username: "controller", password: "controller-change-me"))
        defer { controller.close() }
        _ = try await controller.send("SET", "flags:checkout:rollout_percent", "10")
        let directory = try makeTemporaryDirectory("serve-api")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let serve = try Serve(redisURL: "redis://controller:controller-change-me@127.0.0.1:\(server.port)", directory: directory)
        #expect(await ready(serve))
        #expect(try await call(serve.base + "/v1/features", method: .GET).status == 200)
        let paused = try await call(serve.base + "/v1/features/checkout/pause", body: "{\"reason\": \"acl\"}")
        #expect(paused.status == 200 && paused.json["paused"] as? Bool == true && (paused.json["last_change"] as? [String: Any])?["change"] as? String == "paused")
        #expect(try await call(serve.base + "/v1/features/checkout/audit", method: .GET).status == 200)

        let readerDirectory = try makeTemporaryDirectory("serve-api-reader")
        defer { try? FileManager.default.removeItem(atPath: readerDirectory) }
        let reader = try Serve(redisURL: "redis://gate:gate-change-me@127.0.0.1:\(server.port)", directory: readerDirectory)
        #expect(await ready(reader))
        let refused = try await call(reader.base + "/v1/features", method: .GET)
        expectProblem(refused, 503, "redis-unavailable")
        #expect(refused.body.contains("NOPERM") && !refused.body.contains("gate-change-me"), "\(refused.body)")
        expectProblem(try await call(reader.base + "/v1/features/checkout/resume", body: "{\"reason\": \"x\"}"), 503, "redis-unavailable")
    }

    @Test func anAuditLogThatCannotBeWrittenFailsAtStart() async throws {
        let result = try await runCommand(
            try rolloutBinary(), ["serve", "--listen", "127.0.0.1:\(try freeLoopbackPort())", "--audit-log", "/nonexistent-folder/rollout_log.md"])
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains("/nonexistent-folder/rollout_log.md") && result.stderr.contains("ROLLOUT_AUDIT_LOG"))
    }

    @Test func theListFindsALastChangeBehindTensOfThousandsOfNewerRecords() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        let directory = try makeTemporaryDirectory("serve-api")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try await rolloutSucceeds(["flags", "set-percent", "quiet", "5", "--reason", "long ago"], on: server, directory: directory)
        // 25,000 newer records of another feature, shaped like the one the CLI wrote.
        let template = try #require(try await streamRecords(admin).first)
        let fields = template.merging(["feature": "busy"]) { $1 }.flatMap { [$0.key, $0.value] }
        _ = try await admin.send("SET", "flags:busy:rollout_percent", "5")
        for _ in 0..<25 {
            _ = try await admin.pipeline((0..<1_000).map { _ in RedisCommand("XADD", ["rollout:audit", "*"] + fields) })
        }
        let serve = try Serve(server, directory: directory)
        #expect(await ready(serve))
        let list = try await call(serve.base + "/v1/features", method: .GET)
        let features = try #require(list.json["features"] as? [[String: Any]], "\(list.body)")
        let quiet = try #require(features.first { $0["feature"] as? String == "quiet" })
        let change = try #require(quiet["last_change"] as? [String: Any], "\(quiet)")
        #expect(change["reason"] as? String == "long ago" && change["to"] as? Double == 5)
        #expect((features.first { $0["feature"] as? String == "busy" }?["last_change"] as? [String: Any]) != nil)
    }

    @Test func aChangeWhoseLogCannotBeWrittenAnswersItsNewStateWithAWarning() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:checkout:rollout_percent", "10")
        let directory = try makeTemporaryDirectory("serve-api")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // The log is as large as the server may make a file: its check before the change
        // passes, the append after it fails (EFBIG), as when the disk fills in between.
        try String(repeating: "x", count: 1024).write(toFile: directory + "/rollout_log.md", atomically: false, encoding: .utf8)
        let serve = try Serve(server, directory: directory, fileSizeLimitBlocks: 2)
        #expect(await ready(serve))
        let paused = try await call(serve.base + "/v1/features/checkout/pause", body: "{\"reason\": \"disk trouble\"}")
        #expect(paused.status == 200 && paused.json["paused"] as? Bool == true, "\(paused.status) \(paused.body)")
        let warning = try #require(paused.json["warning"] as? String, "\(paused.body)")
        #expect(warning.contains("recorded in Redis") && warning.contains("rollout audit sync"), "\(warning)")
        // Made and recorded: the stream holds it, for the log to catch up from.
        #expect(try await streamRecords(admin).last?["reason"] == "disk trouble")
        #expect(try await admin.send("GET", "flags:checkout:paused").string == "true")
    }

}
