import AsyncHTTPClient
import Foundation
import NIOCore
import NIOHTTP1
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Synchronization
import Testing

/// A `rollout serve` process on a free loopback port, reading `server`. ``ready(_:)`` waits for
/// it, and starts it again on another port if one was taken between choosing and binding it.
final class Serve: Sendable {
    private struct Running {
        var process: ChildProcess
        var port: Int
        var restarts = 0
    }
    private let running: Mutex<Running>
    private let start: @Sendable (Int) throws -> ChildProcess
    let log: String

    /// The audit log the server writes (`directory/rollout_log.md`, through ROLLOUT_AUDIT_LOG),
    /// unless a policy (`--config`) names its own.
    let auditLog: String

    convenience init(_ server: RedisServer, directory: String, arguments: [String] = [], fileSizeLimitBlocks: Int? = nil) throws {
        try self.init(redisURL: server.urlString, directory: directory, arguments: arguments, fileSizeLimitBlocks: fileSizeLimitBlocks)
    }

    /// `fileSizeLimitBlocks` runs the server under `ulimit -f` (blocks of 512 bytes): a write
    /// that would grow a file past it fails, as on a full disk.
    init(redisURL: String, directory: String, arguments: [String] = [], fileSizeLimitBlocks: Int? = nil) throws {
        let log = directory + "/serve.log"
        let binary = try rolloutBinary()
        auditLog = directory + "/rollout_log.md"
        var settings = ["REDIS_URL": redisURL, "ROLLOUT_LOG_LEVEL": "info"]
        // ROLLOUT_AUDIT_LOG overrides a policy's audit_log: with one, the policy's stands.
        if !arguments.contains("--config") { settings["ROLLOUT_AUDIT_LOG"] = auditLog }
        let environment = ProcessInfo.processInfo.environment.merging(settings) { $1 }
        start = { port in
            let command = ["serve", "--listen", "127.0.0.1:\(port)"] + arguments
            guard let blocks = fileSizeLimitBlocks else {
                return try ChildProcess(binary, command, output: log, environment: environment)
            }
            return try ChildProcess("/bin/sh", ["-c", "ulimit -f \(blocks) && exec \"$0\" \"$@\"", binary] + command, output: log, environment: environment)
        }
        self.log = log
        let port = try freeLoopbackPort()
        running = Mutex(Running(process: try start(port), port: port))
    }

    var process: ChildProcess { running.withLock { $0.process } }
    var port: Int { running.withLock { $0.port } }
    var base: String { "http://127.0.0.1:\(port)" }
    var logText: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }

    /// Starts the server again on a new port when it exited because its port was taken (at most
    /// three times); false when it exited for any other reason.
    fileprivate func restartIfPortWasTaken() throws -> Bool {
        try running.withLock { running in
            guard running.process.hasExited() else { return true }
            guard running.restarts < 3, logText.contains("in use") else { return false }
            running.port = try freeLoopbackPort()
            running.process = try start(running.port)
            running.restarts += 1
            return true
        }
    }
}
struct Answer {
    let status: Int
    let headers: HTTPHeaders
    let body: String
    var json: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] ?? [:] }
}

func call(_ url: String, method: HTTPMethod = .POST, body: String? = nil, headers: [(String, String)] = []) async throws -> Answer {
    var request = HTTPClientRequest(url: url)
    request.method = method
    for (name, value) in headers { request.headers.add(name: name, value: value) }
    if let body {
        request.headers.add(name: "Content-Type", value: "application/json")
        request.body = .bytes(ByteBuffer(string: body))
    }
    let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
    let bytes = try await response.body.collect(upTo: 16 << 20)
    return Answer(status: Int(response.status.code), headers: response.headers, body: String(buffer: bytes))
}

func context(_ key: String?, internal isInternal: Bool = false) -> String {
    let target = key.map { "\"targetingKey\": \"\($0)\", " } ?? ""
    return "{\"context\": {\(target)\"internal\": \(isInternal)}}"
}

