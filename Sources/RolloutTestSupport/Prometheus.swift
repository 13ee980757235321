import Foundation
import Synchronization
public import Testing

extension Trait where Self == ConditionTrait {
    /// Runs the test when prometheus is installed; in CI (`CI=true`) always runs, so a missing
    /// server fails instead of skipping.
    public static var requiresPrometheus: Self {
        .enabled(
            if: isCI || (executablePath("prometheus") != nil && executablePath("redis-server") != nil),
            "prometheus or redis-server is not installed (scripts/test.sh installs them)")
    }
}

extension Tag {
    /// Tests that start a real Prometheus.
    @Tag public static var prometheus: Self
    /// End-to-end tests: real servers and the `rollout` binary.
    @Tag public static var e2e: Self
}

/// A `/metrics` endpoint the test controls: a tiny HTTP/1.1 server on a free loopback port,
/// serving whatever text ``set(_:)`` last gave it, in Prometheus's text format.
public final class MetricsEndpoint: Sendable {
    public let port: Int
    private let fd: Int32
    private let body = Mutex<String>("")
    private let stopped = Atomic<Bool>(false)

    public init() throws {
        (fd, port) = try listenOnLoopback()
        let thread = Thread { [self] in serve() }
        thread.start()
    }

    deinit {
        stopped.store(true, ordering: .relaxed)
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    /// Replaces the exposition text served from now on.
    public func set(_ text: String) {
        body.withLock { $0 = text }
    }

    private func serve() {
        while !stopped.load(ordering: .relaxed) {
            let client = acceptClosingOnExec(fd)
            if client < 0 {
                if stopped.load(ordering: .relaxed) { return }
                continue
            }
            var buffer = [UInt8](repeating: 0, count: 8192)
            _ = recv(client, &buffer, buffer.count, 0)
            let text = body.withLock { $0 }
            let payload = Array(text.utf8)
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: \(payload.count)\r\nConnection: close\r\n\r\n"
            let response = Array(head.utf8) + payload
            _ = response.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            close(client)
        }
    }
}

/// A real Prometheus on a free loopback port, scraping `targets` every second, with its own
/// data directory; stopped when released (and at process exit, whatever happens).
/// `pushgateways` are scraped as a second job with `honor_labels: true`, as a Pushgateway must be:
/// the pushed `job` and `instance` labels stay what the pusher set.
public final class PrometheusServer: @unchecked Sendable {
    // @unchecked: `process` is only replaced under `lock`; the rest is immutable.
    public let port: Int
    public let directory: String
    private let arguments: [String]
    private let lock = NSLock()
    private var process: ChildProcess?

    public init(scraping targets: [Int], pushgateways: [Int] = []) throws {
        guard executablePath("prometheus") != nil else {
            throw FixtureError("prometheus is not installed: run scripts/test.sh, or apt-get install prometheus")
        }
        let directory = try makeTemporaryDirectory("prometheus")
        self.directory = directory
        let config = """
            global:
              scrape_interval: 1s
              evaluation_interval: 1s
            scrape_configs:
              - job_name: test
                static_configs:
                  - targets: [\(targets.map { "'127.0.0.1:\($0)'" }.joined(separator: ", "))]

            """
            + (pushgateways.isEmpty
                ? ""
                : """
                  - job_name: pushgateway
                    honor_labels: true
                    static_configs:
                      - targets: [\(pushgateways.map { "'127.0.0.1:\($0)'" }.joined(separator: ", "))]

                """)
        try config.write(toFile: directory + "/prometheus.yml", atomically: true, encoding: .utf8)
        var attempt = 0
        while true {
            attempt += 1
            let port = try freeLoopbackPort()
            let arguments = [
                "--config.file=\(directory)/prometheus.yml", "--storage.tsdb.path=\(directory)/data",
                "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn",
            ]
            do {
                process = try Self.launch(arguments: arguments, port: port, log: directory + "/prometheus.log")
                self.port = port
                self.arguments = arguments
                return
            } catch let error as FixtureError where error.description.contains("address already in use") && attempt < 5 {
                continue
            }
        }
    }

