import Foundation
public import RolloutAudit
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
    /// How many replicas must acknowledge each change (`WAIT` after it); fewer throws
    /// ``AdminError/Cause/notReplicated(_:)`` once the change is made and recorded.
    public let replicas: ReplicaAcknowledgement
    let now: @Sendable () -> Timestamp

    /// A store writing through `redis` and recording in `auditLog`; `now` is injected for tests.
    public init(
        redis: RedisClient, auditLog: AuditLog, author: String = "manual", replicas: ReplicaAcknowledgement = .automatic,
        now: @escaping @Sendable () -> Timestamp = Timestamp.now
    ) {
        self.redis = redis
        self.auditLog = auditLog
        self.author = author
        self.replicas = replicas
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
    /// rollout_percent 0, paused false): only the keys that are absent, never overwriting one.
    /// Returns the keys created.
    @discardableResult
    public func initialize(_ feature: FeatureName, reason: String) async throws(AdminError) -> [String] {
        let keys = FeatureKeys(feature)
        let initial = [(keys.enabled, "true"), (keys.internalOnly, "true"), (keys.rolloutPercent, "0"), (keys.paused, "false")]
        let (time, replies) = try await readWithServerTime(initial.map { RedisCommand("EXISTS", $0.0) })
        let missing = zip(initial, replies).filter { $0.1 == .integer(0) }.map(\.0)
        guard !missing.isEmpty else { return [] }
        var change = OperatorChange()
        for (key, value) in missing {
            change.expect(key, equals: nil)
            change.step("SET", key, [value])
        }
        let names = missing.map { $0.0.split(separator: ":").last.map(String.init) ?? $0.0 }
        change.records = [record(feature, "initialized (\(names.joined(separator: ", ")))", reason)]
        try await apply(change, time: time)
        return missing.map(\.0)
    }

    /// Sets rollout_percent, recording the previous value in last_percent (an invalid one is
    /// dropped so it cannot poison the gate) and the time in last_change_time, atomically with
    /// its audit record; refused when rollout_percent moved meanwhile. Returns the previous percent.
    /// A percent that cannot be written for a v1 feature (not a whole number) is refused, and
    /// the feature's bucketing must still be what was read when the change is made.
    @discardableResult
    public func setPercent(_ feature: FeatureName, to percent: RolloutPercent, reason: String) async throws(AdminError) -> RolloutPercent? {
        let keys = FeatureKeys(feature)
        let (time, replies) = try await readWithServerTime([RedisCommand("GET", keys.rolloutPercent), RedisCommand("GET", keys.bucketing)])
        let previousText = try stringValue(replies[0], of: keys.rolloutPercent)
        let bucketingText = try checkWritable(percent, for: feature, bucketing: replies[1], as: "The percent")
        let previous = previousText.flatMap { RolloutPercent(parsing: $0) }
        let moment = now()
        var change = OperatorChange()
        change.expect(keys.rolloutPercent, equals: previousText)
        change.expect(keys.bucketing, equals: bucketingText)
        change.step("SET", keys.rolloutPercent, [percent.description])
        switch (previousText, previous) {
        case (nil, _): change.step("SET", keys.lastPercent, ["0"])
        case (_?, let valid?): change.step("SET", keys.lastPercent, [valid.description])
        case (_?, nil): change.step("DEL", keys.lastPercent)
        }
        change.step("SET", keys.lastChangeTime, [moment.description])
        let before = previousText.map { previous == nil ? "\"\($0)\" (invalid)" : "\($0)%" } ?? "0%"
        change.records = [record(feature, "\(before) -> \(percent)%", reason, at: moment)]
        try await apply(change, time: time)
        return previous
    }

    /// Sets `paused`: the controller leaves a paused feature alone; the gate ignores it.
    /// Resuming also clears `paused_reason` (set when flap protection paused the feature).
    public func setPaused(_ feature: FeatureName, _ paused: Bool, reason: String) async throws(AdminError) {
        let keys = FeatureKeys(feature)
        var change = OperatorChange()
        change.step("SET", keys.paused, [paused ? "true" : "false"])
        if !paused { change.step("DEL", keys.pausedReason) }
        change.records = [record(feature, paused ? "paused" : "resumed", reason)]
        try await apply(change)
    }

    /// Sets `enabled`; false is the kill switch: off for everyone at once.
    public func setEnabled(_ feature: FeatureName, _ enabled: Bool, reason: String) async throws(AdminError) {
        var change = OperatorChange()
        change.step("SET", FeatureKeys(feature).enabled, [enabled ? "true" : "false"])
        change.records = [record(feature, enabled ? "kill switch off (enabled)" : "kill switch on (disabled)", reason)]
        try await apply(change)
    }

    /// Sets `internal_only`.
    public func setInternalOnly(_ feature: FeatureName, _ internalOnly: Bool, reason: String) async throws(AdminError) {
        var change = OperatorChange()
        change.step("SET", FeatureKeys(feature).internalOnly, [internalOnly ? "true" : "false"])
        change.records = [record(feature, "internal_only \(internalOnly)", reason)]
        try await apply(change)
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

    /// Sets a workspace's own percent (a whole number for a v1 feature, as ``setPercent(_:to:reason:)``).
    public func setWorkspace(_ workspace: String, of feature: FeatureName, to percent: RolloutPercent, reason: String) async throws(AdminError) {
        guard !workspace.isEmpty else { throw AdminError(.invalidInput("The workspace id cannot be empty.")) }
        let keys = FeatureKeys(feature)
        let (time, replies) = try await readWithServerTime([RedisCommand("GET", keys.bucketing)])
        let bucketingText = try checkWritable(percent, for: feature, bucketing: replies[0], as: "The workspace \(workspace)'s percent")
        var change = OperatorChange()
        change.expect(keys.bucketing, equals: bucketingText)
        change.step("HSET", keys.workspaces, [workspace, percent.description])
        change.records = [record(feature, "workspace \(workspace) -> \(percent)%", reason)]
        try await apply(change, time: time)
    }

    /// Removes a workspace's own percent; its actors follow rollout_percent again.
    public func unsetWorkspace(_ workspace: String, of feature: FeatureName, reason: String) async throws(AdminError) {
        var change = OperatorChange()
        change.step("HDEL", FeatureKeys(feature).workspaces, [workspace])
        change.records = [record(feature, "workspace \(workspace) unset", reason)]
        try await apply(change)
    }

    /// The feature's `bucketing` text from its GET `reply`, once `percent` is known to be
    /// writable under that scheme (``BucketingScheme/checkWritable(_:for:as:)``). A value that
    /// names no scheme counts as v1: the stricter rule, until the key is fixed.
    private func checkWritable(_ percent: RolloutPercent, for feature: FeatureName, bucketing reply: RedisValue, as what: String) throws(AdminError) -> String? {
        let text = try stringValue(reply, of: FeatureKeys(feature).bucketing)
        let scheme = text.map { BucketingScheme(storedValue: $0) ?? .v1 } ?? .v2
        do throws(KeyspaceError) {
            try scheme.checkWritable(percent, for: feature, as: what)
        } catch {
            throw AdminError(.invalidInput(error.message))
        }
        return text
    }

    /// Writes to the audit log every record of the audit stream it does not have yet (records
    /// of changes whose process died, or could not write the file, before it wrote them).
    /// Returns them.
    @discardableResult
    public func syncAuditLog() async throws(AdminError) -> [AuditRecord] {
        do {
            return try await AuditTrail(redis: redis).project(into: auditLog)
        } catch {
            throw AdminError(.auditLog(error))
        }
    }

    private func changeMembers(
        _ ids: [String], _ list: MemberList, _ feature: FeatureName, command: String, sign: String, reason: String
    ) async throws(AdminError) -> Int {
        guard !ids.isEmpty else { throw AdminError(.invalidInput("Give at least one id.")) }
        if let empty = ids.firstIndex(where: { $0.isEmpty }) {
            throw AdminError(.invalidInput("Id number \(empty + 1) is empty; ids are stickiness keys like alice or acme:alice."))
        }
        let keys = FeatureKeys(feature)
        var change = OperatorChange()
        change.step(command, list == .allow ? keys.allow : keys.deny, ids)
        // A long list is summarised: the log stays one readable line per change.
        let shown = ids.count <= 20 ? ids.joined(separator: ",") : "\(ids.count) ids (\(ids.prefix(3).joined(separator: ",")) … \(ids.last ?? ""))"
        change.records = [record(feature, "\(list.rawValue) \(sign)\(shown)", reason)]
        return Int(try await apply(change).first ?? 0)
    }

    /// An audit record of this store's author and process.
    func record(_ feature: FeatureName, _ change: String, _ reason: String, at time: Timestamp? = nil) -> AuditRecord {
        AuditRecord(time: time ?? now(), feature: feature, change: change, reason: reason, by: author, run: processRunName)
    }

    /// Runs `commands` in one round trip after Redis's `TIME`, whose answer dates the deadline
    /// of the write that depends on them.
    /// Every write starts here, so the audit log is checked before Redis is touched.
    func readWithServerTime(_ commands: [RedisCommand]) async throws(AdminError) -> (RedisServerTime, [RedisValue]) {
        do {
            try await auditLog.preflight()
        } catch {
            throw AdminError(.auditLog(error))
        }
        do {
            let (replies, arrivedAt) = try await redis.pipelineWithArrival([RedisServerTime.command] + commands)
            return (try RedisServerTime(reply: replies[0], readAt: arrivedAt), Array(replies.dropFirst()))
        } catch {
            throw AdminError(.redis(error))
        }
    }

    /// A string key's value from a GET reply: nil when absent, an error for a key of another type.
    func stringValue(_ reply: RedisValue, of key: String) throws(AdminError) -> String? {
        do throws(KeyspaceError) {
            if case .string(let text) = try KeyContent(reply, key: key, type: .string) { return text }
            return nil
        } catch {
            throw AdminError(.corruptState(error.message + " Nothing was changed."))
        }
    }

    /// Applies `change` with redis/operator_change.lua (the audit log was checked by
    /// ``readWithServerTime(_:)``, which dates it)
    /// (its records in the audit stream in the same atomic step; refused after its deadline, so
    /// a change this process gave up on never lands later), then `WAIT`s for ``replicas`` in the
    /// same round trip, then writes the log from the stream. Returns one result per step (SADD's
    /// count of new members...). Too few replicas: the change stands, a `not replicated` record
    /// follows its own, and ``AdminError/Cause/notReplicated(_:)`` is thrown.
    @discardableResult
    func apply(_ change: OperatorChange, time: RedisServerTime? = nil) async throws(AdminError) -> [Int64] {
        // A name literal that breaks the rule (the only way to make one) never addresses a key.
        if let invalid = change.records.first(where: { !$0.feature.isValid })?.feature {
            throw AdminError(.invalidInput(FeatureName.validationError(invalid.rawValue)?.message ?? "'\(invalid)' is not a feature name."))
        }
        let serverTime: RedisServerTime
        if let time {
            serverTime = time
        } else {
            serverTime = try await readWithServerTime([]).0
        }
        let wait: ReplicaWait
        do {
            wait = try await redis.replicaWait(replicas)
        } catch {
            throw AdminError(.redis(error))
        }
        let reply: RedisValue
        let replication: Replication?
        let deadline = serverTime.writeDeadline()
        do {
            (reply, replication) = try await redis.evaluate(
                Scripts.operatorChange, keys: [AuditTrail.streamKey] + change.keys, arguments: change.arguments(deadline: deadline.serverMilliseconds),
                waitingUntil: deadline.waitUntil, thenWaiting: wait)
        } catch {
            throw AdminError(.unconfirmed(error))
        }
        if let refusal = ScriptRefusal(reply) {
            switch refusal {
            case .tooLate: throw AdminError(.unconfirmed(RedisError(.timeout, refusal.message)))
            case .wrongType: throw AdminError(.corruptState(refusal.message))
            }
        }
        guard let parts = reply.array, let code = parts.first?.integer else {
            throw AdminError(.redis(RedisError(.protocolError, "Redis answered the change script with \(reply).")))
        }
        guard code == 1, parts.count == 3 else {
            let key = parts.count > 1 ? parts[1].string ?? "a key" : "a key"
            throw AdminError(.conflict("\(key) changed while this command ran, so nothing was changed: look again, then run it again."))
        }
        let results = parts[1].array?.compactMap(\.integer) ?? []
        let trail = AuditTrail(redis: redis)
        var shortfall: NotReplicated?
        if let replication, !replication.isReplicated {
            let failure = await trail.noteNotReplicated(change.records, replication)
            shortfall = NotReplicated(replication: replication, changes: change.records, noted: failure == nil)
        }
        do {
            try await trail.project(into: auditLog)
        } catch {
            throw AdminError(.recordedNotLogged(error))
        }
        if let shortfall { throw AdminError(.notReplicated(shortfall)) }
        return results
    }
}

/// Why an operator change failed. Only `.recordedNotLogged` comes after a change: it was made
/// and recorded in Redis, and the Markdown log will catch up; `.unconfirmed` may have been
/// made before Redis stopped answering (then its record is in the stream), never later.
public struct AdminError: Error, Sendable, CustomStringConvertible {
    /// The cause.
    public enum Cause: Sendable {
        /// Redis could not be reached or refused the request; nothing was changed.
        case redis(RedisError)
        /// The audit log cannot be written (checked first: nothing was changed) or read.
        case auditLog(AuditLogError)
        /// The change was sent but not confirmed: made before Redis stopped answering, or not at all.
        case unconfirmed(RedisError)
        /// The change was made and recorded in the audit stream; writing the Markdown log failed.
        case recordedNotLogged(AuditLogError)
        /// The change was made and recorded, but fewer replicas than asked acknowledged it: a
        /// failover before they catch up may lose it.
        case notReplicated(NotReplicated)
        /// A key has a type or value the keyspace does not allow; nothing was changed.
        case corruptState(String)
        /// A value the change depends on moved while the command ran; nothing was changed.
        case conflict(String)
        /// The request itself is wrong.
        case invalidInput(String)
    }

    /// The cause.
    public let cause: Cause

    init(_ cause: Cause) { self.cause = cause }

    public var description: String {
        switch cause {
        case .redis(let error): return error.description
        case .auditLog(let error): return error.description
        case .unconfirmed(let error):
            return "\(error) The change was not confirmed: if Redis made it before it stopped answering, its record is in \(AuditTrail.streamKey) and the next rollout command writes it to the audit log; it cannot be made later, since the change refuses itself after its deadline. Look with `rollout flags get` before running it again."
        case .recordedNotLogged(let error):
            return "The change was made and recorded in Redis (\(AuditTrail.streamKey)), but the audit log file was not written: \(error) The next rollout command, controller run or `rollout audit sync` writes it."
        case .notReplicated(let shortfall):
            return shortfall.description
        case .corruptState(let text), .conflict(let text), .invalidInput(let text): return text
        }
    }
}

/// A change made and recorded on the primary that fewer replicas acknowledged than asked.
public struct NotReplicated: Sendable, CustomStringConvertible {
    /// What `WAIT` said.
    public let replication: Replication
    /// The change's audit records.
    public let changes: [AuditRecord]
    /// Whether the `not replicated` note was recorded after them (it is lost only when Redis
    /// failed right after the change).
    public let noted: Bool

    public var description: String {
        let what = changes.map { "\($0.feature) \($0.change)" }.joined(separator: "; ")
        return "The change was made on the primary and recorded (\(what)), but \(replication). It stands; a failover before the replicas catch up may lose it. Check the replicas (INFO replication on the primary, SENTINEL replicas), then look with `rollout flags get`; --min-replicas sets how many must acknowledge (0: none)."
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
        try await write(snapshot, to: path)
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
    /// atomic script, with an audit record for each restored feature. A dry run only computes the changes.
    public func restoreSnapshot(from path: String, dryRun: Bool) async throws -> RestoreResult {
        // File reads block: on the file queue, never on Swift's cooperative pool.
        let checked = await onFileQueue { Result { () throws(SnapshotError) in try FlagSnapshot.readChecked(from: path) } }
        let (snapshot, actual): (FlagSnapshot, String)
        do {
            (snapshot, actual) = try checked.get()
        } catch {
            throw SnapshotError("\(error.description) Nothing was changed.")
        }
        let unwritable = snapshot.unwritablePercents()
        guard unwritable.isEmpty else {
            throw AdminError(.invalidInput("Cannot restore \(path): " + unwritable.joined(separator: " ") + " Nothing was changed."))
        }
        let scope = try snapshot.features.map { try $0.map { name throws(KeyspaceError) in try FeatureName(name) } }
        let current = try await FlagSnapshot.capture(from: redis, features: scope, at: now())
        let changes = snapshot.difference(from: current)
        guard !dryRun else { return RestoreResult(changes: changes, preRestorePath: nil) }

        let stamp = now().secondsDescription.replacingOccurrences(of: ":", with: "").replacingOccurrences(of: "-", with: "")
        let preRestorePath = "\(path).pre-restore-\(stamp).json"
        try await write(current, to: preRestorePath)
        // One atomic script: every key of the scope replaced, with each feature's audit record.
        var change = OperatorChange()
        for command in snapshot.restoreCommands(replacing: current.keys.map(\.key)) {
            let arguments = command.arguments.map { String(decoding: $0, as: UTF8.self) }
            guard arguments.count >= 2 else { continue }
            if command.name == "DEL" {
                for key in arguments.dropFirst() { change.step("DEL", key) }
            } else {
                change.step(command.name, arguments[1], Array(arguments.dropFirst(2)))
            }
        }
        let touched = Set((snapshot.keys + current.keys).compactMap { FeatureKeys.feature(ofKey: $0.key) })
        change.records = touched.sorted().map {
            record($0, "restored from snapshot \(path) (sha256 \(actual.prefix(12)))", "snapshot restore; previous state in \(preRestorePath)")
        }
        try await apply(change)
        return RestoreResult(changes: changes, preRestorePath: preRestorePath)
    }

    private func write(_ snapshot: FlagSnapshot, to path: String) async throws(SnapshotError) {
        // File writes block: on the file queue, never on Swift's cooperative pool.
        try await onFileQueue { Result { () throws(SnapshotError) in try snapshot.writeDurably(to: path) } }.get()
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