/// Whether `serve` answers /readyz with 200 within a minute; when not, the failure records its
/// log.
func ready(_ serve: Serve) async -> Bool {
    let isReady = await eventually(within: .seconds(60)) {
        guard (try? serve.restartIfPortWasTaken()) == true else { return true }  // exited: stop waiting
        return (try? await call(serve.base + "/readyz", method: .GET))?.status == 200
    }
    if !isReady || serve.process.hasExited() {
        Issue.record("rollout serve did not become ready\(serve.process.hasExited() ? " (it exited)" : ""); its log:\n\(serve.logText)")
        return false
    }
    return true
}

@Suite("rollout serve: OFREP over the gate, against redis-server", .tags(.redis), .requiresRedis, .serialized)
struct ServeEndToEndTests {
    @Test func everyAnswerAgreesWithTheGateAndEveryErrorIsTheSpecs() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.pipeline([
            RedisCommand("SET", "flags:checkout:rollout_percent", "37.5"), RedisCommand("SADD", "flags:checkout:allow", "vip"),
            RedisCommand("SET", "flags:legacy:rollout_percent", "100"), RedisCommand("SET", "flags:broken:rollout_percent", "fifty"),
        ])
        let directory = try makeTemporaryDirectory("serve")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let serve = try Serve(server, directory: directory)
        #expect(await ready(serve), "\((try? String(contentsOfFile: serve.log, encoding: .utf8)) ?? "")")
        #expect(try await call(serve.base + "/healthz", method: .GET).status == 200)

        // The same answers as a gate in process, subject by subject.
        let gate = FeatureGate(redisURL: server.url(), features: ["checkout"])
        #expect(await gate.prepare(["checkout"]))
        var on = 0
        for index in 0..<200 {
            let id = "user-\(index)"
            let answer = try await call(serve.base + "/ofrep/v1/evaluate/flags/checkout", body: context(id))
            #expect(answer.status == 200)
            let expected = gate.decision("checkout", for: Subject(id: id))
            #expect(answer.json["value"] as? Bool == expected.isOn, "\(id): \(answer.body) vs \(expected)")
            #expect(answer.json["variant"] as? String == (expected.isOn ? "on" : "off"))
            #expect(answer.json["reason"] as? String == "SPLIT")
            if expected.isOn { on += 1 }
        }
        #expect(on > 40 && on < 110)  // about 37.5% of 200: the bucket rule, not a constant
        let vip = try await call(serve.base + "/ofrep/v1/evaluate/flags/checkout", body: context("vip"))
        #expect(vip.json["value"] as? Bool == true && vip.json["reason"] as? String == "TARGETING_MATCH")
        let legacy = try await call(serve.base + "/ofrep/v1/evaluate/flags/legacy", body: context(nil))
        #expect(legacy.status == 200 && legacy.json["value"] as? Bool == true && legacy.json["reason"] as? String == "STATIC")
        let broken = try await call(serve.base + "/ofrep/v1/evaluate/flags/broken", body: context("u1"))
        #expect(broken.status == 200 && broken.json["value"] as? Bool == false && broken.json["reason"] as? String == "UNKNOWN")

