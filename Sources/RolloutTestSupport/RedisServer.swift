import Foundation
public import RolloutRedis
import Synchronization
public import Testing

/// Whether the test run is CI's (`CI=true`): there a missing server fails the run instead of
/// skipping the tests that need it.
public let isCI: Bool = ProcessInfo.processInfo.environment["CI"].map { ["true", "1", "yes"].contains($0.lowercased()) } ?? false

/// The path of an executable on PATH, or nil.
public func executablePath(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
    for directory in path.split(separator: ":") {
        let candidate = "\(directory)/\(name)"
        if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
    }
    return nil
}

extension Trait where Self == ConditionTrait {
    /// Runs the test when redis-server is installed; in CI (`CI=true`) always runs, so a
    /// missing server fails instead of skipping.
    public static var requiresRedis: Self {
        .enabled(if: isCI || executablePath("redis-server") != nil, "redis-server is not installed (scripts/test.sh installs it)")
    }
}

extension Tag {
    /// Tests that start a real redis-server.
    @Tag public static var redis: Self
    /// Tests that run the `rollout` binary.
    @Tag public static var cli: Self
}

/// A failure of a fixture, saying what to install or look at.
public struct FixtureError: Error, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

private let handedOutPorts = Mutex<Set<Int>>([])

/// A free TCP port on 127.0.0.1 for a fixture server. Picked at random below Linux's ephemeral
/// range (32768 and up, where the tests' own outgoing connections get their ports), never the
/// same twice in one test process, and checked bindable: servers started in parallel do not
/// race for one port.
public func freeLoopbackPort() throws -> Int {
    for _ in 0..<200 {
        let port = Int.random(in: 10_000..<32_000)
        let isNew = handedOutPorts.withLock { $0.insert(port).inserted }
        if isNew && canBind(port) { return port }
    }
    throw FixtureError("no free loopback port found")
}

/// A new TCP socket, closed on exec: no child process another test spawns holds it open.
private func loopbackSocket() -> Int32 {
    socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
}

/// A listening TCP socket on 127.0.0.1 with a port the kernel chose.
func listenOnLoopback(backlog: Int32 = 64) throws -> (fd: Int32, port: Int) {
    let fd = loopbackSocket()
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { generic in
            bind(fd, generic, length) == 0 && getsockname(fd, generic, &length) == 0 && listen(fd, backlog) == 0
        }
    }
    guard fd >= 0, ok else {
        close(fd)
        throw FixtureError("cannot listen on loopback")
    }
    return (fd, Int(UInt16(bigEndian: address.sin_port)))
}

/// `accept(2)`, with the new descriptor closed on exec: a child another test spawns does not
/// keep the connection open after the fixture closed it.
func acceptClosingOnExec(_ listener: Int32) -> Int32 {
    let client = accept(listener, nil, nil)
    if client >= 0 { _ = fcntl(client, F_SETFD, FD_CLOEXEC) }
    return client
}

