import Dispatch
import Synchronization

/// A dedicated connection subscribed to channels, reconnecting by itself, delivering
/// messages as an async sequence of events.
///
/// The connection runs on its own dispatch queue (never Swift's cooperative pool). After
/// each (re)connect it asks `CLIENT ID`, sends the commands `prepare` returns for that id
/// (the gate enables `CLIENT TRACKING ... REDIRECT <id>` there), then SUBSCRIBE, and emits
/// ``Event/subscribed``: messages may have been missed before it, so treat it as "refresh all".
public final class RedisSubscription: Sendable {
    /// What the subscription reports.
    public enum Event: Sendable, Equatable {
        /// Connected and subscribed (again): anything may have changed while it was not.
        case subscribed
        /// A message published to `channel`.
        case message(channel: String, payload: RedisValue)
        /// The connection failed; it will reconnect after a short delay.
        case disconnected(RedisError)
        /// A `prepare` command or SUBSCRIBE was refused by the server; the subscription ends.
        case refused(RedisError)
    }

    private let url: RedisURL
    private let channels: [String]
    private let connectTimeout: Duration
    private let commandTimeout: Duration
    private let prepare: @Sendable (Int64) -> [RedisCommand]
    private let reader: ReaderAffinity?
    private let stopped = Atomic<Bool>(false)
    private let queue = DispatchQueue(label: "rollout-gate.redis.subscription")

    /// A subscription to `channels`; nothing connects until ``events()`` is iterated.
    public convenience init(
        url: RedisURL, channels: [String], connectTimeout: Duration = .milliseconds(250),
        commandTimeout: Duration = .seconds(1), prepare: @escaping @Sendable (_ clientID: Int64) -> [RedisCommand] = { _ in [] }
    ) {
        self.init(url: url, channels: channels, connectTimeout: connectTimeout, commandTimeout: commandTimeout, reader: nil, prepare: prepare)
    }

    /// A subscription that, given a `reader` affinity, follows a sentinel URL's `readFrom=` (the gate's invalidations).
    package init(
        url: RedisURL, channels: [String], connectTimeout: Duration, commandTimeout: Duration, reader: ReaderAffinity?,
        prepare: @escaping @Sendable (_ clientID: Int64) -> [RedisCommand]
    ) {
        self.reader = reader
        self.url = url
        self.channels = channels
        self.connectTimeout = connectTimeout
        self.commandTimeout = commandTimeout
        self.prepare = prepare
    }

    /// The events, until ``stop()`` or a `.refused` event. Call once.
    public func events() -> AsyncStream<Event> {
        let (stream, continuation) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .bufferingNewest(1024))
        continuation.onTermination = { [weak self] _ in self?.stop() }
        queue.async { [self] in
            loop(continuation)
            continuation.finish()
        }
        return stream
    }

    /// Stops the reader within about 100 ms and ends the event sequence.
    public func stop() {
        stopped.store(true, ordering: .releasing)
    }

    private var isStopped: Bool { stopped.load(ordering: .acquiring) }

    private func loop(_ continuation: AsyncStream<Event>.Continuation) {
        var backoff = Duration.milliseconds(50)
        // With a sentinel URL: a failover announced by a sentinel ends the wait at once.
        let watch = url.sentinel.map { SentinelFailoverWatch(url: url, sentinel: $0, connectTimeout: connectTimeout) }
        defer { watch?.end() }
        while !isStopped {
            do throws(RedisError) {
                let connection = try RedisConnection.open(url: url, connectTimeout: connectTimeout, commandTimeout: commandTimeout, reader: reader)
                defer { connection.close() }
                let id = try connection.send([RedisCommand("CLIENT", "ID")]).first?.integer ?? -1
                let setup = prepare(id)
                if !setup.isEmpty {
                    for reply in try connection.send(setup) {
                        if case .error(let text) = reply {
                            continuation.yield(.refused(RedisError.fromServer(text, context: "preparing the subscription")))
                            return
                        }
                    }
                }
                try connection.write([RedisCommand("SUBSCRIBE", channels)])
                var confirmed = 0
                backoff = .milliseconds(50)
                while !isStopped {
                    if watch?.takeAnnouncement() == true {
                        throw RedisError(.connectionClosed, "A sentinel announced a failover; reconnecting to the node the sentinels name now.")
                    }
                    let reply: RedisValue
                    do {
                        reply = try connection.readReply(deadline: .now.advanced(by: .milliseconds(100)))
                    } catch where error.code == .timeout {
                        continue
                    }
                    if case .error(let text) = reply {
                        continuation.yield(.refused(RedisError.fromServer(text, context: "SUBSCRIBE")))
                        return
                    }
                    guard let parts = reply.array, parts.count >= 3, let kind = parts[0].string else { continue }
                    switch kind {
                    case "subscribe":
                        confirmed += 1
                        if confirmed == channels.count { continuation.yield(.subscribed) }
                    case "message":
                        continuation.yield(.message(channel: parts[1].string ?? "", payload: parts[2]))
                    default:
                        continue
                    }
                }
                return
            } catch {
                if isStopped { return }
                continuation.yield(.disconnected(error))
                // Sleep in slices so stop() is honoured quickly.
                let until = ContinuousClock.now.advanced(by: backoff)
                while !isStopped && ContinuousClock.now < until && watch?.hasAnnouncement != true {
                    usleep(20_000)
                }
                if watch?.takeAnnouncement() == true { backoff = .milliseconds(50) }
                backoff = min(backoff * 2, .seconds(2))
            }
        }
    }
}

#if canImport(Glibc)
import Glibc
#endif
