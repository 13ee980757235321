import Foundation
public import RolloutRedis

/// A Sentinel deployment on loopback for one test: a primary, two replicas (`--replicaof`) and
/// three sentinels (quorum 2, `down-after-milliseconds 1000`), every one a ``RedisServer`` on a
/// free port, each sentinel with its own writable config file. ``start(password:sentinelPassword:tls:)``
/// returns once the replicas are in sync and every sentinel knows both replicas and the two
/// other sentinels (so a failover can be elected). Released or ``stop()``ped: all stopped.
public final class SentinelTopology: Sendable {
    /// The name the sentinels monitor the primary under.
    public let primaryName = "mymaster"
    /// The data nodes; the first is the primary at start.
    public let nodes: [RedisServer]
    /// The three sentinels.
    public let sentinels: [RedisServer]
    /// The data nodes' `requirepass` (and `masterauth`, `sentinel auth-pass`), if any.
    public let password: String?
    /// The sentinels' own `requirepass` (and `sentinel sentinel-pass`), if any.
    public let sentinelPassword: String?

    /// With TLS: the one CA and server certificate every node and sentinel uses, so a single
    /// `cacert=` verifies them all. Nil for a plain topology.
    public let certificates: TestCertificates?

    private init(nodes: [RedisServer], sentinels: [RedisServer], password: String?, sentinelPassword: String?, certificates: TestCertificates?) {
        self.nodes = nodes
        self.sentinels = sentinels
        self.password = password
        self.sentinelPassword = sentinelPassword
        self.certificates = certificates
    }

    /// Starts the topology and waits until it is ready (see the type's description).
    ///
    /// With `tls: true` every node and sentinel also listens on a TLS port (certificates of one
    /// CA, made by openssl here) and they talk to each other only over TLS (`tls-replication
    /// yes`: replication, the sentinels' monitoring and their hello messages), so the addresses
    /// the sentinels hand out are TLS ports: ``urlString(sentinelPorts:readFrom:caCertificate:)``
    /// is then a `rediss-sentinel://` URL. The plain ports stay open for the fixture's own
    /// queries (``query(_:_:_:)``) only: nothing announces them.
    public static func start(password: String? = nil, sentinelPassword: String? = nil, tls: Bool = false) async throws -> SentinelTopology {
        let certificates = try tls ? await offThePool { try TestCertificates(directory: try makeTemporaryDirectory("sentinel-ca")) } : nil
        let auth = password.map { ["--requirepass", $0, "--masterauth", $0] } ?? []
        // No delay before a diskless sync: else the first replica sync takes about 5 s.
        let primary = try await startServer(["--repl-diskless-sync-delay", "0"] + auth, certificates: certificates)
        let primaryPort = (tls ? primary.tlsPort : nil) ?? primary.port
        var nodes = [primary]
        for _ in 0..<2 {
            nodes.append(try await startServer(["--replicaof", "127.0.0.1", String(primaryPort)] + auth, certificates: certificates))
        }
        var sentinels: [RedisServer] = []
        for _ in 0..<3 {
            let directory = try makeTemporaryDirectory("sentinel")
            let file = directory + "/sentinel.conf"
            var lines = [
                "sentinel resolve-hostnames no",
                "sentinel monitor mymaster 127.0.0.1 \(primaryPort) 2",
                "sentinel down-after-milliseconds mymaster 1000",
                "sentinel failover-timeout mymaster 5000",
                "sentinel parallel-syncs mymaster 2",
            ]
            if let password { lines.append("sentinel auth-pass mymaster \(password)") }
            if let sentinelPassword { lines += ["requirepass \(sentinelPassword)", "sentinel sentinel-pass \(sentinelPassword)"] }
            try (lines.joined(separator: "\n") + "\n").write(toFile: file, atomically: true, encoding: .utf8)
            sentinels.append(try await startServer(["--sentinel"], configFile: file, certificates: certificates))
        }
        let topology = SentinelTopology(
            nodes: nodes, sentinels: sentinels, password: password, sentinelPassword: sentinelPassword, certificates: certificates)
        guard await eventually(within: .seconds(30), every: .milliseconds(50), { await topology.isReady() }) else {
            topology.stop()
            throw FixtureError("the Sentinel topology did not get ready within 30 s (logs under \(sentinels[0].directory))")
        }
        return topology
    }

    /// A node or sentinel; with `certificates`, with a TLS port and TLS between the servers.
    private static func startServer(_ arguments: [String], configFile: String? = nil, certificates: TestCertificates?) async throws -> RedisServer {
        let tlsReplication = certificates == nil ? [] : ["--tls-replication", "yes"]
        return try await RedisServer.start(
            arguments: tlsReplication + arguments, tls: certificates != nil, configFile: configFile, certificates: certificates)
    }

    /// The port the topology announces for `server`: its TLS port with TLS, else its port.
    public func announcedPort(of server: RedisServer) -> Int {
        (certificates == nil ? nil : server.tlsPort) ?? server.port
    }