        // Errors, each with key and errorDetails.
        let missing = try await call(serve.base + "/ofrep/v1/evaluate/flags/nothing-here", body: context("u1"))
        #expect(missing.status == 404 && missing.json["errorCode"] as? String == "FLAG_NOT_FOUND" && missing.json["key"] as? String == "nothing-here")
        let noKey = try await call(serve.base + "/ofrep/v1/evaluate/flags/checkout", body: context(nil))
        #expect(noKey.status == 400 && noKey.json["errorCode"] as? String == "TARGETING_KEY_MISSING" && noKey.json["errorDetails"] is String)
        let parse = try await call(serve.base + "/ofrep/v1/evaluate/flags/checkout", body: "{\"context\":")
        #expect(parse.status == 400 && parse.json["errorCode"] as? String == "PARSE_ERROR" && parse.json["key"] as? String == "checkout")
        let wrongType = try await call(serve.base + "/ofrep/v1/evaluate/flags/checkout", body: "{\"context\": {\"targetingKey\": 7}}")
        #expect(wrongType.status == 400 && wrongType.json["errorCode"] as? String == "INVALID_CONTEXT")
        let huge = try await call(
            serve.base + "/ofrep/v1/evaluate/flags/checkout", body: "{\"context\": {\"targetingKey\": \"" + String(repeating: "x", count: 70_000) + "\"}}")
        #expect(huge.status == 413)

