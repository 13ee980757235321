#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Appends `text` to the file at `path` (created 0644 if missing) under an exclusive `flock`,
/// with one `write(2)` on an `O_APPEND` descriptor: many processes appending at once lose
/// nothing and never interleave. `prefixWhenEmpty` is written first when the file is empty
/// (a header). Used by the audit log and the notifications' fallback file.
package func appendUnderLock(_ text: String, to path: String, prefixWhenEmpty: String = "") throws(AppendFailure) {
    let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
    guard fd >= 0 else { throw AppendFailure(.open) }
    defer { close(fd) }
    while flock(fd, LOCK_EX) != 0 {
        guard errno == EINTR else { throw AppendFailure(.lock) }
    }
    defer { flock(fd, LOCK_UN) }
    var info = stat()
    let isEmpty = fstat(fd, &info) == 0 && info.st_size == 0
    let bytes = Array(((isEmpty ? prefixWhenEmpty : "") + text).utf8)
    let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    guard written == bytes.count else { throw AppendFailure(.write) }
}

/// Why ``appendUnderLock(_:to:prefixWhenEmpty:)`` failed: the step and the system's reason.
package struct AppendFailure: Error, Sendable {
    /// The step that failed.
    package enum Step: Sendable { case open, lock, write }
    /// The step that failed.
    package let step: Step
    /// `strerror(errno)` at the failure.
    package let reason: String

    init(_ step: Step) {
        self.step = step
        reason = String(cString: strerror(errno))
    }
}
