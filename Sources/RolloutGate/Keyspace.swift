public import RolloutRedis

/// The flags keyspace: every key of one feature, as plain strings operators can write with
/// redis-cli. This is a contract (README, "The keyspace"); keys may be added, never renamed.
public struct FeatureKeys: Sendable, Hashable {
    /// The feature the keys belong to.
    public let feature: FeatureName

    /// The keys of `feature`.
    public init(_ feature: FeatureName) { self.feature = feature }

    private func key(_ suffix: String) -> String { "flags:\(feature.rawValue):\(suffix)" }

    /// `flags:<f>:enabled`: boolean; only an explicit false is the kill switch.
    public var enabled: String { key("enabled") }
    /// `flags:<f>:rollout_percent`: "0" to "100", at most three decimals; absent is 0.
    public var rolloutPercent: String { key("rollout_percent") }
    /// `flags:<f>:internal_only`: boolean; absent is false.
    public var internalOnly: String { key("internal_only") }
    /// `flags:<f>:paused`: boolean read by the controller; the gate ignores it.
    public var paused: String { key("paused") }
    /// `flags:<f>:last_change_time`: ISO-8601 UTC of the last percent change.
    public var lastChangeTime: String { key("last_change_time") }
    /// `flags:<f>:last_percent`: the percent before the last change.
    public var lastPercent: String { key("last_percent") }
    /// `flags:<f>:bucketing`: "v1" or "v2"; absent is v2.
    public var bucketing: String { key("bucketing") }
    /// `flags:<f>:allow`: SET of stickiness keys always on.
    public var allow: String { key("allow") }
    /// `flags:<f>:deny`: SET of stickiness keys always off.
    public var deny: String { key("deny") }
    /// `flags:<f>:workspaces`: HASH of workspace id → percent.
    public var workspaces: String { key("workspaces") }

    /// The string keys, in the order ``FeatureState/read(_:from:)`` expects their GET replies.
    public var stringKeys: [String] {
        [enabled, rolloutPercent, internalOnly, paused, lastChangeTime, lastPercent, bucketing]
    }

    /// Every key of the feature, in the order ``readCommands`` reads them.
    public var all: [String] { stringKeys + [allow, deny, workspaces] }

    /// The type of each key, in the order of ``readCommands``.
    package static let readTypes: [KeyType] = Array(repeating: .string, count: 7) + [.set, .set, .hash]

    /// The index of `rollout_percent`'s GET in ``readCommands``.
    static let rolloutPercentReply = 1

    /// How many commands ``readCommands`` sends (and replies it gets), to slice a pipeline
    /// that reads several features.
    public static let readCommandCount = 10

    /// The commands that read the whole feature, one per key, in one round trip. GET, not MGET:
    /// MGET answers nil for a key of another type, which would read a kill switch written as a
    /// list as absent; GET answers WRONGTYPE.
    public var readCommands: [RedisCommand] {
        stringKeys.map { RedisCommand("GET", $0) } + [
            RedisCommand("SMEMBERS", allow),
            RedisCommand("SMEMBERS", deny),
            RedisCommand("HGETALL", workspaces),
        ]
    }

    /// The feature a key belongs to, if it is a `flags:<f>:...` key with a valid name.
    public static func feature(ofKey key: String) -> FeatureName? {
        guard key.hasPrefix("flags:") else { return nil }
        let rest = key.dropFirst("flags:".count)
        guard let colon = rest.firstIndex(of: ":") else { return nil }
        return try? FeatureName(String(rest[..<colon]))
    }
}

/// How actors are hashed into buckets (docs/bucketing.md).
public enum BucketingScheme: String, Sendable, Hashable, CaseIterable {
    /// The original Python gate's: SHA-256 of the stickiness key, 100 buckets, whole percents.
    case v1
    /// The default: SHA-256 of `feature:key`, 100,000 buckets, 0.001% steps.
    case v2
}

