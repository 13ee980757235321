#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation
public import RolloutGate

extension AuditRecord {
    /// Who made a percent change the controller found made outside it. One word: the
    /// original Python controller's log format, which both systems write, reads `by=` as one.
    public static let manualDetectedAuthor = "manual-detected"
    /// What earlier versions wrote for ``manualDetectedAuthor``: still read.
    public static let legacyManualDetectedAuthor = "manual (detected)"

    /// Whether `by` says the controller found the change made outside it, in either spelling.
    public var isManualDetected: Bool { by == Self.manualDetectedAuthor || by == Self.legacyManualDetectedAuthor }

    /// One line of the Markdown log, `TIME  FEATURE  CHANGE  reason=WHY  by=WHO[  id=ID]`: one of
    /// ours, or one the original Python controller appended to the same file (no `id=`). `by=`
    /// runs to `id=` or the end, so the old `by=manual (detected)` reads whole. nil for a line
    /// that is no record (the header, a blank line).
    public init?(logLine text: some StringProtocol) {
        var line = Substring(text)
        while line.last == "\n" || line.last == "\r" { line.removeLast() }
        var id: String?
        if let marker = line.range(of: "  id=", options: .backwards) {
            id = String(line[marker.upperBound...])
            line = line[..<marker.lowerBound]
        }
        guard let byMarker = line.range(of: "  by=", options: .backwards) else { return nil }
        let by = String(line[byMarker.upperBound...])
        line = line[..<byMarker.lowerBound]
        let head: Substring
        var reason = ""
        if let reasonMarker = line.range(of: "  reason=") {
            head = line[..<reasonMarker.lowerBound]
            reason = String(line[reasonMarker.upperBound...])
        } else {
            head = line
        }
        let parts = head.split(separator: "  ", maxSplits: 2, omittingEmptySubsequences: true)
        guard parts.count == 3, let time = Timestamp(parsing: parts[0]), let feature = try? FeatureName(String(parts[1])) else { return nil }
        self.init(
            time: time, feature: feature, change: String(parts[2]), reason: reason == "(none)" ? "" : reason, by: by, id: id)
    }

    /// Whether this record is `feature`'s change from `from` to `to`, made within `tolerance`
    /// of `time`.
    public func records(_ feature: FeatureName, from: RolloutPercent, to: RolloutPercent, near time: Timestamp, within tolerance: Duration) -> Bool {
        guard self.feature == feature, let change = percentChange, change.from == from, change.to == to else { return false }
        let apart = self.time < time ? time.duration(since: self.time) : self.time.duration(since: time)
        return apart <= tolerance
    }

    /// Whether `records` (in any order, from the stream and the log) already hold `feature`'s
    /// change from `from` to `to` made near `time`: its newest percent change among them is
    /// that change, within `tolerance` of `time`. An older record of the same change does not
    /// count once a later percent change of the feature is recorded: the percent went elsewhere
    /// and came back, and the change back is a new one.
    public static func holdChange(
        _ records: [AuditRecord], of feature: FeatureName, from: RolloutPercent, to: RolloutPercent, near time: Timestamp,
        within tolerance: Duration
    ) -> Bool {
        let newest = records.filter { $0.feature == feature && $0.percentChange != nil }.max { $0.time < $1.time }
        return newest?.records(feature, from: from, to: to, near: time, within: tolerance) == true
    }
}

extension AuditLog {
    /// The records in the last `maxBytes` of the log, oldest first: ours and those the original
    /// Python controller appended. A log that does not exist or cannot be read has none (the
    /// question this answers, "is this change already recorded?", then has the answer no).
    public func recentRecords(maxBytes: Int = 256 * 1024) async -> [AuditRecord] {
        let path = self.path
        let text = await onFileQueue { () -> String in
            guard let file = fopen(path, "rb") else { return "" }
            defer { fclose(file) }
            guard fseek(file, 0, SEEK_END) == 0 else { return "" }
            let size = ftell(file)
            let start = max(0, size - maxBytes)
            guard size > 0, fseek(file, start, SEEK_SET) == 0 else { return "" }
            var bytes = [UInt8](repeating: 0, count: size - start)
            let count = bytes.withUnsafeMutableBytes { fread($0.baseAddress, 1, $0.count, file) }
            var lines = String(decoding: bytes.prefix(count), as: UTF8.self)
            if start > 0, let newline = lines.firstIndex(of: "\n") { lines = String(lines[lines.index(after: newline)...]) }  // a cut line
            return lines
        }
        return text.split(separator: "\n").compactMap { AuditRecord(logLine: $0) }
    }
}
