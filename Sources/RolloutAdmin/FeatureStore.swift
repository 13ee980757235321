import Foundation
public import RolloutGate
public import RolloutRedis

/// Operator reads and writes of the flags keyspace, each change followed by its audit entry.
/// The gate never writes; this is the one place that does for people.
public struct FeatureStore: Sendable {
    /// The Redis connection used.
    public let redis: RedisClient
    /// Where changes are recorded.
    public let auditLog: AuditLog
    /// Who is written in the audit log's `by=` field.
    public let author: String
    let now: @Sendable () -> Timestamp

    /// A store writing through `redis` and recording in `auditLog`; `now` is injected for tests.
    public init(redis: RedisClient, auditLog: AuditLog, author: String = "manual", now: @escaping @Sendable () -> Timestamp = Timestamp.now) {
        self.redis = redis
        self.auditLog = auditLog
        self.author = author
        self.now = now
    }

    // MARK: Reading

    /// Every feature that has at least one key, found with SCAN (never KEYS), and the keys
    /// whose names are not a valid `flags:<feature>:<key>`.
    public func listFeatures() async throws(RedisError) -> (features: [FeatureName], strayKeys: [String]) {
        let keys = try await redis.scan(matching: "flags:*")
        var features = Set<FeatureName>()
        var stray: [String] = []
        for key in keys {
            if let feature = FeatureKeys.feature(ofKey: key) { features.insert(feature) } else { stray.append(key) }
        }
        return (features.sorted(), stray.sorted())
    }

    /// The parsed state of each feature, one pipelined round trip for all (two when a key
    /// holds the wrong Redis type: TYPE then names the type it holds).
    public func read(_ features: [FeatureName]) async throws(RedisError) -> [Result<FeatureState, InvalidFeatureState>] {
        let count = FeatureKeys.readCommandCount
        let replies = try await redis.pipeline(features.flatMap { FeatureKeys($0).readCommands })
        let refused = replies.indices.compactMap { index in
            if case .error = replies[index] { FeatureKeys(features[index / count]).all[index % count] } else { nil }
        }
        var keyTypes: [String: String] = [:]
        if !refused.isEmpty {
            let types = try await redis.pipeline(refused.map { RedisCommand("TYPE", $0) })
            for (key, type) in zip(refused, types) { keyTypes[key] = type.string }
        }
        return features.enumerated().map { index, feature in
            FeatureState.read(feature, from: replies[(index * count)..<((index + 1) * count)], keyTypes: keyTypes)
        }
    }

    /// Every key of `feature` with its raw value and Redis type, for `rollout flags get`.
    public func rawKeys(of feature: FeatureName) async throws(RedisError) -> [(key: String, type: String, value: RedisValue)] {
        let keys = FeatureKeys(feature).all + FeatureKeys(feature).controllerKeys
        let types = try await redis.pipeline(keys.map { RedisCommand("TYPE", $0) })
        let values = try await redis.pipeline(zip(keys, types).map { readWhole($0, type: $1.string) })
        return zip(keys, zip(types, values)).compactMap { key, pair in
            guard let type = pair.0.string, type != "none" else { return nil }
            return (key, type, pair.1)
        }
    }

    // MARK: Writing

    /// Creates the original system's initial state (enabled true, internal_only true,
    /// rollout_percent 0, paused false) with SET NX: an existing key is never overwritten.
    /// Returns the keys created.
    @discardableResult
    public func initialize(_ feature: FeatureName, reason: String) async throws(AdminError) -> [String] {
        let keys = FeatureKeys(feature)
        let initial = [(keys.enabled, "true"), (keys.internalOnly, "true"), (keys.rolloutPercent, "0"), (keys.paused, "false")]
        let replies = try await call { try await redis.pipeline(initial.map { RedisCommand("SET", $0.0, $0.1, "NX") }) }
        var created: [String] = []
        for ((key, _), reply) in zip(initial, replies) {
            if case .error(let text) = reply { throw AdminError(.redis(RedisError.fromServer(text, context: key))) }
            if reply == .status("OK") { created.append(key) }
        }
        if !created.isEmpty {
            try record(feature, "initialized (\(created.map { $0.split(separator: ":").last.map(String.init) ?? $0 }.joined(separator: ", ")))", reason)
        }
        return created
    }

    /// Sets rollout_percent, recording the previous value in last_percent and the time in
    /// last_change_time, atomically (one Lua script). Returns the previous percent.
    @discardableResult
    public func setPercent(_ feature: FeatureName, to percent: RolloutPercent, reason: String) async throws(AdminError) -> RolloutPercent? {
        let keys = FeatureKeys(feature)
        let time = now()
        let reply = try await call {
            try await redis.evaluate(
                Scripts.setPercent, keys: [keys.rolloutPercent, keys.lastPercent, keys.lastChangeTime],
                arguments: [percent.description, time.description])
        }
        let previousText = reply.string
        let previous = previousText.flatMap { RolloutPercent(parsing: $0) }
        let before = previousText.map { previous == nil ? "\"\($0)\" (invalid)" : "\($0)%" } ?? "0%"
        try record(feature, "\(before) -> \(percent)%", reason, at: time)
        return previous
    }