extension BucketingScheme {
    /// The scheme a `flags:<f>:bucketing` value names ("v1", " V2 "); nil for anything else.
    public init?(storedValue text: some StringProtocol) {
        self.init(rawValue: text.trimmingSpaces().lowercased())
    }

    /// The one check of every percent written for a feature bucketed with this scheme: by
    /// the CLI, the operator API, the controller's policy and a snapshot restore. v1 takes
    /// whole numbers only: it is the original Python gate's scheme, and that gate reads the
    /// percent with Python's `int()`, for which "37.5", "10.0" and "0.5" are not numbers (it
    /// answers 0%, and its controller crashes). `what` names the value in the message.
    public func checkWritable(_ percent: RolloutPercent, for feature: FeatureName, as what: String = "The percent") throws(KeyspaceError) {
        guard self == .v1, percent.thousandths % 1000 != 0 else { return }
        let below = percent.wholePercent
        throw KeyspaceError(
            "\(what) \(percent) cannot be written for \(feature): it is bucketed with v1, the original Python gate's scheme, and that "
                + "gate reads the percent with Python's int(), which cannot read \"\(percent)\": it would answer 0% (and the original "
                + "controller would crash). Give a whole number (\(below) or \(below + 1)), or move \(feature) to v2 once no Python gate "
                + "reads it (`redis-cli SET flags:\(feature):bucketing v2`, which changes who is in its cohort: docs/migrating.md).")
    }
}

/// One feature's keys, parsed. Built only through ``read(from:)``, which refuses every value
/// it cannot parse instead of guessing.
public struct FeatureState: Sendable, Hashable {
    /// The feature.
    public var feature: FeatureName
    /// False only when `enabled` explicitly says so: the kill switch.
    public var enabled: Bool
    /// The rollout percent; 0 when the key is absent.
    public var rolloutPercent: RolloutPercent
    /// Whether only internal actors may see the feature.
    public var internalOnly: Bool
    /// Whether the controller must leave the feature alone.
    public var paused: Bool
    /// When the percent last changed, if ever.
    public var lastChangeTime: Timestamp?
    /// The percent before the last change, if recorded.
    public var lastPercent: RolloutPercent?
    /// The bucketing scheme.
    public var bucketing: BucketingScheme
    /// Stickiness keys that are always on.
    public var allow: Set<String>
    /// Stickiness keys that are always off.
    public var deny: Set<String>
    /// Per-workspace percents overriding ``rolloutPercent``.
    public var workspaces: [String: RolloutPercent]
    /// Whether any key of the feature exists at all.
    public var exists: Bool
    /// The environment variable ``rolloutPercent`` came from (`FLAGS_<FEATURE>_ROLLOUT_PERCENT`,
    /// when `rollout_percent` is absent from Redis); nil when it came from Redis or is the
    /// absent key's 0. Only the gate reads the environment.
    public var rolloutPercentVariable: String? = nil

    /// The state of a feature with no keys: enabled, 0%, nobody on.
    public static func absent(_ feature: FeatureName) -> FeatureState {
        FeatureState(
            feature: feature, enabled: true, rolloutPercent: .zero, internalOnly: false, paused: false, lastChangeTime: nil,
            lastPercent: nil, bucketing: .v2, allow: [], deny: [], workspaces: [:], exists: false)
    }

    /// Parses the replies of ``FeatureKeys/readCommands`` (in order). Every value that breaks
    /// the contract, and every key of another Redis type, is listed in the error, each naming
    /// its key.
    public static func read(_ feature: FeatureName, from replies: some Collection<RedisValue>) -> Result<FeatureState, InvalidFeatureState> {
        read(feature, from: replies, keyTypes: [:])
    }

