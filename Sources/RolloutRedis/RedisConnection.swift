/// One connection to Redis, blocking, bounded by the connect and command timeouts.
///
/// Not thread-safe, like the hiredis reader inside it: ``RedisClient`` runs every call on
/// one serial queue of its own, and the subscription reader owns its connection alone.
final class RedisConnection {
    let url: RedisURL
    let commandTimeout: Duration
    private let stream: any ByteStream
    private let reader: RESPReader
    private let buffer: UnsafeMutableRawBufferPointer

    /// What is at the other end: a data node is asked its mode at connect (a Redis Cluster
    /// node is refused); a sentinel is not asked.
    enum Peer {
        case dataNode
        case sentinel
    }

    init(url: RedisURL, connectTimeout: Duration, commandTimeout: Duration, peer: Peer = .dataNode) throws(RedisError) {
        self.url = url
        self.commandTimeout = commandTimeout
        let deadline = ContinuousClock.now.advanced(by: connectTimeout)
        let socket = try SocketStream.connect(to: url.endpoint, deadline: deadline)
        if let tls = url.tls, case .tcp(let host, _) = url.endpoint {
            stream = try TLSStream.connect(socket: socket, host: host, settings: tls, deadline: deadline)
        } else {
            stream = socket
        }
        reader = try RESPReader()
        // Allocated last: once every stored property is set, a throwing init still runs deinit.
        buffer = .allocate(byteCount: 64 * 1024, alignment: 16)
        try handshake(asksMode: peer == .dataNode)
    }

    deinit {
        stream.close()
        buffer.deallocate()
    }

    /// AUTH, HELLO and SELECT, in one round trip. `HELLO 2` (which keeps RESP2, the protocol
    /// hiredis 0.14 reads) tells the server's mode: a Redis Cluster node is refused here, with
    /// advice, rather than failing later on MOVED or CROSSSLOT. HELLO is not a new way to fail:
    /// a server that refuses it (a Redis before 6, a renamed command, NOAUTH when the URL has
    /// no password) counts as not a cluster, and the connect goes on.
    private func handshake(asksMode: Bool) throws(RedisError) {
        var commands: [RedisCommand] = []
        if let password = url.password {
            if let username = url.username {
                commands.append(RedisCommand("AUTH", username, password))
            } else {
                commands.append(RedisCommand("AUTH", password))
            }
        }
        if asksMode {
            commands.append(RedisCommand("HELLO", "2"))
        }
        if url.database != 0 {
            commands.append(RedisCommand("SELECT", String(url.database)))
        }
        guard !commands.isEmpty else { return }
        let replies = try send(commands)
        // In command order: a refused AUTH explains the rest; a cluster node explains its
        // refused SELECT ("SELECT is not allowed in cluster mode").
        for (command, reply) in zip(commands, replies) {
            switch (command.name, reply) {
            case ("HELLO", _):
                if Self.mode(inHello: reply) == "cluster" { throw RedisError.clusterNode(at: address) }
            case ("AUTH", .error(let text)):
                throw RedisError(
                    .authenticationFailed,
                    "Redis refused authentication for \(url): \(text). Check the user and password in the Redis URL.")
            case (_, .error(let text)):
                throw RedisError.fromServer(text, context: "selecting database \(url.database)")
            default:
                continue
            }
        }
    }

    /// The `mode` field of a RESP2 HELLO reply (a flat list of field, value): `standalone`,
    /// `sentinel` or `cluster`; nil for an error reply or a reply without it.
    static func mode(inHello reply: RedisValue) -> String? {
        guard let fields = reply.array else { return nil }
        for index in stride(from: 0, to: fields.count - 1, by: 2) where fields[index].string == "mode" {
            return fields[index + 1].string
        }
        return nil
    }

    /// The server's address for messages: `host:port` (`[v6]:port`) or the socket path; never a secret.
    private var address: String {
        switch url.endpoint {
        case .tcp(let host, let port): return (host.contains(":") ? "[\(host)]" : host) + ":\(port)"
        case .unix(let path): return path
        }
    }

    /// Sends every command in one write and reads as many replies: a pipeline. Error replies
    /// stay in the result as `.error` values; an I/O failure throws.
    /// `deadline` replaces the command timeout when given.
    func send(_ commands: [RedisCommand], deadline: Deadline? = nil) throws(RedisError) -> [RedisValue] {
        var output: [UInt8] = []
        for command in commands {
            try appendFormatted(command, to: &output)
        }
        return try send(encoded: output, count: commands.count, deadline: deadline)
    }

    /// Sends `count` commands already encoded as RESP and reads as many replies.
    func send(encoded output: [UInt8], count: Int, deadline: Deadline? = nil) throws(RedisError) -> [RedisValue] {
        let deadline = deadline ?? ContinuousClock.now.advanced(by: commandTimeout)
        try writeAll(output, deadline: deadline)
        var replies: [RedisValue] = []
        replies.reserveCapacity(count)
        while replies.count < count {
            replies.append(try readReply(deadline: deadline))
        }
        return replies
    }

    /// Sends commands without waiting for replies (SUBSCRIBE's confirmations are read as messages).
    func write(_ commands: [RedisCommand]) throws(RedisError) {
        var output: [UInt8] = []
        for command in commands {
            try appendFormatted(command, to: &output)
        }
        let deadline = ContinuousClock.now.advanced(by: commandTimeout)
        try writeAll(output, deadline: deadline)
    }

    /// The next reply, waiting until `deadline`.
    func readReply(deadline: Deadline) throws(RedisError) -> RedisValue {
        while true {
            if let reply = try reader.next() { return reply }
            let count = try stream.read(into: buffer, deadline: deadline)
            try reader.feed(UnsafeRawBufferPointer(rebasing: buffer[0..<count]))
        }
    }

    func writeAll(_ bytes: [UInt8], deadline: Deadline) throws(RedisError) {
        let result: Result<Void, RedisError> = bytes.withUnsafeBytes { raw in
            Result { () throws(RedisError) in try stream.write(raw, deadline: deadline) }
        }
        try result.get()
    }

    /// Whether the server closed this idle connection (or sent bytes no command asked for).
    var isBroken: Bool { stream.isReadableWhileIdle }

    func close() { stream.close() }
}