        // The kill switch answers without a targeting key: no bucket is needed.
        _ = try await admin.send("SET", "flags:checkout:enabled", "false")
        #expect(
            await eventually(within: .seconds(30)) {
                (try? await call(serve.base + "/ofrep/v1/evaluate/flags/checkout", body: context(nil)))?.json["reason"] as? String == "DISABLED"
            })
    }

    @Test func bulkHasAStrongETagThatChangesOnlyWithAnAnswer() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.pipeline([
            RedisCommand("SET", "flags:a:rollout_percent", "100"), RedisCommand("SET", "flags:b:rollout_percent", "0"),
        ])
        let directory = try makeTemporaryDirectory("serve")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let serve = try Serve(server, directory: directory)
        #expect(await ready(serve))
        let bulk = serve.base + "/ofrep/v1/evaluate/flags"
        let first = try await call(bulk, body: context("u1"))
        #expect(first.status == 200)
        let etag = try #require(first.headers.first(name: "ETag"))
        #expect(etag.hasPrefix("\"") && !etag.hasPrefix("W/"))
        let flags = try #require(first.json["flags"] as? [[String: Any]])
        #expect(flags.compactMap { $0["key"] as? String } == ["a", "b"])
        #expect(flags.map { $0["value"] as? Bool } == [true, false])
        // Same answers: same ETag, and If-None-Match is 304 without a body.
        #expect(try await call(bulk, body: context("u1")).headers.first(name: "ETag") == etag)
        let notModified = try await call(bulk, body: context("u1"), headers: [("If-None-Match", etag)])
        #expect(notModified.status == 304 && notModified.body.isEmpty)
        // A feature created with redis-cli after start is served without a restart...
        _ = try await admin.send("SET", "flags:b:paused", "true")  // changes no answer
        _ = try await admin.send("SET", "flags:brand-new:rollout_percent", "100")
        let single = serve.base + "/ofrep/v1/evaluate/flags/brand-new"
        #expect(await eventually(within: .seconds(30)) { (try? await call(single, body: context("u1")))?.json["value"] as? Bool == true })
        #expect(try await call(bulk, body: context("u1")).headers.first(name: "ETag") != etag)
        // ...and one whose keys are all deleted is gone again. Invalidations are handled in
        // order, so the paused change was seen before: it changed no answer, nor the ETag.
        _ = try await admin.send("DEL", "flags:brand-new:rollout_percent")
        #expect(await eventually(within: .seconds(30)) { (try? await call(single, body: context("u1")))?.status == 404 })
        #expect(try await call(bulk, body: context("u1"), headers: [("If-None-Match", etag)]).status == 304)
        // A change of an answer changes the ETag.
        _ = try await admin.send("SET", "flags:b:rollout_percent", "100")
        #expect(
            await eventually(within: .seconds(30)) {
                (try? await call(bulk, body: context("u1"), headers: [("If-None-Match", etag)]))?.status == 200
            })
        // A malformed context fails the whole bulk request.
        let bad = try await call(bulk, body: "[")
        #expect(bad.status == 400 && bad.json["errorCode"] as? String == "PARSE_ERROR")
    }

    @Test(.requiresOFREPClient) func openFeaturesPythonSDKAgreesWithRolloutCheckOnEverySubject() async throws {
        let python = try #require(ofrepPython(), "scripts/test.sh makes .build/python-ofrep")
        let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Clients/ofrep_client.py").path
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.pipeline([
            RedisCommand("SET", "flags:checkout:rollout_percent", "37.5"), RedisCommand("SADD", "flags:checkout:allow", "user-7"),
        ])
        let directory = try makeTemporaryDirectory("serve")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let serve = try Serve(server, directory: directory)
        #expect(await ready(serve))
        let ids = directory + "/ids.txt"
        try (0..<1000).map { "user-\($0)" }.joined(separator: "\n").appending("\n").write(toFile: ids, atomically: true, encoding: .utf8)
        func client(_ flag: String, _ file: String) async throws -> [[String]] {
            let run = try await runCommand(python, [script, serve.base, flag, file])
            #expect(run.status == 0, "\(run.stderr)")
            return run.stdout.split(separator: "\n").map { $0.split(separator: "\t", omittingEmptySubsequences: false).map(String.init) }
        }

        let sdk = try await client("checkout", ids)
        let check = try await runCommand(
            try rolloutBinary(), ["check", "checkout", "--actors-from", ids], environment: ["REDIS_URL": server.urlString])
        #expect(check.status == 0, "\(check.stderr)")
        let expected = check.stdout.split(separator: "\n").map(String.init)
        #expect(sdk.count == 1000 && expected.count == 1000)
        #expect(sdk.map { "\($0[0])\t\($0[1])" } == expected)
        #expect(sdk.allSatisfy { $0[3] == "-" })
        #expect(Set(sdk.map { $0[2] }) == ["SPLIT", "TARGETING_MATCH"])
        #expect(sdk.first { $0[0] == "user-7" }?[1] == "true")

        // Errors the SDK understands: an unknown flag, and no targeting key where the bucket needs one.
        let one = directory + "/one.txt"
        try "user-1\n\n".write(toFile: one, atomically: true, encoding: .utf8)
        let unknown = try await client("nothing-here", one)
        #expect(unknown.first?[1] == "false" && unknown.first?[3] == "FLAG_NOT_FOUND")
        let anonymous = try await client("checkout", one)
        #expect(anonymous.last?[3] == "TARGETING_KEY_MISSING")

        // The kill switch reaches the SDK: off, DISABLED, not an error.
        _ = try await admin.send("SET", "flags:checkout:enabled", "false")
        #expect(await eventually(within: .seconds(30)) { (try? await client("checkout", one))?.first?[2] == "DISABLED" })
        let killed = try await client("checkout", one)
        #expect(killed.first?[1] == "false" && killed.first?[3] == "-")
    }

    @Test func sigtermFinishesAndExitsZero() async throws {
        let server = try await RedisServer.start()
        let directory = try makeTemporaryDirectory("serve")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let serve = try Serve(server, directory: directory)
        #expect(await ready(serve))
        await serve.process.terminateOffPool(SIGTERM)
        #expect(await serve.process.exitStatus() == 0, "\((try? String(contentsOfFile: serve.log, encoding: .utf8)) ?? "")")
    }

    @Test func aRequestInFlightAtSigtermIsAnsweredBeforeTheExit() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:checkout:rollout_percent", "100")
        let directory = try makeTemporaryDirectory("serve")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let serve = try Serve(server, directory: directory)
        #expect(await ready(serve))
        // Headers and half the body, then SIGTERM: the request is in flight.
        let body = context("u1")
        let half = body.utf8.count / 2
        guard let fd = connectToLoopback(port: serve.port, receiveTimeoutSeconds: 30) else {
            Issue.record("cannot connect to rollout serve")
            return
        }
        defer { close(fd) }
        sendAll(fd, "POST /ofrep/v1/evaluate/flags/checkout HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n" + String(body.prefix(half)))
        // The server has the request once its handler runs: the active-requests gauge says so.
        #expect(await eventually(within: .seconds(30)) {
            (try? await call(serve.base + "/metrics", method: .GET))?.body.contains("rollout_serve_active_requests{method=\"POST\"} 1.0") == true
        })
        kill(serve.process.pid, SIGTERM)
        // Shutdown has begun once a new connection is refused; the one in flight still stands.
        #expect(await eventually(within: .seconds(30)) {
            guard let probe = connectToLoopback(port: serve.port) else { return true }
            close(probe)
            return false
        })
        #expect(!serve.process.hasExited())
        sendAll(fd, String(body.dropFirst(half)))
        let answer = try await offThePool { readUntilClosed(fd) }
        #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
        #expect(answer.contains("\"value\":true"), "\(answer)")
        #expect(await serve.process.exitStatus() == 0, "\(serve.logText)")
    }

    @Test func connectionsHeadersAndIdlenessAreBoundedFromOutside() async throws {
        let server = try await RedisServer.start()
        let directory = try makeTemporaryDirectory("serve")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let serve = try Serve(server, directory: directory, arguments: ["--idle-timeout", "1s"])
        #expect(await ready(serve))
        let health = "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        func connected(to serve: Serve = serve) throws -> Int32 {
            try #require(connectToLoopback(port: serve.port, receiveTimeoutSeconds: 30))
        }

        // Headers beyond the parser's limit (80 KiB) end the connection without an answer
        // from a handler; the server goes on.
        let big = try connected()
        sendAll(big, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + String(repeating: "a", count: 100 * 1024) + "\r\n\r\n")
        let refused = try await offThePool { read(big, until: { _ in false }) }
        close(big)
        #expect(refused.closed && !refused.text.contains(" 200 "), "\(refused.text.prefix(200))")
        #expect(try await call(serve.base + "/healthz", method: .GET).status == 200)

        // An idle connection is closed after --idle-timeout.
        let idle = try connected()
        defer { close(idle) }
        sendAll(idle, health)
        let first = try await offThePool { read(idle, until: isWholeResponse) }
        #expect(first.text.hasPrefix("HTTP/1.1 200"), "\(first.text)")
        let after = try await offThePool { read(idle, until: { _ in false }) }
        #expect(after.closed, "the idle connection was not closed within 30 s")

        // At most --max-connections at once: with two open, a third waits to be accepted, and
        // is answered once one of the two closes (idle connections stay open for 60 s here).
        let bounded = try Serve(server, directory: directory, arguments: ["--max-connections", "2"])
        // Ready when a request on a connection of its own is answered (the shared HTTP client
        // would keep a connection open in its pool, taking one of the two).
        #expect(await eventually(within: .seconds(60)) {
            (try? await offThePool { () -> Bool in
                guard let probe = connectToLoopback(port: bounded.port) else { return false }
                defer { close(probe) }
                sendAll(probe, "GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                return readUntilClosed(probe).hasPrefix("HTTP/1.1 200")
            }) == true
        })
        let one = try connected(to: bounded)
        let two = try connected(to: bounded)
        defer { close(two) }
        for fd in [one, two] {
            sendAll(fd, health)
            #expect(try await offThePool { read(fd, until: isWholeResponse) }.text.hasPrefix("HTTP/1.1 200"))
        }
        guard let third = connectToLoopback(port: bounded.port, receiveTimeoutSeconds: 30) else {
            Issue.record("the kernel refused the third connection: it should wait in the backlog")
            close(one)
            return
        }
        defer { close(third) }
        sendAll(third, health)
        // The third waits in the kernel's accept queue: the server has not taken it. Asked
        // again after the server answered a later request on another connection, it still waits.
        #expect(await eventually(within: .seconds(30)) { acceptQueueLength(port: bounded.port) == 1 })
        sendAll(two, health)
        #expect(try await offThePool { read(two, until: isWholeResponse) }.text.hasPrefix("HTTP/1.1 200"))
        #expect(acceptQueueLength(port: bounded.port) == 1)
        var pending = [UInt8](repeating: 0, count: 1)
        #expect(recv(third, &pending, 1, Int32(MSG_DONTWAIT)) < 0 && errno == EAGAIN, "the third was answered while two were open")
        close(one)
        let answered = try await offThePool { read(third, until: isWholeResponse) }
        #expect(answered.text.hasPrefix("HTTP/1.1 200"), "\(answered.text)")
    }

    @Test func metricsCountEveryRouteByStatusAndShowTheGate() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:checkout:rollout_percent", "100")
        let directory = try makeTemporaryDirectory("serve")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let serve = try Serve(server, directory: directory)
        #expect(await ready(serve))
        for _ in 0..<3 { #expect(try await call(serve.base + "/ofrep/v1/evaluate/flags/checkout", body: context("u1")).status == 200) }
        #expect(try await call(serve.base + "/ofrep/v1/evaluate/flags/missing", body: context("u1")).status == 404)
        #expect(try await call(serve.base + "/no/such/route", method: .GET).status == 404)
        let metrics = try await call(serve.base + "/metrics", method: .GET)
        #expect(metrics.status == 200)
        #expect(metrics.headers["Content-Type"].first?.hasPrefix("text/plain; version=0.0.4") == true)
        let lines = metrics.body.split(separator: "\n").map(String.init)
        let route = "route=\"/ofrep/v1/evaluate/flags/{key}\",method=\"POST\""
        #expect(lines.contains("rollout_serve_requests_total{\(route),status=\"200\"} 3"), "\(metrics.body)")
        #expect(lines.contains("rollout_serve_requests_total{\(route),status=\"404\"} 1"), "\(metrics.body)")
        #expect(lines.contains("rollout_serve_request_duration_seconds_count{\(route),status=\"200\"} 3"), "\(metrics.body)")
        #expect(lines.contains { $0.hasPrefix("rollout_serve_request_duration_seconds_bucket{\(route),status=\"200\",le=\"0.001\"}") })
        // An unknown path is one series, never one per path asked for.
        #expect(!metrics.body.contains("/no/such/route"))
        // The gate's own metrics go to the same registry.
        #expect(lines.contains { $0.hasPrefix("rollout_gate_snapshot_age_seconds ") })
        #expect(lines.contains("rollout_gate_redis_errors_total 0"))
    }

    @Test func anAddressBeyondLoopbackIsRefused() async throws {
        let result = try await runCommand(try rolloutBinary(), ["serve", "--listen", "0.0.0.0:8016"])
        #expect(result.status == 2)
        #expect(result.stderr.contains("loopback only"))
    }
}

