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

    init(url: RedisURL, connectTimeout: Duration, commandTimeout: Duration) throws(RedisError) {
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
        try handshake()
    }

    deinit {
        stream.close()
        buffer.deallocate()
    }

    /// AUTH and SELECT, in one round trip.
    private func handshake() throws(RedisError) {
        var commands: [RedisCommand] = []
        if let password = url.password {
            if let username = url.username {
                commands.append(RedisCommand("AUTH", username, password))
            } else {
                commands.append(RedisCommand("AUTH", password))
            }
        }
        if url.database != 0 {
            commands.append(RedisCommand("SELECT", String(url.database)))
        }
        guard !commands.isEmpty else { return }
        let replies = try send(commands)
        for (command, reply) in zip(commands, replies) {
            if case .error(let text) = reply {
                if command.name == "AUTH" {
                    throw RedisError(
                        .authenticationFailed,
                        "Redis refused authentication for \(url): \(text). Check the user and password in the Redis URL.")
                }
                throw RedisError.fromServer(text, context: "selecting database \(url.database)")
            }
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