    /// ``read(_:from:)``, naming in a wrong-type error the type `keyTypes` gives for the key
    /// (TYPE's answer), since WRONGTYPE does not say it.
    package static func read(
        _ feature: FeatureName, from replies: some Collection<RedisValue>, keyTypes: [String: String]
    ) -> Result<FeatureState, InvalidFeatureState> {
        let keys = FeatureKeys(feature)
        var problems: [KeyspaceError] = []
        var state = FeatureState.absent(feature)
        let replies = Array(replies)
        let count = FeatureKeys.readCommandCount
        guard replies.count == count else {
            return .failure(InvalidFeatureState(feature: feature, problems: [KeyspaceError("Redis sent \(replies.count) replies for \(count) reads.")]))
        }
        // Key names are built only for an error: most reads find nothing wrong.
        var contents: [KeyContent] = []
        contents.reserveCapacity(count)
        for (index, type) in FeatureKeys.readTypes.enumerated() {
            do throws(KeyspaceError) {
                contents.append(try KeyContent(replies[index], key: keys.all[index], type: type, actualType: keyTypes[keys.all[index]]))
            } catch {
                problems.append(error)
                contents.append(.absent)
            }
        }
        state.exists = contents.contains { if case .absent = $0 { false } else { true } }
        func reject(_ key: String, _ value: String, _ expected: String) {
            let shown = value.count > 40 ? String(value.prefix(40)) + "…" : value
            problems.append(KeyspaceError("\(key) holds \"\(shown)\", which is not \(expected).", key: key))
        }

        let text = contents.map(\.text)
        if let value = text[0] {
            if let flag = parseBool(value) { state.enabled = flag } else { reject(keys.enabled, value, "a boolean (true/false, 1/0, yes/no, on/off)") }
        }
        if let value = text[FeatureKeys.rolloutPercentReply] {
            if let percent = RolloutPercent(parsing: value) { state.rolloutPercent = percent } else {
                reject(keys.rolloutPercent, value, "a percent from 0 to 100 with at most three decimals")
            }
        }
        if let value = text[2] {
            if let flag = parseBool(value) { state.internalOnly = flag } else { reject(keys.internalOnly, value, "a boolean") }
        }
        if let value = text[3] {
            if let flag = parseBool(value) { state.paused = flag } else { reject(keys.paused, value, "a boolean") }
        }
        if let value = text[4], !value.trimmingSpaces().isEmpty {
            if let time = Timestamp(parsing: value) { state.lastChangeTime = time } else {
                reject(keys.lastChangeTime, value, "an ISO-8601 UTC time like 2025-10-08T15:30:00.123456+00:00")
            }
        }
        if let value = text[5], !value.trimmingSpaces().isEmpty {
            if let percent = RolloutPercent(parsing: value) { state.lastPercent = percent } else {
                reject(keys.lastPercent, value, "a percent from 0 to 100 with at most three decimals")
            }
        }
        if let value = text[6] {
            if let scheme = BucketingScheme(storedValue: value) { state.bucketing = scheme } else {
                reject(keys.bucketing, value, "v1 or v2")
            }
        }
        state.allow = Set(contents[7].elements.compactMap(\.string))
        state.deny = Set(contents[8].elements.compactMap(\.string))
        let fields = contents[9].elements
        var index = 0
        while index + 1 < fields.count {
            let workspace = fields[index].string ?? ""
            let value = fields[index + 1].string ?? ""
            if let percent = RolloutPercent(parsing: value) {
                state.workspaces[workspace] = percent
            } else {
                reject("\(keys.workspaces) field \(workspace)", value, "a percent from 0 to 100 with at most three decimals")
            }
            index += 2
        }
        if !problems.isEmpty { return .failure(InvalidFeatureState(feature: feature, problems: problems)) }
        return .success(state)
    }
}

/// A percent the process environment gives a feature whose `rollout_percent` is absent.
struct FallbackPercent: Sendable, Hashable {
    /// `FLAGS_<FEATURE>_ROLLOUT_PERCENT`.
    var variable: String
    /// Its value.
    var percent: RolloutPercent
    /// Whether the text is a plain integer (`10`, not `10.0` or `37.5`): the only form the
    /// original Python gate's `int()` reads.
    var isPlainInteger: Bool
}