    /// Whether the replicas are online and every sentinel sees 2 replicas and 2 other sentinels.
    private func isReady() async -> Bool {
        guard let info = try? await query(nodes[0], "INFO", "replication").string,
            info.components(separatedBy: "state=online").count == 3
        else { return false }
        for sentinel in sentinels {
            guard let fields = try? await query(sentinel, "SENTINEL", "master", primaryName).array?.compactMap(\.string),
                let replicas = fields.firstIndex(of: "num-slaves"), fields.indices.contains(replicas + 1), fields[replicas + 1] == "2",
                let others = fields.firstIndex(of: "num-other-sentinels"), fields.indices.contains(others + 1), fields[others + 1] == "2"
            else { return false }
        }
        return true
    }

    /// The URL of this topology: the sentinels at `sentinelPorts` (all by default, in order),
    /// with the data nodes' password in the user info and the sentinels' as `sentinelPassword=`.
    /// With TLS, `rediss-sentinel://` with `cacert=` the topology's CA (`caCertificate` instead
    /// when given; an empty one leaves `cacert=` out, for the system's trust store).
    public func urlString(sentinelPorts: [Int]? = nil, readFrom: String? = nil, caCertificate: String? = nil) -> String {
        let hosts = (sentinelPorts ?? sentinels.map { announcedPort(of: $0) }).map { "127.0.0.1:\($0)" }.joined(separator: ",")
        var options: [String] = []
        if let sentinelPassword { options.append("sentinelPassword=\(sentinelPassword)") }
        if let readFrom { options.append("readFrom=\(readFrom)") }
        if let ca = caCertificate ?? certificates?.caCertificate, !ca.isEmpty { options.append("cacert=\(ca)") }
        let auth = password.map { ":\($0)@" } ?? ""
        let scheme = certificates == nil ? "redis-sentinel" : "rediss-sentinel"
        return "\(scheme)://\(auth)\(hosts)\(options.isEmpty ? "" : "?" + options.joined(separator: "&"))#\(primaryName)"
    }

    /// The parsed ``urlString(sentinelPorts:readFrom:caCertificate:)``.
    public func url(sentinelPorts: [Int]? = nil, readFrom: String? = nil, caCertificate: String? = nil) throws -> RedisURL {
        try RedisURL(parsing: urlString(sentinelPorts: sentinelPorts, readFrom: readFrom, caCertificate: caCertificate))
    }

    /// A direct URL to `server` (a data node or a sentinel), with its password.
    public func directURL(_ server: RedisServer) -> RedisURL {
        server.url(password: sentinels.contains { $0 === server } ? sentinelPassword : password)
    }

    /// One command sent straight to `server` on a connection of its own.
    public func query(_ server: RedisServer, _ name: String, _ arguments: String...) async throws -> RedisValue {
        let client = RedisClient(url: directURL(server))
        defer { client.close() }
        return try await client.send(RedisCommand(name, arguments))
    }

    /// The data node a sentinel names as primary now, asked of the first sentinel that answers.
    public func currentPrimary() async -> RedisServer? {
        for sentinel in sentinels {
            if let parts = try? await query(sentinel, "SENTINEL", "get-master-addr-by-name", primaryName).array,
                let port = parts.last?.string.flatMap({ Int($0) })
            {
                return nodes.first { announcedPort(of: $0) == port }
            }
        }
        return nil
    }

    /// The ROLE a data node reports (`master`, `slave`), nil when it does not answer.
    public func role(of node: RedisServer) async -> String? {
        try? await query(node, "ROLE").array?.first?.string
    }

    /// Stops every server (blocking: from async code, see ``stopOffPool()``).
    public func stop() {
        for server in sentinels + nodes { server.stop() }
    }

    /// ``stop()`` off the cooperative pool.
    public func stopOffPool() async {
        _ = try? await offThePool { [self] in stop() }
    }
}

/// A stand-in sentinel that names one fixed node as the primary of every name: it answers
/// each connection's first command with that address. For a sentinel that has not seen a
/// failover (it names a node that is a replica now).
public final class StaleSentinel: Sendable {
    public let port: Int
    private let fd: Int32
    private let reply: [UInt8]

    /// A sentinel naming 127.0.0.1:`namedPort`.
    public init(naming namedPort: Int) throws {
        (fd, port) = try listenOnLoopback(backlog: 16)
        let portText = String(namedPort)
        reply = Array("*2\r\n$9\r\n127.0.0.1\r\n$\(portText.utf8.count)\r\n\(portText)\r\n".utf8)
        Thread { [self] in acceptLoop() }.start()
    }

    deinit {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    private func acceptLoop() {
        while true {
            let client = acceptClosingOnExec(fd)
            if client < 0 { return }
            Thread { [self] in
                defer { close(client) }
                var request = [UInt8](repeating: 0, count: 4096)
                guard recv(client, &request, request.count, 0) > 0 else { return }
                _ = reply.withUnsafeBytes { send(client, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                // Held open until the client hangs up, as a sentinel would.
                while recv(client, &request, request.count, 0) > 0 {}
            }.start()
        }
    }
}
