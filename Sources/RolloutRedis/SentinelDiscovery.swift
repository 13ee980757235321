import Synchronization

#if canImport(Glibc)
import Glibc
#endif

extension RedisConnection {
    /// A connection to the node `url` designates: for a direct URL its endpoint; for a sentinel
    /// URL the node the sentinels name now (the primary; a replica for a `reader` when the URL
    /// says `readFrom=replica`), checked with ROLE. Blocking: runs on a client's own queue.
    static func open(url: RedisURL, connectTimeout: Duration, commandTimeout: Duration, reader: ReaderAffinity?) throws(RedisError) -> RedisConnection {
        guard let sentinel = url.sentinel else {
            return try RedisConnection(url: url, connectTimeout: connectTimeout, commandTimeout: commandTimeout)
        }
        let primary = SentinelDiscovery(url: url, sentinel: sentinel, reader: nil, connectTimeout: connectTimeout, commandTimeout: commandTimeout)
        guard let reader, sentinel.readFrom == .replica else { return try primary.connect() }
        let replica = SentinelDiscovery(url: url, sentinel: sentinel, reader: reader, connectTimeout: connectTimeout, commandTimeout: commandTimeout)
        do {
            return try replica.connect()
        } catch {
            // No healthy replica: the primary answers reads rather than none.
            let connection = try primary.connect()
            reader.note(connection.url.endpoint)
            return connection
        }
    }
}

/// The node a gate's reader and its invalidation subscription share. With readFrom=replica
/// each picks among the healthy replicas; the second prefers the one the first chose, so the
/// invalidations that arrive come from the node the reads then see (`CLIENT TRACKING` on a
/// replica reports a key when that replica applied the change).
package final class ReaderAffinity: Sendable {
    private let chosen = Mutex<RedisURL.Endpoint?>(nil)

    package init() {}

    /// `candidates` with the shared node first. When it is not among them, the first candidate
    /// becomes the shared node at once (before connecting), so the reader and the subscription
    /// connecting at the same moment choose the same one.
    func ordered(_ candidates: [RedisURL.Sentinel.Address]) -> [RedisURL.Sentinel.Address] {
        let shared = chosen.withLock { chosen -> RedisURL.Sentinel.Address? in
            if case .tcp(let host, let port)? = chosen, candidates.contains(RedisURL.Sentinel.Address(host: host, port: port)) {
                return RedisURL.Sentinel.Address(host: host, port: port)
            }
            guard let first = candidates.first else { return nil }
            chosen = .tcp(host: first.host, port: first.port)
            return first
        }
        guard let shared else { return candidates }
        return [shared] + candidates.filter { $0 != shared }
    }

    /// Remembers the node a connection was made to.
    func note(_ endpoint: RedisURL.Endpoint) {
        chosen.withLock { $0 = endpoint }
    }
}

/// The Sentinel client protocol (Redis's "Sentinel clients" document): ask the sentinels in
/// turn, each bounded by the connect timeout, for the node's address; connect; check ROLE. A
/// node whose ROLE disagrees (a sentinel that has not seen a failover yet) is skipped; when no
/// sentinel named an agreeing node, the round is asked again after a short pause, for at most
/// four connect timeouts in all.
struct SentinelDiscovery {
    let url: RedisURL
    let sentinel: RedisURL.Sentinel
    /// Set when looking for a replica for a reader.
    let reader: ReaderAffinity?
    let connectTimeout: Duration
    let commandTimeout: Duration

    /// Why one sentinel gave no usable node, for the final error: addresses, never a password.
    private struct Miss {
        let sentinel: RedisURL.Sentinel.Address
        let reason: String
    }

    private var wantsReplica: Bool { reader != nil }

    func connect() throws(RedisError) -> RedisConnection {
        let giveUpAt = ContinuousClock.now.advanced(by: connectTimeout * 4)
        while true {
            var misses: [Miss] = []
            var roleDisagreed = false
            for address in sentinel.sentinels {
                do throws(RedisError) {
                    let candidates = try ask(address)
                    guard !candidates.isEmpty else {
                        misses.append(Miss(sentinel: address, reason: wantsReplica ? "no healthy replica of '\(sentinel.primaryName)'" : "does not know '\(sentinel.primaryName)'"))
                        continue
                    }
                    for node in candidates {
                        switch checked(node) {
                        case .success(let connection):
                            reader?.note(connection.url.endpoint)
                            return connection
                        case .failure(let miss):
                            if miss.roleDisagreed { roleDisagreed = true }
                            misses.append(Miss(sentinel: address, reason: miss.reason))
                        }
                    }
                } catch {
                    misses.append(Miss(sentinel: address, reason: Self.reason(error)))
                }
            }
            if !roleDisagreed || ContinuousClock.now.advanced(by: .milliseconds(100)) >= giveUpAt {
                throw RedisError(
                    .connectFailed,
                    "No sentinel named a reachable \(wantsReplica ? "replica" : "primary") for '\(sentinel.primaryName)': "
                        + misses.map { "\($0.sentinel) (\($0.reason))" }.joined(separator: ", ")
                        + ". Check that the sentinels in the Redis URL run and monitor '\(sentinel.primaryName)'.")
            }
            usleep(100_000)
        }
    }