/// A TCP connection to 127.0.0.1:`port` with a receive timeout, or nil when refused.
public func connectToLoopback(port: Int, receiveTimeoutSeconds: Int = 5) -> Int32? {
    let fd = loopbackSocket()
    var timeout = timeval(tv_sec: receiveTimeoutSeconds, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
    if connected { return fd }
    close(fd)
    return nil
}

private func canBind(_ port: Int) -> Bool {
    let fd = loopbackSocket()
    guard fd >= 0 else { return false }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = in_port_t(UInt16(port).bigEndian)
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    return withUnsafePointer(to: &address) { pointer in
        pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
    }
}

/// A fresh temporary directory, removed by the caller.
public func makeTemporaryDirectory(_ label: String) throws -> String {
    let path = temporaryRoot + "/\(label)-\(UUID().uuidString.prefix(8))"
    try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    return path
}

/// Every test directory of this process lives under one root, removed when the process exits
/// (after the fixtures' servers are stopped), so test runs leave nothing in the temp directory.
private let temporaryRoot: String = {
    let root = temporaryRootPath()
    try? FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
    atexit { try? FileManager.default.removeItem(atPath: temporaryRootPath()) }
    return root
}()

private func temporaryRootPath() -> String { NSTemporaryDirectory() + "rollout-gate-tests-\(getpid())" }

/// A real redis-server on a free loopback port (and a Unix socket), started for one test and
/// stopped by ``stop()`` or when released.
public final class RedisServer: @unchecked Sendable {
    // @unchecked: `process` is only replaced under `lock`; the rest is immutable.
    public let port: Int
    public let directory: String
    public let unixSocketPath: String
    public let tlsPort: Int?
    public let certificates: TestCertificates?
    private let arguments: [String]
    private let lock = NSLock()
    private var process: ChildProcess?

    /// Starts redis-server with extra `arguments` (e.g. `["--requirepass", "s3cret"]`);
    /// `tls: true` adds a TLS port with certificates made by openssl for this server, or with
    /// `certificates` when given (one CA shared by several servers).
    /// Starts a server off the cooperative pool: starting one blocks until it answers PING,
    /// and a test suite starting many at once on the pool (two threads on a 2-core machine)
    /// would starve every other test's timers and network I/O.
    public static func start(
        arguments: [String] = [], tls: Bool = false, configFile: String? = nil, tlsHostNames: String = "DNS:localhost,IP:127.0.0.1",
        certificates: TestCertificates? = nil
    ) async throws -> RedisServer {
        try await offThePool {
            try RedisServer(arguments: arguments, tls: tls, configFile: configFile, tlsHostNames: tlsHostNames, certificates: certificates)
        }
    }

    public init(
        arguments: [String] = [], tls: Bool = false, configFile: String? = nil, tlsHostNames: String = "DNS:localhost,IP:127.0.0.1",
        certificates: TestCertificates? = nil
    ) throws {
        guard let binary = executablePath("redis-server") else {
            throw FixtureError("redis-server is not installed: run scripts/test.sh, or apt-get install redis-server")
        }
        let directory = try makeTemporaryDirectory("redis")
        self.directory = directory
        unixSocketPath = directory + "/redis.sock"
        let certificates = tls ? try certificates ?? TestCertificates(directory: directory, subjectAltName: tlsHostNames) : nil
        self.certificates = certificates
        // Another process may take a port between the check and redis-server's bind: retry
        // with new ports when redis-server says so.
        var attempt = 0
        while true {
            attempt += 1
            let port = try freeLoopbackPort()
            var tlsArguments: [String] = []
            var tlsPort: Int?
            if let certificates {
                let chosen = try freeLoopbackPort()
                tlsPort = chosen
                tlsArguments = [
                    "--tls-port", String(chosen), "--tls-cert-file", certificates.serverCertificate,
                    "--tls-key-file", certificates.serverKey, "--tls-ca-cert-file", certificates.caCertificate,
                    "--tls-auth-clients", "optional",
                ]
            }
            let all = (configFile.map { [$0] } ?? []) + [
                "--port", String(port), "--bind", "127.0.0.1", "--unixsocket", unixSocketPath, "--unixsocketperm", "700",
                "--save", "", "--appendonly", "no", "--dir", directory, "--daemonize", "no", "--loglevel", "warning",
            ] + tlsArguments + arguments
            do {
                let process = try Self.launch(binary: binary, arguments: all, port: port, log: directory + "/redis.log")
                self.port = port
                self.tlsPort = tlsPort
                self.arguments = all
                self.process = process
                return
            } catch let error as FixtureError where error.description.contains("Address already in use") && attempt < 5 {
                continue
            }
        }
    }

    /// A redis-server in cluster mode, one node and no slots assigned: it answers HELLO with
    /// `mode cluster` and every key command with CLUSTERDOWN. Its nodes.conf lives in its own
    /// directory (`--dir`).
    public static func startClusterNode(arguments: [String] = []) async throws -> RedisServer {
        try await start(arguments: clusterNodeArguments + arguments)
    }

    /// The arguments that make a server a cluster node (for fixtures that take arguments).
    public static let clusterNodeArguments = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]

    /// Released: stopped and its directory removed in the background (``stopInBackground(_:removing:)``).
    deinit { stopInBackground(lock.withLock { self.process }, removing: directory) }

    /// Starts redis-server and waits until it answers PING on `port`.
    private static func launch(binary: String, arguments: [String], port: Int, log: String) throws -> ChildProcess {
        try? FileManager.default.removeItem(atPath: log)
        let process = try ChildProcess(binary, arguments, output: log)
        let deadline = Date().addingTimeInterval(10)
        while Date() < deadline {
            // PING, not a bare connect: a connect could reach another process on a taken port.
            if let answer = try? pingRedis(port: port), answer.hasPrefix("+PONG") || answer.hasPrefix("-NOAUTH") || answer.hasPrefix("-ERR") {
                // The answer may come from another process that took the port (a restart on
                // the port of a server killed earlier): then ours has exited, unable to bind.
                if answer.hasPrefix("+PONG"), let pid = try? serverProcessID(port: port), pid != Int(process.pid) {
                    process.terminate(SIGKILL)
                    throw FixtureError("port \(port) answers for another process (pid \(pid)): this redis-server could not take it")
                }
                return process
            }
            if process.hasExited() {
                throw FixtureError("redis-server exited at start: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")")
            }
            usleep(10_000)
        }
        process.terminate(SIGKILL)
        throw FixtureError("redis-server did not listen on port \(port) within 10 s")
    }

    /// The `process_id` that `INFO server` on `port` reports.
    private static func serverProcessID(port: Int) throws -> Int? {
        guard let fd = connectToLoopback(port: port, receiveTimeoutSeconds: 1) else { throw FixtureError("not listening") }
        defer { close(fd) }
        let info = Array("INFO server\r\n".utf8)
        _ = info.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var received = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while !String(decoding: received, as: UTF8.self).contains("process_id:") || !String(decoding: received, as: UTF8.self).hasSuffix("\r\n") {
            let count = recv(fd, &buffer, buffer.count, 0)
            if count <= 0 { break }
            received += buffer[0..<count]
        }
        let text = String(decoding: received, as: UTF8.self)
        guard let line = text.split(separator: "\r\n").first(where: { $0.hasPrefix("process_id:") }) else { return nil }
        return Int(line.dropFirst("process_id:".count))
    }

    private static func pingRedis(port: Int) throws -> String {
        guard let fd = connectToLoopback(port: port, receiveTimeoutSeconds: 1) else { throw FixtureError("not listening") }
        defer { close(fd) }
        let ping = Array("PING\r\n".utf8)
        _ = ping.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var buffer = [UInt8](repeating: 0, count: 256)
        let count = recv(fd, &buffer, buffer.count, 0)
        return count > 0 ? String(decoding: buffer[0..<count], as: UTF8.self) : ""
    }

    /// The plain TCP URL, with `password` and `username` if given.
    public func url(username: String? = nil, password: String? = nil, database: Int = 0) -> RedisURL {
        RedisURL(endpoint: .tcp(host: "127.0.0.1", port: port), username: username, password: password, database: database)
    }

    /// The URL as text, as an operator would write it.
    public var urlString: String { "redis://127.0.0.1:\(port)" }

    /// Stops the server (SIGTERM) and waits for it to exit. Blocking: async code calls
    /// ``stopOffPool()``.
    public func stop() {
        signal(SIGTERM)
    }

    /// Kills the server at once (SIGKILL), like a crash.
    public func kill() {
        signal(SIGKILL)
    }

    /// Freezes the server (SIGSTOP): it holds every connection open and answers nothing, and
    /// whatever clients send waits in the socket until ``thaw()``.
    public func freeze() {
        if let pid = lock.withLock({ process?.pid }) { Glibc.kill(pid, SIGSTOP) }
    }

    /// Lets a frozen server run again (SIGCONT): it then reads and runs what was sent meanwhile.
    public func thaw() {
        if let pid = lock.withLock({ process?.pid }) { Glibc.kill(pid, SIGCONT) }
    }

    private func signal(_ signal: Int32) {
        let process = lock.withLock { () -> ChildProcess? in
            defer { self.process = nil }
            return self.process
        }
        process?.terminate(signal)
    }

    /// Starts the server again on the same port (after ``stop()`` or ``kill()``).
    public func restart() throws {
        guard let binary = executablePath("redis-server") else { throw FixtureError("redis-server is not installed") }
        let process = try Self.launch(binary: binary, arguments: arguments, port: port, log: directory + "/redis.log")
        lock.withLock { self.process = process }
    }

    /// ``stop()`` from async code: waits for the exit on a thread of its own, never on the
    /// cooperative pool.
    public func stopOffPool() async {
        _ = try? await offThePool { [self] in stop() }
    }

    /// ``kill()`` from async code, reaped off the cooperative pool.
    public func killOffPool() async {
        _ = try? await offThePool { [self] in kill() }
    }

    /// ``restart()`` from async code: the wait until it answers PING runs off the cooperative pool.
    public func restartOffPool() async throws {
        try await offThePool { [self] in try restart() }
    }
}

