/// Every failure of the Redis client: what happened, and what the operator can do about it.
public struct RedisError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The kind of failure. New codes may be added; switch with a default.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case invalidURL = "invalid_url"
            case connectionRefused = "connection_refused"
            case connectFailed = "connect_failed"
            case timeout
            case authenticationFailed = "authentication_failed"
            case serverError = "server_error"
            case connectionClosed = "connection_closed"
            case protocolError = "protocol_error"
            case replyTooLarge = "reply_too_large"
            case tls
            case io
            case clientClosed = "client_closed"
            case clusterNode = "cluster_node"
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The URL could not be parsed; nothing was connected.
        public static let invalidURL = Code(.invalidURL)
        /// Nothing listens at the address.
        public static let connectionRefused = Code(.connectionRefused)
        /// The address could not be resolved or reached.
        public static let connectFailed = Code(.connectFailed)
        /// The connect or command timeout passed without an answer.
        public static let timeout = Code(.timeout)
        /// AUTH was refused (wrong user or password), or the server wants a password.
        public static let authenticationFailed = Code(.authenticationFailed)
        /// The server answered with an error reply (`-ERR ...`, `-WRONGTYPE ...`).
        public static let serverError = Code(.serverError)
        /// The server closed the connection.
        public static let connectionClosed = Code(.connectionClosed)
        /// The bytes from the server were not valid RESP.
        public static let protocolError = Code(.protocolError)
        /// The server announced or sent a reply larger than the client accepts.
        public static let replyTooLarge = Code(.replyTooLarge)
        /// The TLS handshake or certificate check failed.
        public static let tls = Code(.tls)
        /// A socket call failed.
        public static let io = Code(.io)
        /// The client was closed by its owner.
        public static let clientClosed = Code(.clientClosed)
        /// The server is a Redis Cluster node (its HELLO says `mode cluster`): refused at connect,
        /// before any of the caller's commands was sent.
        public static let clusterNode = Code(.clusterNode)

        public var description: String { base.rawValue }
    }

    /// The kind of failure.
    public let code: Code
    /// What happened and, where it helps, what to do next. Never contains a password.
    public let message: String
    /// For `.serverError`: the first word of the server's error (`ERR`, `WRONGTYPE`, `NOSCRIPT`, `NOPERM`).
    public let serverErrorPrefix: String?

    package init(_ code: Code, _ message: String, serverErrorPrefix: String? = nil) {
        self.code = code
        self.message = message
        self.serverErrorPrefix = serverErrorPrefix
    }

    /// An error reply from the server, classified.
    package static func fromServer(_ text: String, context: String? = nil) -> RedisError {
        let prefix = text.split(separator: " ", maxSplits: 1).first.map(String.init) ?? "ERR"
        let where_ = context.map { " (\($0))" } ?? ""
        switch prefix {
        case "WRONGPASS", "NOAUTH":
            return RedisError(
                .authenticationFailed,
                "Redis refused authentication\(where_): \(text). Check the user and password in the Redis URL.",
                serverErrorPrefix: prefix)
        case "MOVED", "ASK", "CROSSSLOT", "CLUSTERDOWN", "TRYAGAIN":
            // Only a cluster sends these. The connect refuses one it can tell (HELLO's mode); these
            // come from one it could not (a Redis before 6 has no HELLO).
            return RedisError(
                .serverError, "Redis answered with a Redis Cluster error\(where_): \(text). \(clusterAdvice)", serverErrorPrefix: prefix)
        default:
            return RedisError(.serverError, "Redis answered with an error\(where_): \(text)", serverErrorPrefix: prefix)
        }
    }

    /// The connect to `address` reached a Redis Cluster node.
    package static func clusterNode(at address: String) -> RedisError {
        RedisError(.clusterNode, "\(address) is a Redis Cluster node (HELLO says mode cluster). \(clusterAdvice)")
    }

    private static let clusterAdvice =
        "rollout-gate needs a standalone primary or Sentinel, not Redis Cluster: point the Redis URL (--redis-url, REDIS_URL) at a "
        + "standalone primary (redis://host:6379) or at its sentinels (redis-sentinel://host:26379#name). "
        + "See docs/operations.md, \"Why not Redis Cluster\"."

    /// Whether the connection that produced this error can no longer be trusted.
    package var breaksConnection: Bool {
        code != .serverError && code != .invalidURL
    }

    public var description: String { message }
}
