#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
public import RolloutGate

/// The Markdown audit log: one line per change, in the original system's format
/// `2025-10-08T15:00:00Z  google  0% -> 10%  reason=Initial canary  by=manual`.
///
/// Appends take an exclusive `flock` and write each line with one `write(2)` on an
/// `O_APPEND` descriptor, so many processes appending at once lose nothing and never
/// interleave. Reasons are folded to one line without control characters, so no entry
/// can forge another.
public struct AuditLog: Sendable {
    /// The log file's path.
    public let path: String

    /// The header a new log starts with.
    public static let header = """
        # Rollout audit log

        One line per change: time (UTC), feature, change, reason, who. Written by `rollout`; append-only.

        ```text

        """

    /// A log at `path`; the file is created with ``header`` on the first append.
    public init(path: String) {
        self.path = path
    }

    /// One entry.
    public struct Entry: Sendable, Hashable, CustomStringConvertible {
        /// When the change was made.
        public var time: Timestamp
        /// The feature changed.
        public var feature: FeatureName
        /// What changed: `0% -> 10%`, `paused`, `kill switch on`...
        public var change: String
        /// Why, as the operator or the controller said it.
        public var reason: String
        /// Who: `manual`, `controller`, `manual (detected)`.
        public var by: String

        /// An entry.
        public init(time: Timestamp, feature: FeatureName, change: String, reason: String, by: String) {
            self.time = time
            self.feature = feature
            self.change = change
            self.reason = reason
            self.by = by
        }

        /// The line as written, without its newline.
        public var description: String {
            let reasonText = AuditLog.singleLine(reason)
            return "\(time.secondsDescription)  \(feature)  \(AuditLog.singleLine(change))  reason=\(reasonText.isEmpty ? "(none)" : reasonText)  by=\(AuditLog.singleLine(by))"
        }
    }

    /// Appends `entry` as one line.
    public func append(_ entry: Entry) throws(AuditLogError) {
        do {
            try appendUnderLock(entry.description + "\n", to: path, prefixWhenEmpty: Self.header)
        } catch {
            switch error.step {
            case .open:
                throw AuditLogError("Cannot open the audit log \(path): \(error.reason). Set --audit-log or ROLLOUT_AUDIT_LOG to a writable path.")
            case .lock: throw AuditLogError("Cannot lock the audit log \(path): \(error.reason).")
            case .write: throw AuditLogError("Could not write the audit log \(path): \(error.reason).")
            }
        }
    }

    /// `text` on one line: control characters (newlines included) become spaces, runs of
    /// spaces fold into one, and the ends are trimmed.
    public static func singleLine(_ text: String) -> String {
        var result = ""
        var lastWasSpace = true
        for scalar in text.unicodeScalars {
            let isControl = scalar.properties.generalCategory == .control || scalar == "\u{2028}" || scalar == "\u{2029}"
            if isControl || scalar == " " {
                if !lastWasSpace { result.append(" ") }
                lastWasSpace = true
            } else {
                result.unicodeScalars.append(scalar)
                lastWasSpace = false
            }
        }
        if result.hasSuffix(" ") { result.removeLast() }
        return result
    }
}

/// The audit log could not be written.
public struct AuditLogError: Error, Sendable, CustomStringConvertible {
    /// What failed and what to do.
    public let description: String

    init(_ description: String) { self.description = description }
}
