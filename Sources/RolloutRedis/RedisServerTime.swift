/// Redis's own clock (`TIME`), read in the same round trip as the state a write depends on,
/// so that the write can carry a deadline by the server's clock: a script that checks it
/// refuses to run after the client has given up on it (a frozen server that wakes up later
/// with the script still queued changes nothing).
public struct RedisServerTime: Sendable {
    /// The command to put in the pipeline.
    public static let command = RedisCommand("TIME")

    /// The server's Unix time in milliseconds when it answered.
    public let milliseconds: Int64
    private let readAt: ContinuousClock.Instant

    /// Parses `TIME`'s reply (`[seconds, microseconds]`) received at `readAt`.
    public init(reply: RedisValue, readAt: ContinuousClock.Instant = .now) throws(RedisError) {
        guard let parts = reply.array, parts.count == 2, let secondsText = parts[0].string, let microsText = parts[1].string,
            let seconds = Int64(secondsText), let micros = Int64(microsText), seconds >= 0, (0..<1_000_000).contains(micros)
        else {
            throw RedisError(.protocolError, "Redis answered TIME with \(reply), not [seconds, microseconds]. Is this a Redis server?")
        }
        milliseconds = seconds * 1000 + micros / 1000
        self.readAt = readAt
    }

    /// How long a write may take by default, from the call to its reply: longer than a
    /// command's timeout, so that a busy machine does not turn every write into a refusal.
    public static let writeBudget: Duration = .seconds(3)

    /// When a write that depends on the state read with this time must have run: by the
    /// server's clock for the script to check, and by ours for the client to stop waiting.
    public struct WriteDeadline: Sendable {
        /// The server's Unix time (ms) after which the script refuses to write.
        public let serverMilliseconds: Int64
        /// Until when the client waits for the script's reply.
        public let waitUntil: ContinuousClock.Instant
    }

    /// A deadline `budget` from now. The client waits a little past it: the server's clock has
    /// moved at least as far as ours since `TIME` answered, so by the time the client stops
    /// waiting the server's clock is past ``WriteDeadline/serverMilliseconds``, and a script
    /// still queued (a frozen server that wakes up later) refuses to write.
    public func writeDeadline(within budget: Duration = Self.writeBudget) -> WriteDeadline {
        let now = ContinuousClock.now
        let window = (now - readAt) + budget
        let server = milliseconds + window.wholeMilliseconds
        return WriteDeadline(serverMilliseconds: server, waitUntil: now + budget + .milliseconds(50))
    }
}

extension Duration {
    /// The duration in whole milliseconds (rounded down), as Redis's PX, PTTL and WAIT count.
    public var wholeMilliseconds: Int64 {
        components.seconds * 1000 + components.attoseconds / 1_000_000_000_000_000
    }
}
