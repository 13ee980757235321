import Dispatch
import Synchronization

/// An async Redis client over one connection, safe to share between tasks.
///
/// Every call runs on the client's own serial dispatch queue, so the blocking socket I/O
/// never occupies a thread of Swift's cooperative pool, and hiredis's state is touched by
/// one thread at a time. Calls made while the queue is busy go out together in one write,
/// each keeping its own commands contiguous and its own deadline (automatic pipelining). A
/// broken connection is dropped and the next call reconnects.
public final class RedisClient: Sendable {
    /// Where the client connects; printing it hides the password.
    public let url: RedisURL
    /// How long a connect (TCP and TLS) may take; the handshake after it (AUTH, HELLO and
    /// SELECT in one round trip) is bounded by ``commandTimeout``, as any command is.
    public let connectTimeout: Duration
    /// How long one command or pipeline may wait for its replies.
    public let commandTimeout: Duration

    private let queue: DispatchQueue
    // A gate's reader (nil for anyone who may write): with a sentinel URL saying
    // readFrom=replica, it connects to a replica, the one its subscription shares.
    private let reader: ReaderAffinity?
    private let slot = ConnectionSlot()
    private let closed = Atomic<Bool>(false)
    private let waiting = Mutex(Waiting())

    /// A client for `url`; nothing connects until the first command. The connect timeout
    /// bounds the TCP connect and the TLS handshake together (AUTH, HELLO and SELECT then take
    /// one round trip under the command timeout): 1 s by default, which a
    /// loaded machine or a Redis across a region still meets (a gate sets its own, 250 ms,
    /// through ``FeatureGate/Configuration``).
    public convenience init(url: RedisURL, connectTimeout: Duration = .seconds(1), commandTimeout: Duration = .seconds(1)) {
        self.init(url: url, connectTimeout: connectTimeout, commandTimeout: commandTimeout, reader: nil)
    }

    /// A client that, given a `reader` affinity, follows a sentinel URL's `readFrom=` (the gate's reads).
    package init(url: RedisURL, connectTimeout: Duration, commandTimeout: Duration, reader: ReaderAffinity?) {
        self.url = url
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.reader = reader
        self.queue = DispatchQueue(label: "rollout-gate.redis")
    }

    /// Sends one command; an error reply throws ``RedisError`` with code `.serverError`. With
    /// `waitingUntil`, the reply is awaited until then instead of for the command timeout.
    public func send(_ command: RedisCommand, waitingUntil: ContinuousClock.Instant? = nil) async throws(RedisError) -> RedisValue {
        let replies = try await exchange(try encoded([command]), count: 1, deadline: waitingUntil).replies
        guard let reply = replies.first else {
            throw RedisError(.protocolError, "Redis sent no reply to \(command.name).")
        }
        return try reply.throwingServerError(context: command.name)
    }

    /// Sends one command given as text: `try await client.send("GET", "flags:google:enabled")`.
    public func send(_ name: String, _ arguments: String...) async throws(RedisError) -> RedisValue {
        try await send(RedisCommand(name, arguments))
    }

    /// Sends every command in one round trip and returns one reply each, in order. A command
    /// the server refuses gives an `.error` value in its place; the others still run.
    public func pipeline(_ commands: [RedisCommand]) async throws(RedisError) -> [RedisValue] {
        try await pipeline(commands, waitingUntil: nil)
    }

    /// ``pipeline(_:)-([RedisCommand])`` whose replies are awaited until `waitingUntil` (nil:
    /// the command timeout) instead.
    package func pipeline(_ commands: [RedisCommand], waitingUntil: ContinuousClock.Instant?) async throws(RedisError) -> [RedisValue] {
        guard !commands.isEmpty else { return [] }
        return try await exchange(try encoded(commands), count: commands.count, deadline: waitingUntil).replies
    }

    /// ``pipeline(_:)-([RedisCommand])``, with the moment the last reply arrived, taken on the
    /// client's own queue: a task resumed late on a busy machine does not make it later (it
    /// dates a ``RedisServerTime`` read in the pipeline).
    public func pipelineWithArrival(_ commands: [RedisCommand]) async throws(RedisError) -> (replies: [RedisValue], arrivedAt: ContinuousClock.Instant) {
        guard !commands.isEmpty else { return ([], .now) }
        return try await exchange(try encoded(commands), count: commands.count, deadline: nil)
    }