    /// Released: stopped and its directory removed in the background (``stopInBackground(_:removing:)``).
    deinit { stopInBackground(lock.withLock { self.process }, removing: directory) }

    public var url: String { "http://127.0.0.1:\(port)" }

    private static func launch(arguments: [String], port: Int, log: String) throws -> ChildProcess {
        guard let binary = executablePath("prometheus") else { throw FixtureError("prometheus is not installed") }
        try? FileManager.default.removeItem(atPath: log)
        let process = try ChildProcess(binary, arguments, output: log)
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let (status, body) = try? httpGet(port: port, path: "/-/ready"), status == 200, body.contains("Prometheus") { return process }
            if process.hasExited() {
                throw FixtureError("prometheus exited at start: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
            }
            usleep(50_000)
        }
        process.terminate(SIGKILL)
        throw FixtureError("prometheus did not become ready on port \(port)")
    }

    /// Stops Prometheus (SIGTERM) and waits for it.
    public func stop() {
        let process = lock.withLock { () -> ChildProcess? in
            defer { self.process = nil }
            return self.process
        }
        process?.terminate(SIGTERM)
    }

    /// Starts it again on the same port and data.
    public func restart() throws {
        let process = try Self.launch(arguments: arguments, port: port, log: directory + "/prometheus.log")
        lock.withLock { self.process = process }
    }

    /// ``stop()`` from async code: waits for the exit off the cooperative pool.
    public func stopOffPool() async {
        _ = try? await offThePool { [self] in stop() }
    }

    /// ``restart()`` from async code: the wait until it is ready runs off the cooperative pool.
    public func restartOffPool() async throws {
        try await offThePool { [self] in try restart() }
    }

    /// Waits until `query` returns a sample (the first scrape of a new target lands after
    /// about 5.5 s: target discovery updates in 5 s batches).
    public func waitForData(_ query: String, timeout seconds: Double = 30) throws {
        let deadline = Date().addingTimeInterval(seconds)
        let encoded = query.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? query
        while Date() < deadline {
            if let (status, body) = try? httpGet(port: port, path: "/api/v1/query?query=\(encoded)"), status == 200,
                body.contains("\"value\"")
            {
                return
            }
            usleep(200_000)
        }
        throw FixtureError("no data for \(query) in Prometheus within \(seconds) s")
    }
}

/// A minimal blocking HTTP GET on loopback: the status and the body.
public func httpGet(port: Int, path: String) throws -> (Int, String) {
    try httpRequest(port: port, method: "GET", path: path)
}

/// A minimal blocking HTTP/1.1 request on loopback, without a body: the status and the body.
public func httpRequest(port: Int, method: String, path: String) throws -> (Int, String) {
    guard let fd = connectToLoopback(port: port) else { throw FixtureError("connection refused on port \(port)") }
    defer { close(fd) }
    let request = Array("\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".utf8)
    _ = request.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = recv(fd, &buffer, buffer.count, 0)
        if count <= 0 { break }
        response.append(contentsOf: buffer[0..<count])
    }
    let text = String(decoding: response, as: UTF8.self)
    let status = Int(text.split(separator: " ", maxSplits: 2).dropFirst().first ?? "") ?? 0
    let body = text.range(of: "\r\n\r\n").map { String(text[$0.upperBound...]) } ?? ""
    return (status, body)
}

/// A real Pushgateway on a free loopback port, with its own persistence file.
public final class PushgatewayServer: @unchecked Sendable {
    // @unchecked: `process` is immutable after init; ChildProcess guards its own state.
    public let port: Int
    public let directory: String
    private let process: ChildProcess

