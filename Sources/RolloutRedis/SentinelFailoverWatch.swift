import Dispatch
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// Listens on every sentinel of the URL for `+switch-master` of its primary, so a subscription
/// reconnects as soon as a failover is announced instead of at its next backoff. Every
/// sentinel, not one: the leader announces at once, the others only when its hello message
/// reaches them (up to 2 s later). Only a speed-up: every reconnect re-resolves anyway.
final class SentinelFailoverWatch: Sendable {
    private let url: RedisURL
    private let sentinel: RedisURL.Sentinel
    private let connectTimeout: Duration
    private let announced = Atomic<Bool>(false)
    private let ended = Atomic<Bool>(false)

    /// Starts watching the sentinels of `url`, off the cooperative pool, until ``end()``.
    init(url: RedisURL, sentinel: RedisURL.Sentinel, connectTimeout: Duration) {
        self.url = url
        self.sentinel = sentinel
        self.connectTimeout = connectTimeout
        for address in sentinel.sentinels {
            DispatchQueue(label: "rollout-gate.redis.sentinel-watch").async { [self] in run(address) }
        }
    }

    /// Whether a failover was announced since the last call (and forgets it).
    func takeAnnouncement() -> Bool {
        announced.exchange(false, ordering: .acquiringAndReleasing)
    }

    /// Whether a failover was announced and not taken yet.
    var hasAnnouncement: Bool { announced.load(ordering: .acquiring) }

    /// Stops the watch within about 100 ms.
    func end() {
        ended.store(true, ordering: .releasing)
    }

    private var isEnded: Bool { ended.load(ordering: .acquiring) }

    private func run(_ address: RedisURL.Sentinel.Address) {
        while !isEnded {
            listen(to: address)
            // The sentinel failed: try again in a second, in slices so end() is honoured.
            let until = ContinuousClock.now.advanced(by: .seconds(1))
            while !isEnded && ContinuousClock.now < until { usleep(20_000) }
        }
    }

    /// Subscribes to `+switch-master` on one sentinel and reads until it fails or the watch ends.
    private func listen(to address: RedisURL.Sentinel.Address) {
        let sentinelURL = RedisURL(
            endpoint: .tcp(host: address.host, port: address.port), username: sentinel.username, password: sentinel.password, tls: url.tls)
        do throws(RedisError) {
            let connection = try RedisConnection(url: sentinelURL, connectTimeout: connectTimeout, commandTimeout: connectTimeout, peer: .sentinel)
            defer { connection.close() }
            try connection.write([RedisCommand("SUBSCRIBE", "+switch-master")])
            while !isEnded {
                let reply: RedisValue
                do {
                    reply = try connection.readReply(deadline: .now.advanced(by: .milliseconds(100)))
                } catch where error.code == .timeout {
                    continue
                }
                // ["message", "+switch-master", "<name> <old ip> <old port> <new ip> <new port>"]
                guard let parts = reply.array, parts.count == 3, parts[0].string == "message",
                    let payload = parts[2].string, payload.split(separator: " ").first.map(String.init) == sentinel.primaryName
                else { continue }
                announced.store(true, ordering: .releasing)
            }
        } catch {
            return
        }
    }
}
