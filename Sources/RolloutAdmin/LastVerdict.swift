public import RolloutGate

extension FeatureKeys {
    /// `flags:<f>:last_verdict`: the controller's last verdict on the feature, `<result> <time>
    /// <reason>` (see ``LastVerdict``), written with the lock's release.
    public var lastVerdict: String { "flags:\(feature.rawValue):last_verdict" }
}

/// The controller's last verdict on a feature, as `flags:<f>:last_verdict` holds it: plain
/// text, `<result> <time> <reason>`, `hold 2026-12-04T21:00:00.000Z dwell`. The result is
/// promote, rollback or hold; the time the run's clock when it decided; the reason a hold's
/// reason code, or for a change what caused it: `healthy` for a promotion, the first violated
/// rollback check's name for a rollback, `forced` for a rollback an alert forced.
public struct LastVerdict: Sendable, Hashable, CustomStringConvertible {
    /// promote, rollback or hold.
    public enum Result: String, Sendable, Hashable, CaseIterable {
        case promote, rollback, hold
    }

    /// What was decided.
    public var result: Result
    /// When.
    public var time: Timestamp
    /// Why: a hold reason code, `healthy`, a check's name or `forced` (one word, no space).
    public var reason: String

    /// A verdict; spaces and control characters in `reason` become `_`, so the value reads back.
    public init(result: Result, time: Timestamp, reason: String) {
        self.result = result
        self.time = time
        let folded = String(reason.unicodeScalars.map { $0.properties.isWhitespace || $0.value < 0x20 || $0.value == 0x7F ? "_" : Character($0) })
        self.reason = folded.isEmpty ? "unknown" : folded
    }

    /// Reads the key's value; nil for anything that is not `<result> <time> <reason>`.
    public init?(parsing text: String) {
        let parts = text.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count == 3, let result = Result(rawValue: String(parts[0])), let time = Timestamp(parsing: parts[1]),
            !parts[1].isEmpty, !parts[2].isEmpty, !parts[2].contains(" ")
        else { return nil }
        self.result = result
        self.time = time
        reason = String(parts[2])
    }

    /// The key's value.
    public var description: String { "\(result.rawValue) \(time) \(reason)" }
}