/// An open event stream: what it has sent so far.
final class EventStreamReader: Sendable {
    private final class Received: Sendable {
        let text = Mutex("")
    }
    private let received = Received()
    private let task: Task<Void, Never>
    let status: Int

    init(url: String, headers: [(String, String)] = []) async throws {
        var request = HTTPClientRequest(url: url)
        for (name, value) in headers { request.headers.add(name: name, value: value) }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(3600))
        status = Int(response.status.code)
        let received = received
        task = Task {
            do {
                for try await chunk in response.body { received.text.withLock { $0 += String(buffer: chunk) } }
            } catch {}
        }
    }

    var text: String { received.text.withLock { $0 } }
    func close() { task.cancel() }
}

/// A redis-server with checkout at 10%, a client for it, and a folder for the server's files.
private func checkoutAtTen() async throws -> (RedisServer, RedisClient, String) {
    let server = try await RedisServer.start()
    let admin = RedisClient(url: server.url())
    _ = try await admin.send("SET", "flags:checkout:rollout_percent", "10")
    return (server, admin, try makeTemporaryDirectory("serve-events"))
}

@Suite("rollout serve: change events (OFREP ADR-0008)", .tags(.redis), .requiresRedis, .serialized)
struct ServeEventsTests {
    @Test func aChangeMadeWithRedisCliIsAnnouncedAndShutdownEndsTheStream() async throws {
        let (server, admin, directory) = try await checkoutAtTen()
        defer {
            admin.close()
            try? FileManager.default.removeItem(atPath: directory)
        }
        let serve = try Serve(server, directory: directory)
        #expect(await ready(serve))
        // The bulk answer says where to listen.
        let bulk = try await call(serve.base + "/ofrep/v1/evaluate/flags", body: context("u1"))
        let streams = try #require(bulk.json["eventStreams"] as? [[String: Any]])
        #expect(streams.first?["type"] as? String == "sse")
        let uri = try #require((streams.first?["endpoint"] as? [String: Any])?["requestUri"] as? String)
        #expect(uri == "/ofrep/v1/events")

        let stream = try await EventStreamReader(url: serve.base + uri)
        defer { stream.close() }
        #expect(stream.status == 200)
        #expect(await eventually(within: .seconds(30)) { stream.text.hasPrefix(": rollout serve change events") })
        #expect(!stream.text.contains("refetchEvaluation"))
        _ = try await admin.send("SET", "flags:checkout:rollout_percent", "50")
        #expect(await eventually(within: .seconds(30)) { stream.text.contains("data: {\"type\":\"refetchEvaluation\"}\n\n") })

        // SIGTERM with a stream open: the stream ends and the server exits 0, without waiting out the drain.
        await serve.process.terminateOffPool(SIGTERM)
        #expect(await serve.process.exitStatus() == 0, "\((try? String(contentsOfFile: serve.log, encoding: .utf8)) ?? "")")
    }