    /// The nodes `address` names: the primary, or its healthy replicas in a random order.
    private func ask(_ address: RedisURL.Sentinel.Address) throws(RedisError) -> [RedisURL.Sentinel.Address] {
        let sentinelURL = RedisURL(
            endpoint: .tcp(host: address.host, port: address.port), username: sentinel.username, password: sentinel.password, tls: url.tls)
        let connection = try RedisConnection(url: sentinelURL, connectTimeout: connectTimeout, commandTimeout: connectTimeout, peer: .sentinel)
        defer { connection.close() }
        if wantsReplica {
            let reply = try connection.send([RedisCommand("SENTINEL", "replicas", sentinel.primaryName)]).first ?? .null
            if case .error(let text) = reply { throw RedisError.fromServer(text, context: "SENTINEL replicas") }
            return reader?.ordered(Self.healthyReplicas(reply).shuffled()) ?? []
        }
        let reply = try connection.send([RedisCommand("SENTINEL", "get-master-addr-by-name", sentinel.primaryName)]).first ?? .null
        if case .error(let text) = reply { throw RedisError.fromServer(text, context: "SENTINEL get-master-addr-by-name") }
        guard let parts = reply.array, parts.count == 2, let host = parts[0].string, let port = parts[1].string.flatMap({ Int($0) }) else {
            return []
        }
        return [RedisURL.Sentinel.Address(host: host, port: port)]
    }

    /// Replicas whose flags hold none of s_down, o_down, disconnected, and whose link to the
    /// primary is ok. Each entry of `SENTINEL replicas` is a flat list of field, value.
    static func healthyReplicas(_ reply: RedisValue) -> [RedisURL.Sentinel.Address] {
        (reply.array ?? []).compactMap { entry in
            let fields = entry.array?.compactMap(\.string) ?? []
            var info: [String: String] = [:]
            for index in stride(from: 0, to: fields.count - 1, by: 2) { info[fields[index]] = fields[index + 1] }
            let flags = (info["flags"] ?? "").split(separator: ",")
            guard !flags.contains(where: { ["s_down", "o_down", "disconnected"].contains($0) }), info["master-link-status"] == "ok",
                let host = info["ip"], let port = info["port"].flatMap({ Int($0) })
            else { return nil }
            return RedisURL.Sentinel.Address(host: host, port: port)
        }
    }

    private struct NodeMiss: Error {
        let reason: String
        let roleDisagreed: Bool
    }

    /// A connection to `node` (AUTH and SELECT with the URL's credentials) whose ROLE is the one wanted.
    private func checked(_ node: RedisURL.Sentinel.Address) -> Result<RedisConnection, NodeMiss> {
        let nodeURL = RedisURL(
            endpoint: .tcp(host: node.host, port: node.port), username: url.username, password: url.password, database: url.database,
            tls: url.tls)
        let connection: RedisConnection
        let role: [RedisValue]
        do throws(RedisError) {
            connection = try RedisConnection(url: nodeURL, connectTimeout: connectTimeout, commandTimeout: commandTimeout)
            let reply = try connection.send([RedisCommand("ROLE")], deadline: ContinuousClock.now.advanced(by: connectTimeout)).first
            role = reply?.array ?? []
        } catch {
            return .failure(NodeMiss(reason: "named \(node), \(Self.reason(error))", roleDisagreed: false))
        }
        let kind = role.first?.string ?? "unknown"
        if wantsReplica {
            // ROLE of a replica: slave, primary host, primary port, link state, offset.
            if kind == "slave", role.count >= 4, role[3].string == "connected" { return .success(connection) }
            connection.close()
            return .failure(NodeMiss(reason: "named \(node), whose ROLE is \(kind) \(role.count >= 4 ? role[3].string ?? "" : ""), not a connected replica", roleDisagreed: true))
        }
        if kind == "master" { return .success(connection) }
        connection.close()
        return .failure(NodeMiss(reason: "named \(node), whose ROLE is \(kind), not master", roleDisagreed: true))
    }

    /// A short reason for the error list: the code's words (`connection refused`, `timeout`);
    /// for TLS, what OpenSSL said and what to check (the message holds addresses and file
    /// paths, never a password).
    private static func reason(_ error: RedisError) -> String {
        switch error.code {
        case .serverError: return error.message
        case .tls: return "TLS: " + (error.message.hasSuffix(".") ? String(error.message.dropLast()) : error.message)
        default: return "\(error.code)".replacingUnderscores()
        }
    }
}

extension String {
    fileprivate func replacingUnderscores() -> String { String(map { $0 == "_" ? " " : $0 }) }
}