    /// Sets `paused`: the controller leaves a paused feature alone; the gate ignores it.
    /// Resuming also clears `paused_reason` (set when flap protection paused the feature).
    public func setPaused(_ feature: FeatureName, _ paused: Bool, reason: String) async throws(AdminError) {
        let keys = FeatureKeys(feature)
        if paused {
            try await set(keys.paused, "true")
        } else {
            _ = try await call { try await redis.transaction([RedisCommand("SET", keys.paused, "false"), RedisCommand("DEL", keys.pausedReason)]) }
        }
        try record(feature, paused ? "paused" : "resumed", reason)
    }

    /// Sets `enabled`; false is the kill switch: off for everyone at once.
    public func setEnabled(_ feature: FeatureName, _ enabled: Bool, reason: String) async throws(AdminError) {
        try await set(FeatureKeys(feature).enabled, enabled ? "true" : "false")
        try record(feature, enabled ? "kill switch off (enabled)" : "kill switch on (disabled)", reason)
    }

    /// Sets `internal_only`.
    public func setInternalOnly(_ feature: FeatureName, _ internalOnly: Bool, reason: String) async throws(AdminError) {
        try await set(FeatureKeys(feature).internalOnly, internalOnly ? "true" : "false")
        try record(feature, "internal_only \(internalOnly)", reason)
    }

    /// Which member list a change is about.
    public enum MemberList: String, Sendable {
        /// `flags:<f>:allow`: always on.
        case allow
        /// `flags:<f>:deny`: always off.
        case deny
    }

    /// Adds stickiness keys to the allow or deny set; returns how many were new.
    @discardableResult
    public func add(_ ids: [String], to list: MemberList, of feature: FeatureName, reason: String) async throws(AdminError) -> Int {
        try await changeMembers(ids, list, feature, command: "SADD", sign: "+", reason: reason)
    }

    /// Removes stickiness keys from the allow or deny set; returns how many were there.
    @discardableResult
    public func remove(_ ids: [String], from list: MemberList, of feature: FeatureName, reason: String) async throws(AdminError) -> Int {
        try await changeMembers(ids, list, feature, command: "SREM", sign: "-", reason: reason)
    }

    /// Sets a workspace's own percent.
    public func setWorkspace(_ workspace: String, of feature: FeatureName, to percent: RolloutPercent, reason: String) async throws(AdminError) {
        guard !workspace.isEmpty else { throw AdminError(.invalidInput("The workspace id cannot be empty.")) }
        _ = try await call { try await redis.send("HSET", FeatureKeys(feature).workspaces, workspace, percent.description) }
        try record(feature, "workspace \(workspace) -> \(percent)%", reason)
    }

    /// Removes a workspace's own percent; its actors follow rollout_percent again.
    public func unsetWorkspace(_ workspace: String, of feature: FeatureName, reason: String) async throws(AdminError) {
        _ = try await call { try await redis.send("HDEL", FeatureKeys(feature).workspaces, workspace) }
        try record(feature, "workspace \(workspace) unset", reason)
    }

    private func changeMembers(
        _ ids: [String], _ list: MemberList, _ feature: FeatureName, command: String, sign: String, reason: String
    ) async throws(AdminError) -> Int {
        guard !ids.isEmpty else { throw AdminError(.invalidInput("Give at least one id.")) }
        if let empty = ids.firstIndex(where: { $0.isEmpty }) {
            throw AdminError(.invalidInput("Id number \(empty + 1) is empty; ids are stickiness keys like alice or acme:alice."))
        }
        let keys = FeatureKeys(feature)
        let key = list == .allow ? keys.allow : keys.deny
        let reply = try await call { try await redis.send(RedisCommand(command, [key] + ids)) }
        // A long list is summarised: the log stays one readable line per change.
        let shown = ids.count <= 20 ? ids.joined(separator: ",") : "\(ids.count) ids (\(ids.prefix(3).joined(separator: ",")) … \(ids.last ?? ""))"
        try record(feature, "\(list.rawValue) \(sign)\(shown)", reason)
        return Int(reply.integer ?? 0)
    }

    private func set(_ key: String, _ value: String) async throws(AdminError) {
        _ = try await call { try await redis.send("SET", key, value) }
    }

    func record(_ feature: FeatureName, _ change: String, _ reason: String, at time: Timestamp? = nil) throws(AdminError) {
        do {
            try auditLog.append(AuditLog.Entry(time: time ?? now(), feature: feature, change: change, reason: reason, by: author))
        } catch {
            throw AdminError(.auditLog(error))
        }
    }

    func call<Result>(_ body: () async throws -> Result) async throws(AdminError) -> Result {
        do {
            return try await body()
        } catch let error as RedisError {
            throw AdminError(.redis(error))
        } catch {
            throw AdminError(.redis(RedisError(.io, "\(error)")))
        }
    }
}