    public init() throws {
        guard let binary = executablePath("prometheus-pushgateway") else {
            throw FixtureError("prometheus-pushgateway is not installed: run scripts/test.sh, or apt-get install prometheus-pushgateway")
        }
        directory = try makeTemporaryDirectory("pushgateway")
        port = try freeLoopbackPort()
        process = try ChildProcess(
            binary, ["--web.listen-address=127.0.0.1:\(port)", "--persistence.file=\(directory)/metrics.store", "--log.level=warn"],
            output: directory + "/pushgateway.log")
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let (status, _) = try? httpGet(port: port, path: "/-/ready"), status == 200 { return }
            if process.hasExited() { throw FixtureError("prometheus-pushgateway exited at start") }
            usleep(50_000)
        }
        throw FixtureError("prometheus-pushgateway did not become ready on port \(port)")
    }

    deinit {
        process.terminate(SIGTERM)
        try? FileManager.default.removeItem(atPath: directory)
    }

    public var url: String { "http://127.0.0.1:\(port)" }

    /// The metrics it serves now, as exposition text.
    public func metrics() throws -> String { try httpGet(port: port, path: "/metrics").1 }
}

/// A TCP proxy on loopback that holds back the first answer of each connection for `delay`:
/// a Prometheus that answers slowly, so a test can act while a controller run is waiting.
public final class SlowProxy: Sendable {
    public let port: Int
    private let listener: Int32
    private let upstreamPort: Int
    private let delay: Duration
    private let requests = Atomic<Int>(0)

    /// How many requests reached the proxy: a test waits for one instead of sleeping.
    public var requestsSeen: Int { requests.load(ordering: .acquiring) }

    public init(to upstreamPort: Int, delay: Duration) throws {
        (listener, port) = try listenOnLoopback()
        self.upstreamPort = upstreamPort
        self.delay = delay
        Thread { [self] in acceptLoop() }.start()
    }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    public var url: String { "http://127.0.0.1:\(port)" }

    private func acceptLoop() {
        let delay = self.delay
        acceptProxied(listener, upstreamPort: upstreamPort) { client, upstream in
            Thread { [self] in Self.pump(from: client, to: upstream, delayFirst: nil) { requests.add(1, ordering: .releasing) } }.start()
            Thread { Self.pump(from: upstream, to: client, delayFirst: delay) {} }.start()
        }
    }

    private static func pump(from source: Int32, to destination: Int32, delayFirst: Duration?, onFirst: () -> Void) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        var first = true
        while true {
            let count = recv(source, &buffer, buffer.count, 0)
            if count <= 0 { break }
            if first { onFirst() }
            if first, let delayFirst {
                usleep(UInt32(delayFirst.components.seconds * 1_000_000 + delayFirst.components.attoseconds / 1_000_000_000_000))
            }
            first = false
            _ = buffer.withUnsafeBytes { send(destination, $0.baseAddress, count, Int32(MSG_NOSIGNAL)) }
        }
        shutdown(destination, Int32(SHUT_WR))
        shutdown(source, Int32(SHUT_RD))
    }
}

/// Accepts on `listener` until it is closed, connecting each client to `upstreamPort` and
/// handing both sockets to `start`.
private func acceptProxied(_ listener: Int32, upstreamPort: Int, _ start: (_ client: Int32, _ upstream: Int32) -> Void) {
    while true {
        let client = acceptClosingOnExec(listener)
        if client < 0 { return }
        guard let upstream = connectToLoopback(port: upstreamPort, receiveTimeoutSeconds: 0) else {
            close(client)
            continue
        }
        start(client, upstream)
    }
}

/// A TCP proxy to a local server that, the first time a client sends bytes containing
/// `trigger`, runs `action` (freezing the server, say) before it forwards them; everything else
/// passes through untouched.
public final class TriggeredProxy: Sendable {
    public let port: Int
    private let listener: Int32
    private let upstreamPort: Int
    private let trigger: [UInt8]
    private let action: @Sendable () -> Void
    private let fired = Atomic<Bool>(false)

    public init(to upstreamPort: Int, trigger: String, action: @escaping @Sendable () -> Void) throws {
        (listener, port) = try listenOnLoopback()
        self.upstreamPort = upstreamPort
        self.trigger = Array(trigger.utf8)
        self.action = action
        Thread { [self] in acceptLoop() }.start()
    }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    /// Whether the trigger was seen (and the action run).
    public var hasFired: Bool { fired.load(ordering: .acquiring) }

