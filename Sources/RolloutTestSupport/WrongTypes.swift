public import RolloutRedis

/// A Redis type a key can hold, and how to write a key of it.
public enum RedisKeyType: String, Sendable, CaseIterable {
    case string, list, set, hash, zset

    /// A command that creates `key` as this type holding `value` (a hash field `value` holding
    /// `value`, a sorted set member `value` scored 1).
    public func write(_ key: String, _ value: String) -> RedisCommand {
        switch self {
        case .string: RedisCommand("SET", key, value)
        case .list: RedisCommand("RPUSH", key, value)
        case .set: RedisCommand("SADD", key, value)
        case .hash: RedisCommand("HSET", key, value, value)
        case .zset: RedisCommand("ZADD", key, "1", value)
        }
    }
}

/// One key of a feature written as a type the keyspace contract does not allow.
public struct WrongTypeCase: Sendable, CustomStringConvertible {
    /// The key's suffix: `enabled` for `flags:<f>:enabled`.
    public let suffix: String
    /// The type the contract wants.
    public let expected: RedisKeyType
    /// The type it is written as.
    public let written: RedisKeyType
    /// The value written: one that would be valid as the right type, so that only the type is wrong.
    public let value: String

    /// The commands that put `feature` at 100%, enabled, open to everyone, then write this
    /// case's key with the wrong type: read as absent, the key would leave the feature on.
    public func setUp(_ feature: String) -> [RedisCommand] {
        let key = "flags:\(feature):\(suffix)"
        let open = [("rollout_percent", "100"), ("enabled", "true"), ("internal_only", "false")].filter { $0.0 != suffix }
        return open.map { RedisCommand("SET", "flags:\(feature):\($0.0)", $0.1) } + [written.write(key, value)]
    }

    public var description: String { "\(suffix) as a \(written)" }

    /// Every key of the feature's keyspace, each as every type it must not be (strings as a
    /// list, set, hash and sorted set; allow and deny as a string or hash; workspaces as a
    /// string or set).
    public static let all: [WrongTypeCase] = {
        let strings = [
            ("enabled", "false"), ("rollout_percent", "100"), ("internal_only", "false"), ("paused", "false"),
            ("last_change_time", "2025-10-08T15:30:00Z"), ("last_percent", "10"), ("bucketing", "v2"),
        ]
        var cases: [WrongTypeCase] = []
        for (suffix, value) in strings {
            for written in [RedisKeyType.list, .set, .hash, .zset] {
                cases.append(WrongTypeCase(suffix: suffix, expected: .string, written: written, value: value))
            }
        }
        for suffix in ["allow", "deny"] {
            for written in [RedisKeyType.string, .hash] { cases.append(WrongTypeCase(suffix: suffix, expected: .set, written: written, value: "a")) }
        }
        for written in [RedisKeyType.string, .set] { cases.append(WrongTypeCase(suffix: "workspaces", expected: .hash, written: written, value: "100")) }
        return cases
    }()
}
