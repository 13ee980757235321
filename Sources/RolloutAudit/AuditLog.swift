#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Dispatch
import RolloutGate

/// The Markdown audit log: a projection of the audit stream (``AuditTrail``), one line per
/// record, in the original system's format with the record's id last:
/// `2025-10-08T15:00:00Z  google  0% -> 10%  reason=Initial canary  by=manual  id=1759935600000-0`.
///
/// The stream in Redis is the source of truth: the step that changes a feature records the
/// change there in the same atomic script, and the file is written from the stream afterwards
/// (``AuditTrail/project(into:)``), so a killed process or a full disk delays a line, never
/// loses it. Writes take an exclusive `flock` on an `O_APPEND` descriptor, so many processes
/// writing at once lose nothing and never interleave; every file call runs on a dispatch queue
/// of its own, never on Swift's cooperative pool. Reasons are folded to one line without
/// control characters, so no entry can forge another.
public struct AuditLog: Sendable {
    /// The log file's path.
    public let path: String

    /// The header a new log starts with.
    public static let header = """
        # Rollout audit log

        One line per change: time (UTC), feature, change, reason, who, and the id of its record in \
        the Redis stream rollout:audit (the source of truth). Written by `rollout`; append-only.

        ```text

        """

    /// A log at `path`; the file is created with ``header`` on the first write.
    public init(path: String) {
        self.path = path
    }

    /// Checks, before anything is changed, that the log can be written: its folder exists, it
    /// is (or can be created as) a regular file this process may append to, and the disk has
    /// room. Throws `.unwritable` with the path and the reason otherwise.
    public func preflight() async throws(AuditLogError) {
        let path = path
        let problem = await onFileQueue { () -> String? in
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
            guard fd >= 0 else { return String(cString: strerror(errno)) }
            defer { close(fd) }
            var info = stat()
            guard fstat(fd, &info) == 0 else { return String(cString: strerror(errno)) }
            guard (info.st_mode & S_IFMT) == S_IFREG else { return "it is not a regular file" }
            var space = statvfs()
            if fstatvfs(fd, &space) == 0, UInt64(space.f_bavail) * UInt64(space.f_bsize) < 64 * 1024 {
                return "the disk is full (less than 64 KiB free)"
            }
            return nil
        }
        if let problem {
            throw AuditLogError(
                .unwritable,
                "Cannot write the audit log \(path): \(problem). Nothing was changed. Set --audit-log or ROLLOUT_AUDIT_LOG (audit_log: in a policy) to a writable file."
            )
        }
    }

    /// Appends a line that has no record in Redis (a dry run's `[dry-run]` lines).
    public func appendUnrecorded(_ record: AuditRecord) async throws(AuditLogError) {
        var record = record
        record.id = nil
        let text = record.description + "\n"
        let path = path
        let failure = await onFileQueue { () -> AppendFailure? in
            do throws(AppendFailure) {
                try appendUnderLock(text, to: path, prefixWhenEmpty: Self.header)
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw AuditLogError(writing: path, failure) }
    }

    /// `text` on one line: control characters (newlines included) become spaces, runs of
    /// spaces fold into one, and the ends are trimmed.
    public static func singleLine(_ text: String) -> String {
        // Most texts are printable ASCII already on one line: returned as they are.
        var previousWasSpace = true
        let alreadySingle = text.utf8.allSatisfy { byte in
            defer { previousWasSpace = byte == 0x20 }
            return (0x20..<0x7F).contains(byte) && !(byte == 0x20 && previousWasSpace)
        }
        if alreadySingle && !previousWasSpace { return text }
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

/// The audit log or its stream could not be read or written.
public struct AuditLogError: Error, Sendable, CustomStringConvertible {
    /// What failed.
    public enum Code: Sendable, Hashable {
        /// Found before any change: the file cannot be written, so nothing is changed.
        case unwritable
        /// Writing the file failed after the change was recorded in Redis (it is caught up later).
        case writeFailed
        /// The audit stream in Redis could not be read or written.
        case stream
    }

    /// What failed.
    public let code: Code
    /// What failed and what to do.
    public let description: String

    init(_ code: Code, _ description: String) {
        self.code = code
        self.description = description
    }

    init(writing path: String, _ failure: AppendFailure) {
        switch failure.step {
        case .open:
            self.init(.writeFailed, "Cannot open the audit log \(path): \(failure.reason). Set --audit-log or ROLLOUT_AUDIT_LOG to a writable path.")
        case .lock: self.init(.writeFailed, "Cannot lock the audit log \(path): \(failure.reason).")
        case .read: self.init(.writeFailed, "Cannot read the audit log \(path): \(failure.reason).")
        case .write: self.init(.writeFailed, "Could not write the audit log \(path): \(failure.reason).")
        }
    }
}