    @Test func eventStreamsAreKeptAliveAndBounded() async throws {
        let (server, admin, directory) = try await checkoutAtTen()
        defer {
            admin.close()
            try? FileManager.default.removeItem(atPath: directory)
        }
        let serve = try Serve(server, directory: directory, arguments: ["--max-event-streams", "2", "--event-keep-alive", "1s"])
        #expect(await ready(serve))
        let first = try await EventStreamReader(url: serve.base + "/ofrep/v1/events")
        defer { first.close() }
        let second = try await EventStreamReader(url: serve.base + "/ofrep/v1/events")
        defer { second.close() }
        #expect(first.status == 200 && second.status == 200)
        // A third is refused while two are open.
        let third = try await EventStreamReader(url: serve.base + "/ofrep/v1/events")
        third.close()
        #expect(third.status == 503)
        // An idle stream gets keep-alive comments.
        #expect(await eventually(within: .seconds(30)) { first.text.contains(": keep-alive\n\n") }, "\(first.text)")
        // A stream closed by its client frees its place (the server finds out at its next write).
        second.close()
        #expect(await eventually(within: .seconds(30)) {
            guard let again = try? await EventStreamReader(url: serve.base + "/ofrep/v1/events") else { return false }
            again.close()
            return again.status == 200
        })
    }

    @Test func withTokensTheAdvertisedURLCarriesItsOwnCredential() async throws {
        let (server, admin, directory) = try await checkoutAtTen()
        defer {
            admin.close()
            try? FileManager.default.removeItem(atPath: directory)
        }
        let file = directory + "/tokens"
        let added = try await runCommand(try rolloutBinary(), ["tokens", "add", "web", "--scopes", "evaluate", "--tokens-file", file])
        let token = String(added.stdout.split(separator: "\n").last ?? "")
        let serve = try Serve(server, directory: directory, arguments: ["--tokens-file", file])
        #expect(await ready(serve))
        let bulk = try await call(serve.base + "/ofrep/v1/evaluate/flags", body: context("u1"), headers: [("Authorization", "Bearer \(token)")])
        let streams = try #require(bulk.json["eventStreams"] as? [[String: Any]])
        let uri = try #require((streams.first?["endpoint"] as? [String: Any])?["requestUri"] as? String)
        #expect(uri.hasPrefix("/ofrep/v1/events?credential=") && !uri.contains(token))
        // The URL alone opens the stream, as a browser's EventSource would.
        let stream = try await EventStreamReader(url: serve.base + uri)
        defer { stream.close() }
        #expect(stream.status == 200)
        // Without it, or with it altered: 401. A header token works too.
        #expect(try await call(serve.base + "/ofrep/v1/events", method: .GET).status == 401)
        #expect(try await call(serve.base + String(uri.dropLast()) + (uri.hasSuffix("0") ? "1" : "0"), method: .GET).status == 401)
        let byHeader = try await EventStreamReader(url: serve.base + "/ofrep/v1/events", headers: [("X-API-Key", token)])
        defer { byHeader.close() }
        #expect(byHeader.status == 200)
        // The URL is a secret: the server never writes it to its log.
        let credential = String(uri.split(separator: "=").last ?? "")
        #expect(!((try? String(contentsOfFile: serve.log, encoding: .utf8)) ?? "").contains(credential))
    }
}