    /// Sends a pipeline formatted in advance: for a request repeated often (the gate's
    /// refresh), the commands are encoded once, not at every call.
    public func pipeline(_ prepared: PreparedPipeline) async throws(RedisError) -> [RedisValue] {
        guard prepared.count > 0 else { return [] }
        return try await exchange(prepared.bytes, count: prepared.count, deadline: nil).replies
    }

    /// Runs a Lua script by its SHA-1 (EVALSHA), sending the source (EVAL) only when the
    /// server does not have it cached yet.
    /// With `waitingUntil`, each reply is awaited until then (a write whose script checks a
    /// ``RedisServerTime/WriteDeadline``: wait until its `waitUntil`).
    public func evaluate(
        _ script: RedisScript, keys: [String], arguments: [String], waitingUntil: ContinuousClock.Instant? = nil
    ) async throws(RedisError) -> RedisValue {
        let tail = [String(keys.count)] + keys + arguments
        do {
            return try await send(RedisCommand("EVALSHA", [script.sha1] + tail), waitingUntil: waitingUntil)
        } catch where error.serverErrorPrefix == "NOSCRIPT" {
            return try await send(RedisCommand("EVAL", [script.source] + tail), waitingUntil: waitingUntil)
        }
    }

    /// Every key matching a glob pattern, by iterating SCAN (never KEYS, which blocks the server).
    public func scan(matching pattern: String, count: Int = 1000) async throws(RedisError) -> [String] {
        var cursor = "0"
        var keys: [String] = []
        repeat {
            let reply = try await send(RedisCommand("SCAN", cursor, "MATCH", pattern, "COUNT", String(count)))
            guard let parts = reply.array, parts.count == 2, let next = parts[0].string, let batch = parts[1].array else {
                throw RedisError(.protocolError, "Redis answered SCAN with an unexpected shape.")
            }
            keys.append(contentsOf: batch.compactMap(\.string))
            cursor = next
        } while cursor != "0"
        return keys
    }

    /// Closes the connection; later calls fail with `.clientClosed`.
    public func close() {
        closed.store(true, ordering: .releasing)
        queue.async { [slot] in
            slot.connection?.close()
            slot.connection = nil
        }
    }

    private func encoded(_ commands: [RedisCommand]) throws(RedisError) -> [UInt8] {
        var bytes: [UInt8] = []
        for command in commands { try appendFormatted(command, to: &bytes) }
        return bytes
    }

    /// Sends `count` encoded commands and reads their replies, with the moment the last one
    /// arrived. Calls made while the queue is busy are sent together when it is free, in one
    /// write, and their replies read in order (automatic pipelining: under load, one round
    /// trip and a few syscalls for many calls instead of several each).
    private func exchange(
        _ bytes: [UInt8], count: Int, deadline: ContinuousClock.Instant?
    ) async throws(RedisError) -> (replies: [RedisValue], arrivedAt: ContinuousClock.Instant) {
        let outcome = await withCheckedContinuation { (continuation: CheckedContinuation<Exchange.Outcome, Never>) in
            let request = Exchange(bytes: bytes, count: count, deadline: deadline, continuation: continuation)
            let startsDraining = waiting.withLock { state -> Bool in
                state.requests.append(request)
                defer { state.draining = true }
                return !state.draining
            }
            if startsDraining { queue.async { [self] in drain() } }
        }
        return try outcome.get()
    }

    /// Sends what waits, batch after batch, until nothing does (on the queue).
    private func drain() {
        while true {
            let batch = waiting.withLock { state -> [Exchange] in
                let taken = state.requests
                state.requests = []
                if taken.isEmpty { state.draining = false }
                return taken
            }
            if batch.isEmpty { return }
            send(batch)
        }
    }