/// A CA, and a server certificate for `localhost` and 127.0.0.1 signed by it, made with openssl.
public struct TestCertificates: Sendable {
    public let caCertificate: String
    public let caKey: String
    public let serverCertificate: String
    public let serverKey: String
    /// A second CA that signed nothing: trusting it must fail verification.
    public let otherCACertificate: String

    public init(directory: String, subjectAltName: String = "DNS:localhost,IP:127.0.0.1") throws {
        caCertificate = directory + "/ca.crt"
        caKey = directory + "/ca.key"
        serverCertificate = directory + "/server.crt"
        serverKey = directory + "/server.key"
        otherCACertificate = directory + "/other-ca.crt"
        let extensions = directory + "/server.ext"
        try "subjectAltName=\(subjectAltName)\n".write(toFile: extensions, atomically: true, encoding: .utf8)
        let steps: [[String]] = [
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=rollout-gate test CA",
             "-keyout", caKey, "-out", caCertificate],
            ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=another CA",
             "-keyout", directory + "/other-ca.key", "-out", otherCACertificate],
            ["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", serverKey,
             "-out", directory + "/server.csr"],
            ["x509", "-req", "-in", directory + "/server.csr", "-CA", caCertificate, "-CAkey", caKey,
             "-CAcreateserial", "-days", "2", "-out", serverCertificate, "-extfile", extensions],
        ]
        guard let openssl = executablePath("openssl") else { throw FixtureError("openssl is not installed") }
        for step in steps {
            let status = try ChildProcess(openssl, step, output: "/dev/null").wait()
            guard status == 0 else {
                throw FixtureError("openssl \(step.prefix(2).joined(separator: " ")) failed")
            }
        }
    }
}

