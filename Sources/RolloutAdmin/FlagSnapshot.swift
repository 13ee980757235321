import CRolloutCrypto
import Foundation
public import RolloutGate
public import RolloutRedis

/// Reading a snapshot from Redis and writing one back, for `rollout snapshot save|restore`
/// (the format itself, ``FlagSnapshot``, is the gate's: a service can load the same file).
extension FlagSnapshot {
    /// The keys in scope: every flags key of the listed features, or every flags key. Locks
    /// are never part of a snapshot.
    static func scopePattern(_ feature: FeatureName?) -> String {
        feature.map { "flags:\($0):*" } ?? "flags:*"
    }


    /// Reads every key of `features` (or every `flags:*` key) from Redis.
    public static func capture(from redis: RedisClient, features: [FeatureName]?, at time: Timestamp) async throws(RedisError) -> FlagSnapshot {
        var keys: [String] = []
        for pattern in features.map({ $0.map { scopePattern($0) } }) ?? [scopePattern(nil)] {
            keys += try await redis.scan(matching: pattern)
        }
        keys = Array(Set(keys.filter { !$0.hasSuffix(":lock") })).sorted()
        let types = try await redis.pipeline(keys.map { RedisCommand("TYPE", $0) })
        let ttls = try await redis.pipeline(keys.map { RedisCommand("PTTL", $0) })
        let values = try await redis.pipeline(zip(keys, types).map { readWhole($0, type: $1.string) })
        var entries: [Entry] = []
        for (index, key) in keys.enumerated() {
            guard let type = types[index].string, type != "none" else { continue }
            var entry = Entry(key: key, type: type)
            let ttl = ttls[index].integer ?? -1
            if ttl > 0 { entry.ttlMilliseconds = ttl }
            let items = values[index].array?.map { $0.string ?? "" } ?? []
            switch type {
            case "string": entry.value = values[index].string
            case "set": entry.members = items.sorted()
            case "hash": entry.fields = pairs(items).reduce(into: [:]) { $0[$1.0] = $1.1 }
            case "zset": entry.scores = pairs(items).reduce(into: [:]) { $0[$1.0] = Double($1.1) ?? 0 }
            default: throw RedisError(.protocolError, "\(key) is a \(type); a snapshot holds strings, sets, hashes and sorted sets.")
            }
            entries.append(entry)
        }
        return FlagSnapshot(createdAt: time.description, features: features?.map(\.rawValue).sorted(), keys: entries)
    }

    /// The commands that make Redis hold exactly this snapshot's keys within its scope:
    /// delete `existing` keys, then write each key (and its TTL). ``FeatureStore/restoreSnapshot(from:dryRun:)`` runs
    /// them in one operator_change.lua script, with the audit records.
    func restoreCommands(replacing existing: [String]) -> [RedisCommand] {
        var commands: [RedisCommand] = []
        let all = Set(existing).union(keys.map(\.key))
        if !all.isEmpty { commands.append(RedisCommand("DEL", all.sorted())) }
        for entry in keys {
            switch entry.type {
            case "string": commands.append(RedisCommand("SET", entry.key, entry.value ?? ""))
            case "set": if let members = entry.members, !members.isEmpty { commands.append(RedisCommand("SADD", [entry.key] + members)) }
            case "hash":
                if let fields = entry.fields, !fields.isEmpty {
                    commands.append(RedisCommand("HSET", [entry.key] + fields.sorted { $0.key < $1.key }.flatMap { [$0.key, $0.value] }))
                }
            default:
                if let scores = entry.scores, !scores.isEmpty {
                    commands.append(RedisCommand("ZADD", [entry.key] + scores.sorted { $0.key < $1.key }.flatMap { [String($0.value), $0.key] }))
                }
            }
            if let ttl = entry.ttlMilliseconds { commands.append(RedisCommand("PEXPIRE", entry.key, String(ttl))) }
        }
        return commands
    }

    /// Why a percent of this snapshot cannot be written back for its feature's bucketing
    /// (``BucketingScheme/checkWritable(_:for:as:)``): `rollout_percent` and each workspace's
    /// percent. A v1 feature's percent must also be written as a plain integer (`10`, never
    /// `10.0`), which is all the original Python gate's `int()` reads. Empty when all can.
    func unwritablePercents() -> [String] {
        let byKey = Dictionary(keys.map { ($0.key, $0) }, uniquingKeysWith: { $1 })
        var problems: [String] = []
        for feature in Set(keys.compactMap { FeatureKeys.feature(ofKey: $0.key) }).sorted() {
            let names = FeatureKeys(feature)
            // The snapshot replaces every key of the feature: its own bucketing key decides.
            guard let stored = byKey[names.bucketing]?.value else { continue }
            let scheme = BucketingScheme(storedValue: stored) ?? .v1
            var texts: [(String, String)] = []
            if let value = byKey[names.rolloutPercent]?.value { texts.append((names.rolloutPercent, value)) }
            for (workspace, value) in (byKey[names.workspaces]?.fields ?? [:]).sorted(by: { $0.key < $1.key }) {
                texts.append(("\(names.workspaces) field \(workspace)", value))
            }
            for (what, text) in texts {
                guard let percent = RolloutPercent(parsing: text) else { continue }  // restored as it was: the gate reports it
                do throws(KeyspaceError) {
                    try scheme.checkWritable(percent, for: feature, as: what)
                    if scheme == .v1, text.contains(".") {
                        problems.append(
                            "\(what) holds \"\(text)\", which the original Python gate's int() cannot read (it would answer 0%): "
                                + "write it as \(percent) in the snapshot.")
                    }
                } catch {
                    problems.append(error.message)
                }
            }
        }
        return problems
    }

    /// What restoring `self` over `current` would change, one line per key: `+` added,
    /// `-` removed, `~` changed.
    public func difference(from current: FlagSnapshot) -> [String] {
        let before = Dictionary(current.keys.map { ($0.key, $0) }, uniquingKeysWith: { $1 })
        let after = Dictionary(keys.map { ($0.key, $0) }, uniquingKeysWith: { $1 })
        var lines: [String] = []
        for key in Set(before.keys).union(after.keys).sorted() {
            switch (before[key], after[key]) {
            case (nil, let new?): lines.append("+ \(key) \(new.summary)")
            case (let old?, nil): lines.append("- \(key) \(old.summary)")
            case (let old?, let new?) where !old.sameContent(as: new): lines.append("~ \(key) \(old.summary) -> \(new.summary)")
            default: break
            }
        }
        return lines
    }

    private static func pairs(_ items: [String]) -> [(String, String)] {
        stride(from: 0, to: items.count - 1, by: 2).map { (items[$0], items[$0 + 1]) }
    }
}

extension FlagSnapshot.Entry {
    /// The value in a few words, for diffs.
    var summary: String {
        switch type {
        case "string": return "\"\(value ?? "")\""
        case "set": return "set of \(members?.count ?? 0)"
        case "hash": return "hash of \(fields?.count ?? 0)"
        default: return "zset of \(scores?.count ?? 0)"
        }
    }

    /// Equal content; a TTL counts down, so only whether there is one is compared.
    func sameContent(as other: Self) -> Bool {
        type == other.type && value == other.value && members == other.members && fields == other.fields && scores == other.scores
            && (ttlMilliseconds == nil) == (other.ttlMilliseconds == nil)
    }
}