    /// One write for every exchange of `batch`, then each one's replies by its own deadline.
    /// A failure drops the connection (hiredis's rule: a connection that failed mid-exchange
    /// cannot be trusted again) and fails the exchange it happened in and every later one of
    /// the batch, whose commands may or may not have run: never a blind resend.
    private func send(_ batch: [Exchange]) {
        if closed.load(ordering: .acquiring) {
            let error = RedisError(.clientClosed, "The Redis client for \(url) was closed.")
            for exchange in batch { exchange.continuation.resume(returning: .failure(error)) }
            return
        }
        // A call whose own deadline passed while it waited is not sent: it fails alone, and
        // cannot make the write or the replies of the others late.
        let now = ContinuousClock.now
        let batch = batch.filter { exchange in
            guard let deadline = exchange.deadline, deadline <= now else { return true }
            exchange.continuation.resume(
                returning: .failure(RedisError(.timeout, "The time for this Redis call ran out before it could be sent; nothing was sent.")))
            return false
        }
        guard !batch.isEmpty else { return }
        var finished = 0
        do throws(RedisError) {
            let connection: RedisConnection
            if let existing = slot.connection, !existing.isBroken {
                connection = existing
            } else {
                slot.connection?.close()
                slot.connection = nil
                // Through the sentinels for a sentinel URL: every reconnect re-resolves the node.
                connection = try RedisConnection.open(url: url, connectTimeout: connectTimeout, commandTimeout: commandTimeout, reader: reader)
                slot.connection = connection
            }
            let sent = ContinuousClock.now
            let deadlines = batch.map { $0.deadline ?? sent.advanced(by: commandTimeout) }
            if batch.count == 1 {
                try connection.writeAll(batch[0].bytes, deadline: deadlines[0])
            } else {
                try connection.writeAll(batch.reduce(into: []) { $0 += $1.bytes }, deadline: deadlines.max() ?? sent)
            }
            var demoted = false
            for (exchange, deadline) in zip(batch, deadlines) {
                var replies: [RedisValue] = []
                replies.reserveCapacity(exchange.count)
                while replies.count < exchange.count {
                    let reply = try connection.readReply(deadline: deadline)
                    if case .error(let text) = reply, text.hasPrefix("READONLY") { demoted = true }
                    replies.append(reply)
                }
                finished += 1
                exchange.continuation.resume(returning: .success((replies, ContinuousClock.now)))
            }
            // READONLY: this node is a replica now (a failover). The write failed and is not
            // retried; the next call connects to whatever node the sentinels name then.
            if demoted && url.sentinel != nil {
                slot.connection?.close()
                slot.connection = nil
            }
        } catch {
            if error.breaksConnection {
                slot.connection?.close()
                slot.connection = nil
            }
            for exchange in batch[finished...] { exchange.continuation.resume(returning: .failure(error)) }
        }
    }
}

/// One call waiting to be sent: its encoded commands, how many replies it reads, its deadline
/// (the command timeout when nil) and who waits for it.
private struct Exchange: Sendable {
    typealias Outcome = Result<(replies: [RedisValue], arrivedAt: ContinuousClock.Instant), RedisError>
    let bytes: [UInt8]
    let count: Int
    let deadline: ContinuousClock.Instant?
    let continuation: CheckedContinuation<Outcome, Never>
}

/// The calls waiting for the queue, and whether a drain is scheduled or running.
private struct Waiting: Sendable {
    var requests: [Exchange] = []
    var draining = false
}

/// The client's connection, touched only from the client's serial queue: that queue is
/// the lock, which is why this box may be `@unchecked Sendable`.
private final class ConnectionSlot: @unchecked Sendable {
    var connection: RedisConnection?
}

/// Commands encoded once as RESP, to be sent many times with ``RedisClient/pipeline(_:)-(PreparedPipeline)``.
public struct PreparedPipeline: Sendable {
    let bytes: [UInt8]
    /// How many commands, and so replies.
    public let count: Int

    /// Encodes `commands` with hiredis's formatter.
    public init(_ commands: [RedisCommand]) throws(RedisError) {
        var bytes: [UInt8] = []
        for command in commands { try appendFormatted(command, to: &bytes) }
        self.bytes = bytes
        count = commands.count
    }
}

/// A Lua script and its SHA-1, for ``RedisClient/evaluate(_:keys:arguments:)``.
public struct RedisScript: Sendable, Hashable {
    /// The Lua source.
    public let source: String
    /// The hex SHA-1 Redis caches the script under.
    public let sha1: String

    /// A script from its source.
    public init(_ source: String) {
        self.source = source
        self.sha1 = sha1Hex(source)
    }
}