/// Writes all of `text` to `fd` (a short blocking write on loopback).
func sendAll(_ fd: Int32, _ text: String) {
    let bytes = Array(text.utf8)
    var sent = 0
    while sent < bytes.count {
        let count = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if count <= 0 { return }
        sent += count
    }
}

/// What `fd` receives until the peer closes it (or its receive timeout passes). Blocking: call it
/// off the cooperative pool.
func readUntilClosed(_ fd: Int32) -> String {
    read(fd, until: { _ in false }).text
}

/// What `fd` receives until `isComplete` says so, the peer closes it (`closed`), or its receive
/// timeout passes or the connection fails (neither). Blocking: call it off the cooperative pool.
func read(_ fd: Int32, until isComplete: ([UInt8]) -> Bool) -> (text: String, closed: Bool) {
    var received = [UInt8]()
    var chunk = [UInt8](repeating: 0, count: 4096)
    var closed = false
    while !isComplete(received) {
        let count = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count == 0 { closed = true }
        if count <= 0 { break }
        received += chunk[0..<count]
    }
    return (String(decoding: received, as: UTF8.self), closed)
}

/// How many connections wait in the kernel's accept queue of the socket listening on
/// 127.0.0.1:`port` (the `rx_queue` of its LISTEN line in /proc/net/tcp); nil when none listens.
func acceptQueueLength(port: Int) -> Int? {
    // Read to the end: a /proc file says its size is 0, so a read sized by stat stops early.
    guard let data = FileHandle(forReadingAtPath: "/proc/net/tcp").flatMap({ try? $0.readToEnd() }) else { return nil }
    let table = String(decoding: data, as: UTF8.self)
    let local = "0100007F:" + String(format: "%04X", port)
    for line in table.split(separator: "\n").dropFirst() {
        let fields = line.split(separator: " ")
        guard fields.count > 4, fields[1] == local, fields[3] == "0A" else { continue }
        return fields[4].split(separator: ":").last.flatMap { Int($0, radix: 16) }
    }
    return nil
}

/// Whether `bytes` hold one whole HTTP/1.1 response with a Content-Length body.
func isWholeResponse(_ bytes: [UInt8]) -> Bool {
    let text = String(decoding: bytes, as: UTF8.self)
    guard let end = text.range(of: "\r\n\r\n") else { return false }
    let head = text[..<end.lowerBound].lowercased()
    guard let line = head.split(separator: "\r\n").first(where: { $0.hasPrefix("content-length:") }),
        let length = Int(line.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces))
    else { return true }
    return text[end.upperBound...].utf8.count >= length
}