/// A TCP listener that accepts connections (the kernel completes the handshake) and never
/// answers: every command sent to it times out.
public final class SilentServer: Sendable {
    public let port: Int
    private let fd: Int32

    public init() throws {
        (fd, port) = try listenOnLoopback(backlog: 16)
    }

    deinit { close(fd) }

    public var url: RedisURL { RedisURL(endpoint: .tcp(host: "127.0.0.1", port: port)) }
}

/// An audit log line without its trailing `  id=<stream id>` field, for comparing lines whose
/// record ids differ from run to run.
public func withoutRecordID(_ line: String) -> String {
    guard let marker = line.range(of: "  id=", options: .backwards) else { return line }
    return String(line[..<marker.lowerBound])
}

/// A hostile "Redis" on loopback: it answers the first bytes of every connection with `header`
/// (`$1073741824\r\n`, `*100000000\r\n`), then sends filler until the client hangs up, counting
/// what it managed to send. It gives up on its own after `giveUpAfterBytes`.
public final class HostileServer: Sendable {
    /// How the filler after the header comes.
    public enum Tail: Sendable {
        /// As fast as the socket takes it, 64 KiB at a time.
        case flood
        /// One byte at a time, a millisecond apart.
        case trickle
    }

    public let port: Int
    private let fd: Int32
    private let header: [UInt8]
    private let tail: Tail
    private let giveUpAfterBytes: Int
    private let sent = Atomic<Int>(0)
    private let hungUp = Atomic<Int>(0)

    public init(header: String, tail: Tail, giveUpAfterBytes: Int = 512 * 1024 * 1024) throws {
        (fd, port) = try listenOnLoopback(backlog: 16)
        self.header = Array(header.utf8)
        self.tail = tail
        self.giveUpAfterBytes = giveUpAfterBytes
        Thread { [self] in acceptLoop() }.start()
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    public var url: RedisURL { RedisURL(endpoint: .tcp(host: "127.0.0.1", port: port)) }
    public var urlString: String { "redis://127.0.0.1:\(port)" }

    /// Bytes sent on every connection so far, header included.
    public var bytesSent: Int { sent.load(ordering: .acquiring) }
    /// Connections whose client hung up (a send failed), as opposed to the server giving up.
    public var hangUps: Int { hungUp.load(ordering: .acquiring) }

    /// Waits until a client has hung up, polling; false if none did within `attempts` × 10 ms.
    public func waitForHangUp(attempts: Int = 6000) async -> Bool {
        for _ in 0..<attempts {
            if hangUps > 0 { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return hangUps > 0
    }

    private func acceptLoop() {
        while true {
            let client = acceptClosingOnExec(fd)
            if client < 0 { return }
            Thread { [self] in answer(client) }.start()
        }
    }

    private func answer(_ client: Int32) {
        defer { close(client) }
        var request = [UInt8](repeating: 0, count: 4096)
        guard recv(client, &request, request.count, 0) > 0, push(header, to: client) else { return }
        let filler = [UInt8](repeating: UInt8(ascii: "x"), count: tail == .flood ? 65536 : 1)
        var total = header.count
        while total < giveUpAfterBytes {
            guard push(filler, to: client) else {
                hungUp.add(1, ordering: .releasing)
                return
            }
            total += filler.count
            if tail == .trickle { usleep(1000) }
        }
    }

    private func push(_ bytes: [UInt8], to client: Int32) -> Bool {
        let count = bytes.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        guard count > 0 else { return false }
        sent.add(count, ordering: .releasing)
        return true
    }
}