extension FeatureState {
    /// This state with `fallback` as its percent if `replies` (those of
    /// ``FeatureKeys/readCommands``) found no `rollout_percent`: below every Redis value. A v1
    /// feature takes only a plain integer (`10`): the original Python gate reads the variable
    /// with `int()`, for which `10.0` and `37.5` are no numbers (0%), and the two must agree.
    func fallingBack(to fallback: FallbackPercent?, replies: [RedisValue]) -> FeatureState {
        guard let fallback, replies.count == FeatureKeys.readCommandCount, replies[FeatureKeys.rolloutPercentReply] == .null else {
            return self
        }
        guard bucketing != .v1 || fallback.isPlainInteger else { return self }
        var state = self
        state.rolloutPercent = fallback.percent
        state.rolloutPercentVariable = fallback.variable
        return state
    }
}

/// The Redis type a key of the contract must have.
package enum KeyType: String, Sendable {
    case string, set, hash

    /// The command that reads a whole key of this type.
    var command: String {
        switch self {
        case .string: "GET"
        case .set: "SMEMBERS"
        case .hash: "HGETALL"
        }
    }
}

/// What one read of a key (GET, SMEMBERS, HGETALL) found: nothing, a string, or a set's
/// members or a hash's fields and values. The one place a reply becomes a key's content, so
/// that a key of another type is an error naming it, never absent.
package enum KeyContent: Sendable, Hashable {
    case absent
    case string(String)
    case elements([RedisValue])

    /// The content of the key `name`, which must be a `type`, from the reply of its read. An error
    /// reply (WRONGTYPE: the key holds another type) is an error naming the key and, when
    /// known (`actualType`, TYPE's answer), the type it holds.
    package init(
        _ reply: RedisValue, key name: @autoclosure () -> String, type: KeyType, actualType: @autoclosure () -> String? = nil
    ) throws(KeyspaceError) {
        switch (reply, type) {
        case (.null, _): self = .absent
        case (.bulkString, .string): self = .string(reply.string ?? "")
        case (.array(let items), .set), (.array(let items), .hash): self = items.isEmpty ? .absent : .elements(items)
        case (.error(let text), _) where text.hasPrefix("WRONGTYPE"):
            let key = name()
            let holds = actualType().map { "holds a \($0)" } ?? "holds another Redis type"
            throw KeyspaceError(
                "\(key) \(holds), not a \(type.rawValue) (Redis answered \(type.command) with WRONGTYPE). Look with `redis-cli TYPE \(key)`, "
                    + "then delete the key and write it again as a \(type.rawValue).",
                key: key)
        case (.error(let text), _):
            let key = name()
            throw KeyspaceError("\(key) cannot be read (Redis answered \(type.command) with: \(text)).", key: key)
        default:
            let key = name()
            throw KeyspaceError("\(key): Redis answered \(type.command) with an unexpected reply; it should be a \(type.rawValue).", key: key)
        }
    }

    /// The string, when the key holds one.
    package var text: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    /// The members or fields and values, when the key holds a set or a hash; else none.
    package var elements: [RedisValue] {
        if case .elements(let items) = self { return items }
        return []
    }
}

/// A feature whose keys break the contract: the gate turns it off for everyone and reports it.
public struct InvalidFeatureState: Error, Sendable, Hashable, CustomStringConvertible {
    /// The feature.
    public let feature: FeatureName
    /// Each bad value, naming its key.
    public let problems: [KeyspaceError]

    /// The first key at fault (for the decision's reason).
    public var firstKey: String { problems.first?.key ?? "flags:\(feature):*" }

    public var description: String {
        "Feature \(feature) has invalid state, so it is off for everyone: " + problems.map(\.message).joined(separator: " ")
    }
}