    private func acceptLoop() {
        acceptProxied(listener, upstreamPort: upstreamPort) { [self] client, upstream in
            Thread { [self] in pump(from: client, to: upstream, watching: true) }.start()
            Thread { [self] in pump(from: upstream, to: client, watching: false) }.start()
        }
    }

    private func pump(from source: Int32, to destination: Int32, watching: Bool) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(source, &buffer, buffer.count, 0)
            if count <= 0 { break }
            if watching, buffer[0..<count].firstRange(of: trigger) != nil,
                fired.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
            {
                action()
            }
            _ = buffer.withUnsafeBytes { send(destination, $0.baseAddress, count, Int32(MSG_NOSIGNAL)) }
        }
        shutdown(destination, Int32(SHUT_WR))
        shutdown(source, Int32(SHUT_RD))
    }
}

/// A TCP proxy to a local server that, the first time a client sends bytes containing
/// `trigger`, forwards them, lets the server act on them, then closes both connections without
/// relaying the reply: the client cannot know whether its command ran. Other connections, and
/// the ones after, pass through untouched.
public final class ReplyDroppingProxy: Sendable {
    public let port: Int
    private let listener: Int32
    private let upstreamPort: Int
    private let trigger: [UInt8]
    private let fired = Atomic<Bool>(false)

    public init(to upstreamPort: Int, trigger: String) throws {
        (listener, port) = try listenOnLoopback()
        self.upstreamPort = upstreamPort
        self.trigger = Array(trigger.utf8)
        Thread { [self] in acceptLoop() }.start()
    }

    deinit {
        shutdown(listener, Int32(SHUT_RDWR))
        close(listener)
    }

    /// Whether the trigger was seen (and its reply dropped).
    public var hasFired: Bool { fired.load(ordering: .acquiring) }

    private func acceptLoop() {
        acceptProxied(listener, upstreamPort: upstreamPort) { [self] client, upstream in
            let cut = ConnectionCut()
            Thread { [self] in pumpRequests(from: client, to: upstream, cut: cut) }.start()
            Thread { Self.pumpReplies(from: upstream, to: client, cut: cut) }.start()
        }
    }

    /// Set on the one connection whose reply is dropped.
    private final class ConnectionCut: Sendable {
        let value = Atomic<Bool>(false)
    }

    private func pumpRequests(from client: Int32, to upstream: Int32, cut: ConnectionCut) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(client, &buffer, buffer.count, 0)
            if count <= 0 { break }
            let chunk = buffer[0..<count]
            let triggers = chunk.firstRange(of: trigger) != nil && fired.compareExchange(expected: false, desired: true, ordering: .acquiringAndReleasing).exchanged
            // Mark the connection first: the reply pump drops the answer when it comes, which
            // is after the server ran the command, and only then hangs up on the client.
            if triggers { cut.value.store(true, ordering: .releasing) }
            _ = buffer.withUnsafeBytes { send(upstream, $0.baseAddress, count, Int32(MSG_NOSIGNAL)) }
            if triggers {
                usleep(300_000)
                shutdown(client, Int32(SHUT_RDWR))
                shutdown(upstream, Int32(SHUT_RDWR))
                break
            }
        }
        shutdown(upstream, Int32(SHUT_WR))
        shutdown(client, Int32(SHUT_RD))
    }

    private static func pumpReplies(from upstream: Int32, to client: Int32, cut: ConnectionCut) {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = recv(upstream, &buffer, buffer.count, 0)
            // Clients wait for each reply before the next request, so once the connection is
            // marked, what arrives is the dropped answer.
            if count <= 0 || cut.value.load(ordering: .acquiring) { break }
            _ = buffer.withUnsafeBytes { send(client, $0.baseAddress, count, Int32(MSG_NOSIGNAL)) }
        }
        shutdown(client, Int32(SHUT_WR))
    }
}
