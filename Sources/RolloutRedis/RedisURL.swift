/// Where and how to reach Redis, parsed from a URL:
/// `redis://[user[:password]@]host[:port][/db]`, `rediss://...` for TLS (query options
/// `cacert=`, `cert=`, `key=`, `insecure=`), `unix:///path/redis.sock[?db=N]`, or
/// `redis-sentinel://[user[:password]@]host1[:port1][,host2[:port2]...][/db]#primary-name`
/// (`rediss-sentinel://` for TLS): see ``Sentinel``.
///
/// Its `description` never shows the password.
public struct RedisURL: Sendable, Hashable, CustomStringConvertible {
    /// Where the server listens.
    public enum Endpoint: Sendable, Hashable {
        /// A host name or address and a TCP port.
        case tcp(host: String, port: Int)
        /// A Unix domain socket path.
        case unix(path: String)
    }

    /// TLS settings of a `rediss://` URL.
    public struct TLS: Sendable, Hashable {
        /// PEM file of the CA to trust; the system's trust store when nil.
        public var caCertificatePath: String?
        /// PEM client certificate, for servers that ask for one.
        public var certificatePath: String?
        /// PEM private key of the client certificate.
        public var keyPath: String?
        /// Skips certificate and host-name verification. For tests only.
        public var insecure: Bool

        /// TLS settings; by default the system's trust store, full verification, no client certificate.
        package init(caCertificatePath: String? = nil, certificatePath: String? = nil, keyPath: String? = nil, insecure: Bool = false) {
            self.caCertificatePath = caCertificatePath
            self.certificatePath = certificatePath
            self.keyPath = keyPath
            self.insecure = insecure
        }
    }

    /// Where the server listens.
    public var endpoint: Endpoint
    /// The ACL user name for AUTH; nil for the default user.
    public var username: String?
    /// The password for AUTH. Never printed.
    public var password: String?
    /// The database index selected after connecting.
    public var database: Int
    /// TLS settings; nil for a plain connection.
    public var tls: TLS?
    /// For a `redis-sentinel://` URL: the sentinels that name the data node at each connect
    /// (`endpoint` is then the first sentinel). Nil for a direct URL.
    public var sentinel: Sentinel?

    /// The default: `redis://127.0.0.1:6379`.
    public static let localDefault = RedisURL(endpoint: .tcp(host: "127.0.0.1", port: 6379))

    /// A URL from its parts.
    public init(
        endpoint: Endpoint, username: String? = nil, password: String? = nil, database: Int = 0, tls: TLS? = nil, sentinel: Sentinel? = nil
    ) {
        self.endpoint = endpoint
        self.username = username
        self.password = password
        self.database = database
        self.tls = tls
        self.sentinel = sentinel
    }

