/// How many replicas must acknowledge a write before its writer calls it safe from a failover
/// (Redis's `WAIT`), and how long the writer waits for them.
///
/// Replication is asynchronous: a write a primary acknowledged and then died before passing on
/// is lost when a replica is promoted. `WAIT` does not make a write synchronous (the write
/// stands either way); it tells the writer whether the write reached enough replicas, so a
/// change that could still be lost is reported instead of looking done.
public struct ReplicaAcknowledgement: Sendable, Hashable, CustomStringConvertible {
    /// The replicas asked for; nil for automatic: 1 when the primary has a replica connected
    /// (``RedisClient/connectedReplicas()``), none otherwise.
    public var minimum: Int?
    /// How long the writer waits for them after each write.
    public var timeout: Duration

    /// 500 ms: a replica on the same network acknowledges in about a millisecond.
    public static let defaultTimeout = Duration.milliseconds(500)

    /// Automatic with the default timeout.
    public static let automatic = ReplicaAcknowledgement(minimum: nil)

    /// `minimum` replicas (nil: automatic) within `timeout`.
    public init(minimum: Int?, timeout: Duration = Self.defaultTimeout) {
        self.minimum = minimum.map { max(0, $0) }
        self.timeout = timeout
    }

    /// How many replicas a write must reach when the primary has `connected` replicas.
    public func required(connected: Int) -> Int {
        minimum ?? (connected > 0 ? 1 : 0)
    }

    /// `min 1 within 500ms`, `automatic within 500ms`.
    public var description: String {
        "\(minimum.map { "min \($0)" } ?? "automatic") within \(timeout.wholeMilliseconds)ms"
    }
}

/// What `WAIT` said of a write: how many replicas acknowledged it, of how many asked.
public struct Replication: Sendable, Hashable, CustomStringConvertible {
    /// The replicas the write had to reach.
    public var required: Int
    /// The replicas that acknowledged it within the timeout.
    public var acknowledged: Int
    /// How long the writer waited.
    public var timeout: Duration
    /// The server's error when it refused `WAIT` (an ACL without `+wait`): the write stands,
    /// unconfirmed, and `acknowledged` is 0.
    public var refusal: String?

    /// A result.
    public init(required: Int, acknowledged: Int, timeout: Duration, refusal: String? = nil) {
        self.required = required
        self.acknowledged = acknowledged
        self.timeout = timeout
        self.refusal = refusal
    }

    /// Enough replicas acknowledged it.
    public var isReplicated: Bool { acknowledged >= required && refusal == nil }

    /// `1 of 1 replica acknowledged the write within 500 ms`.
    public var description: String {
        if let refusal { return "Redis refused WAIT (\(refusal)), so no replica confirmed the write: grant +wait to this Redis user" }
        return "\(acknowledged) of \(required) replica\(required == 1 ? "" : "s") acknowledged the write within \(timeout.wholeMilliseconds) ms"
    }
}

/// The `WAIT <count> <timeout>` sent after a write; a count of 0 sends none.
public struct ReplicaWait: Sendable, Hashable {
    /// The replicas that must acknowledge the write.
    public var count: Int
    /// How long to wait for them.
    public var timeout: Duration

    /// None: the write is not followed by `WAIT`.
    public static let none = ReplicaWait(count: 0, timeout: .zero)

    /// `WAIT <count> <milliseconds>`, at least 1 ms (`WAIT n 0` waits forever).
    var command: RedisCommand {
        RedisCommand("WAIT", String(count), String(max(1, timeout.wholeMilliseconds)))
    }
}

extension RedisClient {
    /// How many replicas are connected to the node this client writes to (`ROLE`); 0 when it
    /// is not a primary. A replica the primary has dropped (its link timed out) is not counted.
    public func connectedReplicas() async throws(RedisError) -> Int {
        let reply = try await send(RedisCommand("ROLE"))
        guard let parts = reply.array, parts.first?.string == "master" else { return 0 }
        return parts.count >= 3 ? parts[2].array?.count ?? 0 : 0
    }

    /// The `WAIT` that `replicas` asks of a write to this client's node now: for automatic, one
    /// replica when `ROLE` lists any. Ask before dating the write's deadline, so the `ROLE`
    /// round trip is not taken from the write's own time.
    public func replicaWait(_ replicas: ReplicaAcknowledgement) async throws(RedisError) -> ReplicaWait {
        if let minimum = replicas.minimum { return ReplicaWait(count: minimum, timeout: replicas.timeout) }
        return ReplicaWait(count: replicas.required(connected: try await connectedReplicas()), timeout: replicas.timeout)
    }

    /// Runs `script` like ``evaluate(_:keys:arguments:waitingUntil:)`` and, when `wait` asks for
    /// any replica, `WAIT` right behind it, in the same round trip and so on the same connection
    /// (`WAIT` counts the writes of its own connection: a reconnect between the two would make
    /// it answer for none). The replication is nil when no replica was asked for.
    /// The replies are awaited until `waitingUntil` or the WAIT's timeout, whichever is later.
    public func evaluate(
        _ script: RedisScript, keys: [String], arguments: [String], waitingUntil: ContinuousClock.Instant? = nil, thenWaiting wait: ReplicaWait
    ) async throws(RedisError) -> (reply: RedisValue, replication: Replication?) {
        let required = wait.count
        guard required > 0 else {
            return (try await evaluate(script, keys: keys, arguments: arguments, waitingUntil: waitingUntil), nil)
        }
        let tail = [String(keys.count)] + keys + arguments
        // The script's own deadline (checked by Redis) still refuses a late run: waiting longer
        // for the replies only learns the outcome later.
        let waitedFor = ContinuousClock.now.advanced(by: wait.timeout + commandTimeout)
        let deadline = waitingUntil.map { max($0, waitedFor) } ?? waitedFor
        var replies = try await pipeline([RedisCommand("EVALSHA", [script.sha1] + tail), wait.command], waitingUntil: deadline)
        if case .error(let text) = replies[0], text.hasPrefix("NOSCRIPT") {
            replies = try await pipeline([RedisCommand("EVAL", [script.source] + tail), wait.command], waitingUntil: deadline)
        }
        guard replies.count == 2 else { throw RedisError(.protocolError, "Redis sent \(replies.count) replies to a script and WAIT.") }
        let reply = try replies[0].throwingServerError(context: "EVALSHA")
        // The script ran: whatever WAIT says, its write stands; only the report differs.
        switch replies[1] {
        case .integer(let acknowledged):
            return (reply, Replication(required: required, acknowledged: Int(acknowledged), timeout: wait.timeout))
        case .error(let text):
            return (reply, Replication(required: required, acknowledged: 0, timeout: wait.timeout, refusal: text))
        default:
            return (reply, Replication(required: required, acknowledged: 0, timeout: wait.timeout, refusal: "an answer that is not a count"))
        }
    }
}