/// Why an operator change failed; nothing was changed unless the cause is `.auditLog`
/// (then Redis was changed and the log could not record it).
public struct AdminError: Error, Sendable, CustomStringConvertible {
    /// The cause.
    public enum Cause: Sendable {
        /// Redis could not be reached or refused the change.
        case redis(RedisError)
        /// The change was made but could not be recorded.
        case auditLog(AuditLogError)
        /// The request itself is wrong.
        case invalidInput(String)
    }

    /// The cause.
    public let cause: Cause

    init(_ cause: Cause) { self.cause = cause }

    public var description: String {
        switch cause {
        case .redis(let error): return error.description
        case .auditLog(let error): return "The change was made in Redis, but the audit log was not written: \(error)"
        case .invalidInput(let text): return text
        }
    }
}

extension Timestamp {
    /// The current wall-clock time.
    @Sendable
    public static func now() -> Timestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Timestamp(microsecondsSinceEpoch: Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1000)
    }
}

#if canImport(Glibc)
import Glibc
#endif

extension FeatureStore {
    /// Writes every key of `features` (or every `flags:*` key) to `path` as JSON, and its
    /// SHA-256 to `path.sha256` in `sha256sum` format. Returns the snapshot.
    @discardableResult
    public func saveSnapshot(to path: String, features: [FeatureName]?) async throws -> FlagSnapshot {
        let snapshot = try await FlagSnapshot.capture(from: redis, features: features, at: Timestamp.now())
        try write(snapshot, to: path)
        return snapshot
    }

    /// What a restore did or, in a dry run, would do.
    public struct RestoreResult: Sendable {
        /// One line per key: `+` added, `-` removed, `~` changed.
        public var changes: [String]
        /// Where the state before the restore was saved (nil in a dry run).
        public var preRestorePath: String?
    }

    /// Restores `path`: checks its SHA-256 first and refuses a mismatch, saves the current state
    /// to `path.pre-restore-<time>.json`, then replaces every key in the snapshot's scope in one
    /// MULTI/EXEC. Each restored feature gets an audit entry. A dry run only computes the changes.
    public func restoreSnapshot(from path: String, dryRun: Bool) async throws -> RestoreResult {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw SnapshotError("Cannot read the snapshot \(path).")
        }
        guard let checksumText = FileManager.default.contents(atPath: path + ".sha256"),
            let expected = String(decoding: checksumText, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }).first
        else {
            throw SnapshotError("\(path).sha256 is missing: a snapshot is restored only with its checksum. Nothing was changed.")
        }
        let actual = sha256Hex(data)
        guard actual == expected.lowercased() else {
            throw SnapshotError("\(path) does not match its checksum (\(expected.prefix(12))… expected, \(actual.prefix(12))… found): it was altered or is incomplete. Nothing was changed.")
        }
        let snapshot = try FlagSnapshot.decode(data, path: path)
        let scope = try snapshot.features.map { try $0.map { name throws(KeyspaceError) in try FeatureName(name) } }
        let current = try await FlagSnapshot.capture(from: redis, features: scope, at: now())
        let changes = snapshot.difference(from: current)
        guard !dryRun else { return RestoreResult(changes: changes, preRestorePath: nil) }

        let stamp = now().secondsDescription.replacingOccurrences(of: ":", with: "").replacingOccurrences(of: "-", with: "")
        let preRestorePath = "\(path).pre-restore-\(stamp).json"
        try write(current, to: preRestorePath)
        guard try await redis.transaction(snapshot.restoreCommands(replacing: current.keys.map(\.key))) != nil else {
            throw RedisError(.serverError, "Redis aborted the restore transaction; nothing was changed.")
        }
        let touched = Set((snapshot.keys + current.keys).compactMap { FeatureKeys.feature(ofKey: $0.key) })
        for feature in touched.sorted() {
            try record(feature, "restored from snapshot \(path) (sha256 \(actual.prefix(12)))", "snapshot restore; previous state in \(preRestorePath)")
        }
        return RestoreResult(changes: changes, preRestorePath: preRestorePath)
    }

    private func write(_ snapshot: FlagSnapshot, to path: String) throws {
        let data = try snapshot.encoded()
        let name = (path as NSString).lastPathComponent
        guard FileManager.default.createFile(atPath: path, contents: data),
            FileManager.default.createFile(atPath: path + ".sha256", contents: Data("\(sha256Hex(data))  \(name)\n".utf8))
        else {
            throw SnapshotError("Cannot write \(path) or \(path).sha256: check the directory exists and is writable.")
        }
    }
}

/// The command that reads `key` whole, given its Redis `type`: a string's value, a set's
/// members, a hash's fields and values, a sorted set's members with their scores; EXISTS for
/// anything else (an absent key, or a type the keyspace does not use).
func readWhole(_ key: String, type: String?) -> RedisCommand {
    switch type {
    case "string": return RedisCommand("GET", key)
    case "set": return RedisCommand("SMEMBERS", key)
    case "hash": return RedisCommand("HGETALL", key)
    case "zset": return RedisCommand("ZRANGE", key, "0", "-1", "WITHSCORES")
    default: return RedisCommand("EXISTS", key)
    }
}