    /// Parses a URL; the error names what is wrong and never echoes any part of the URL but its
    /// scheme: without an '@', a password cannot be told from a host, port or option.
    public init(parsing text: String) throws(RedisError) {
        let trimmed = text.trimmingSpaces()
        guard let schemeEnd = trimmed.firstRange(of: "://") else {
            throw Self.invalid("it has no scheme; write redis://host:port, rediss://host:port, unix:///path or redis-sentinel://host:port#primary")
        }
        let scheme = trimmed[..<schemeEnd.lowerBound].lowercased()
        var rest = Substring(trimmed[schemeEnd.upperBound...])

        // The user info ends at the LAST '@', whatever the password holds (':', '?', '/', '#',
        // '@', '%'): nothing from it is ever echoed in an error. A literal '@' elsewhere (in a
        // query value) must be written %40.
        var username: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userInfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userInfo.firstIndex(of: ":") {
                let user = Self.percentDecoded(userInfo[..<colon])
                username = user.isEmpty ? nil : user
                password = Self.percentDecoded(userInfo[userInfo.index(after: colon)...])
            } else if !userInfo.isEmpty {
                // redis://secret@host is how redis-py and the original system wrote a bare password.
                password = Self.percentDecoded(userInfo)
            }
        }
        guard ["redis", "rediss", "unix", "redis-sentinel", "rediss-sentinel"].contains(scheme) else {
            // The text before "://" is shown only when it looks like a scheme: it could be a password.
            let isSchemeLike = scheme.first?.isLetter == true && scheme.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || "+.-".contains($0)) }
            throw Self.invalid("the scheme \(isSchemeLike ? "'\(scheme)' " : "")is not redis, rediss, unix, redis-sentinel or rediss-sentinel")
        }
        let isSentinel = scheme.hasSuffix("-sentinel")
        // The primary's name is the fragment; a '#' in a query value must be written %23.
        var primaryName: String?
        if isSentinel, let hash = rest.firstIndex(of: "#") {
            primaryName = Self.percentDecoded(rest[rest.index(after: hash)...])
            rest = rest[..<hash]
        }

        var query: [(String, String)] = []
        if let questionMark = rest.firstIndex(of: "?") {
            for pair in rest[rest.index(after: questionMark)...].split(separator: "&") {
                let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
                let name = Self.percentDecoded(parts[0]).lowercased()
                let value = parts.count > 1 ? Self.percentDecoded(parts[1]) : ""
                query.append((name, value))
            }
            rest = rest[..<questionMark]
        }

        var database = 0
        var tls: TLS?
        var sentinel: Sentinel?
        let endpoint: Endpoint
        switch scheme {
        case "redis", "rediss", "redis-sentinel", "rediss-sentinel":
            var hostPort = rest
            if let slash = rest.firstIndex(of: "/") {
                hostPort = rest[..<slash]
                let dbText = rest[rest.index(after: slash)...]
                if !dbText.isEmpty {
                    guard let db = Int(dbText), db >= 0 else {
                        throw Self.invalid("the database after the '/' is not a number from 0 up")
                    }
                    database = db
                }
            }
            if isSentinel {
                sentinel = try Sentinel(hosts: hostPort, primaryName: primaryName)
                endpoint = sentinel?.sentinels.first.map { .tcp(host: $0.host, port: $0.port) } ?? .tcp(host: "127.0.0.1", port: Sentinel.defaultPort)
            } else {
                let (host, port) = try Self.hostAndPort(hostPort)
                endpoint = .tcp(host: host, port: port)
            }
            if scheme.hasPrefix("rediss") { tls = TLS(caCertificatePath: nil, certificatePath: nil, keyPath: nil, insecure: false) }
        case "unix":
            guard rest.hasPrefix("/"), rest.count > 1 else {
                throw Self.invalid("a unix URL needs an absolute socket path: unix:///path/redis.sock")
            }
            endpoint = .unix(path: String(rest))
        default:
            throw Self.invalid("the scheme is not redis, rediss or unix")
        }

        for (name, value) in query {
            switch name {
            case "db":
                guard let db = Int(value), db >= 0 else { throw Self.invalid("db= is not a number from 0 up") }
                database = db
            case "password":
                password = value
            case "user", "username":
                username = value.isEmpty ? nil : value
            case "cacert", "cert", "key", "insecure":
                guard tls != nil else { throw Self.invalid("\(name)= needs TLS: write rediss:// instead of \(scheme)://") }
                switch name {
                case "cacert": tls?.caCertificatePath = value
                case "cert": tls?.certificatePath = value
                case "key": tls?.keyPath = value
                default:
                    guard let flag = parseBool(value) else { throw Self.invalid("insecure= is not true or false") }
                    tls?.insecure = flag
                }
            case "sentineluser", "sentinelpassword", "readfrom":
                guard sentinel != nil else { throw Self.invalid("\(name)= needs a sentinel URL: write redis-sentinel://host:26379#primary") }
                try sentinel?.apply(option: name, value: value)
            default:
                throw Self.invalid(
                    "it has an unknown option after the '?'; known: db, user, password, cacert, cert, key, insecure\(isSentinel ? ", sentinelUser, sentinelPassword, readFrom" : "")")
            }
        }
        if let tls, (tls.certificatePath == nil) != (tls.keyPath == nil) {
            throw Self.invalid("cert= and key= go together: give both or neither")
        }
        self.init(endpoint: endpoint, username: username, password: password, database: database, tls: tls, sentinel: sentinel)
    }

    /// The URL with the password replaced by `***`: safe for logs, errors and JSON.
    public var description: String {
        var auth = ""
        if let username { auth = username + (password == nil ? "" : ":***") + "@" } else if password != nil { auth = ":***@" }
        var options: [String] = []
        if let tls {
            if let ca = tls.caCertificatePath { options.append("cacert=\(ca)") }
            if let cert = tls.certificatePath { options.append("cert=\(cert)") }
            if let key = tls.keyPath { options.append("key=\(key)") }
            if tls.insecure { options.append("insecure=true") }
        }
        if let sentinel {
            let query = (options + sentinel.options).joined(separator: "&")
            let hosts = sentinel.sentinels.map(\.description).joined(separator: ",")
            return "\(tls == nil ? "redis" : "rediss")-sentinel://\(auth)\(hosts)/\(database)\(query.isEmpty ? "" : "?" + query)#\(sentinel.primaryName)"
        }
        switch endpoint {
        case .tcp(let host, let port):
            let shownHost = host.contains(":") ? "[\(host)]" : host
            let query = options.isEmpty ? "" : "?" + options.joined(separator: "&")
            return "\(tls == nil ? "redis" : "rediss")://\(auth)\(shownHost):\(port)/\(database)\(query)"
        case .unix(let path):
            return "unix://\(auth)\(path)" + (database == 0 ? "" : "?db=\(database)")
        }
    }

    static func hostAndPort(_ text: Substring, defaultPort: Int = 6379) throws(RedisError) -> (String, Int) {
        var host: Substring
        var portText: Substring?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { throw invalid("the IPv6 address has no closing ']'") }
            host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty {
                throw invalid("unexpected text after the IPv6 address")
            }
        } else if let colon = text.lastIndex(of: ":") {
            host = text[..<colon]
            portText = text[text.index(after: colon)...]
        } else {
            host = text
        }
        if host.isEmpty { host = "127.0.0.1" }
        var port = defaultPort
        if let portText {
            guard let value = Int(portText), (1...65535).contains(value) else {
                throw invalid("the port after the last ':' is not a number from 1 to 65535 (if that is a password, write user:password@host)")
            }
            port = value
        }
        return (percentDecoded(host), port)
    }

    static func invalid(_ why: String) -> RedisError {
        RedisError(.invalidURL, "The Redis URL is not valid: \(why).")
    }

    private static func percentDecoded(_ text: Substring) -> String {
        guard text.contains("%") else { return String(text) }
        var bytes: [UInt8] = []
        var iterator = Array(text.utf8)[...]
        while let byte = iterator.popFirst() {
            if byte == UInt8(ascii: "%"), iterator.count >= 2,
                let value = UInt8(String(decoding: iterator.prefix(2), as: UTF8.self), radix: 16)
            {
                bytes.append(value)
                iterator = iterator.dropFirst(2)
            } else {
                bytes.append(byte)
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// The keyspace's boolean words: true/false, 1/0, yes/no, on/off, any case, spaces ignored.
package func parseBool(_ text: String) -> Bool? {
    switch text.trimmingSpaces().lowercased() {
    case "true", "1", "yes", "on": return true
    case "false", "0", "no", "off": return false
    default: return nil
    }
}

extension StringProtocol {
    /// The text without leading and trailing spaces, tabs and line breaks.
    package func trimmingSpaces() -> String {
        let isSpace: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        guard let first = firstIndex(where: { !isSpace($0) }), let last = lastIndex(where: { !isSpace($0) }) else {
            return ""
        }
        return String(self[first...last])
    }
}
