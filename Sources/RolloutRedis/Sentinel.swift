extension RedisURL {
    /// The sentinel part of a `redis-sentinel://` URL: which sentinels to ask, for which
    /// primary, with which credentials, and where the gate reads. The URL's user and password
    /// authenticate to the data nodes; these to the sentinels.
    public struct Sentinel: Sendable, Hashable {
        /// One sentinel's address.
        public struct Address: Sendable, Hashable, CustomStringConvertible {
            /// Host name or address.
            public var host: String
            /// TCP port (26379 by default).
            public var port: Int

            /// An address from its parts.
            public init(host: String, port: Int) {
                self.host = host
                self.port = port
            }

            /// `host:port` (`[v6]:port`): never holds a secret.
            public var description: String { (host.contains(":") ? "[\(host)]" : host) + ":\(port)" }
        }

        /// Which node a reader connects to.
        public enum ReadFrom: String, Sendable, Hashable {
            /// The primary (the default; writes always go there).
            case primary
            /// A healthy replica connected to its primary.
            case replica
        }

        /// The port a sentinel listens on when the URL gives none.
        public static let defaultPort = 26379

        /// The sentinels, asked in this order.
        public var sentinels: [Address]
        /// The name the sentinels monitor the primary under (`sentinel monitor <name> ...`).
        public var primaryName: String
        /// The ACL user for AUTH to the sentinels (`sentinelUser=`).
        public var username: String?
        /// The password for AUTH to the sentinels (`sentinelPassword=`). Never printed.
        public var password: String?
        /// Where a reader connects (`readFrom=`); writers always use the primary.
        public var readFrom: ReadFrom

        /// A sentinel configuration from its parts.
        public init(sentinels: [Address], primaryName: String, username: String? = nil, password: String? = nil, readFrom: ReadFrom = .primary) {
            self.sentinels = sentinels
            self.primaryName = primaryName
            self.username = username
            self.password = password
            self.readFrom = readFrom
        }

        /// Parses `host1[:port1],host2[:port2]...` and the fragment's primary name.
        init(hosts text: Substring, primaryName: String?) throws(RedisError) {
            guard let primaryName, !primaryName.isEmpty else {
                throw RedisURL.invalid("a sentinel URL names the primary after a '#': redis-sentinel://host:26379#mymaster")
            }
            var sentinels: [Address] = []
            for part in text.split(separator: ",", omittingEmptySubsequences: false) {
                guard !part.isEmpty else { throw RedisURL.invalid("the sentinel list has an empty entry between commas") }
                let (host, port) = try RedisURL.hostAndPort(part, defaultPort: Self.defaultPort)
                sentinels.append(Address(host: host, port: port))
            }
            self.init(sentinels: sentinels, primaryName: primaryName)
        }

        /// Applies a query option (name lowercased); its error never echoes the value.
        mutating func apply(option name: String, value: String) throws(RedisError) {
            switch name {
            case "sentineluser": username = value.isEmpty ? nil : value
            case "sentinelpassword": password = value
            default:
                guard let choice = ReadFrom(rawValue: value.lowercased()) else {
                    throw RedisURL.invalid("readFrom= is not primary or replica")
                }
                readFrom = choice
            }
        }

        /// The query options of the URL's description, passwords as `***`.
        var options: [String] {
            var options: [String] = []
            if let username { options.append("sentinelUser=\(username)") }
            if password != nil { options.append("sentinelPassword=***") }
            if readFrom != .primary { options.append("readFrom=\(readFrom.rawValue)") }
            return options
        }
    }

    /// Whether `other` reaches the same data: the same endpoint and database, and for sentinel
    /// URLs the same sentinels and primary name. Credentials, TLS files and `readFrom` may differ.
    package func reachesTheSameData(as other: RedisURL) -> Bool {
        endpoint == other.endpoint && database == other.database && sentinel?.sentinels == other.sentinel?.sentinels
            && sentinel?.primaryName == other.sentinel?.primaryName
    }
}
