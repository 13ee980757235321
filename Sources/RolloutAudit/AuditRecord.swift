public import RolloutGate
import RolloutRedis

/// One change as recorded in the audit stream (`rollout:audit`) by the very Lua step that made
/// it, and as projected to the Markdown log:
/// `2025-10-08T15:00:00Z  google  0% -> 10%  reason=Initial canary  by=manual  id=1759935600000-0`.
public struct AuditRecord: Sendable, Hashable, CustomStringConvertible {
    /// When the change was made.
    public var time: Timestamp
    /// The feature changed.
    public var feature: FeatureName
    /// What changed: `0% -> 10%`, `paused`, `kill switch on`...
    public var change: String
    /// Why, as the operator or the controller said it.
    public var reason: String
    /// Who: `manual`, `controller`, `manual-detected` (earlier versions wrote `manual (detected)`).
    public var by: String
    /// Which process wrote it (`rollout@host:pid` or the controller run's lock token), so a
    /// record projected later can say whose it was.
    public var run: String
    /// The stream entry's id (`<ms>-<seq>`); nil before Redis has stored it.
    public var id: String?

    /// A record.
    public init(time: Timestamp, feature: FeatureName, change: String, reason: String, by: String, run: String = "", id: String? = nil) {
        self.time = time
        self.feature = feature
        self.change = change
        self.reason = reason
        self.by = by
        self.run = run
        self.id = id
    }

    /// The fields in the order every script takes them (time, feature, change, reason, by,
    /// run), each already folded to one line.
    public var scriptArguments: [String] {
        [time.description, feature.rawValue, AuditLog.singleLine(change), AuditLog.singleLine(reason), AuditLog.singleLine(by), AuditLog.singleLine(run)]
    }

    /// How many script arguments one record takes.
    public static let scriptArgumentCount = 6

    /// The Markdown line, without its newline; `id=` last when the record is stored.
    public var description: String {
        let reasonText = AuditLog.singleLine(reason)
        let line = "\(time.secondsDescription)  \(feature)  \(AuditLog.singleLine(change))  reason=\(reasonText.isEmpty ? "(none)" : reasonText)  by=\(AuditLog.singleLine(by))"
        return id.map { line + "  id=" + $0 } ?? line
    }

    /// The percents of a percent change (`10% -> 25%`); nil for any other change, or a side that
    /// is not a percent (`"fifty" (invalid) -> 10%`).
    public var percentChange: (from: RolloutPercent, to: RolloutPercent)? {
        let sides = change.split(separator: " -> ", omittingEmptySubsequences: false)
        func percent(_ side: Substring) -> RolloutPercent? {
            guard side.hasSuffix("%") else { return nil }
            return RolloutPercent(parsing: side.dropLast())
        }
        guard sides.count == 2, let from = percent(sides[0]), let to = percent(sides[1]) else { return nil }
        return (from, to)
    }

    /// The `feature` field of a stream entry, read without parsing the rest; nil when it has none.
    static func feature(ofStreamEntry entry: RedisValue) -> String? {
        guard let parts = entry.array, parts.count == 2, let flat = parts[1].array else { return nil }
        var index = 0
        while index + 1 < flat.count {
            if flat[index].string == "feature" { return flat[index + 1].string }
            index += 2
        }
        return nil
    }

    /// A stream entry as XRANGE returns it (`[id, [field, value, ...]]`); nil when it is not one
    /// of ours (a person's XADD with other fields is skipped, not guessed at).
    init?(streamEntry: RedisValue) {
        guard let parts = streamEntry.array, parts.count == 2, let id = parts[0].string, let flat = parts[1].array else { return nil }
        var fields: [String: String] = [:]
        var index = 0
        while index + 1 < flat.count {
            if let name = flat[index].string, let value = flat[index + 1].string { fields[name] = value }
            index += 2
        }
        guard let timeText = fields["time"], let time = Timestamp(parsing: timeText), let name = fields["feature"],
            let feature = try? FeatureName(name), let change = fields["change"]
        else { return nil }
        self.init(
            time: time, feature: feature, change: change, reason: fields["reason"] ?? "", by: fields["by"] ?? "", run: fields["run"] ?? "",
            id: id)
    }
}

/// A Redis stream entry id, `<milliseconds>-<sequence>`, compared as the pair of numbers.
struct StreamID: Comparable, Sendable, CustomStringConvertible {
    let milliseconds: UInt64
    let sequence: UInt64

    init?(_ text: some StringProtocol) {
        let parts = text.split(separator: "-")
        guard parts.count == 2, let milliseconds = UInt64(parts[0]), let sequence = UInt64(parts[1]) else { return nil }
        self.milliseconds = milliseconds
        self.sequence = sequence
    }

    var description: String { "\(milliseconds)-\(sequence)" }

    static func < (lhs: StreamID, rhs: StreamID) -> Bool {
        (lhs.milliseconds, lhs.sequence) < (rhs.milliseconds, rhs.sequence)
    }
}
