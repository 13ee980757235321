#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import RolloutGate

/// Appends `text` to the file at `path` (created 0644 if missing) under an exclusive `flock`,
/// with one `write(2)` on an `O_APPEND` descriptor: many processes appending at once lose
/// nothing and never interleave. `prefixWhenEmpty` is written first when the file is empty
/// (a header). Blocking: call it through ``onFileQueue(_:)``. Used by the audit log and the
/// notifications' fallback file.
package func appendUnderLock(_ text: String, to path: String, prefixWhenEmpty: String = "") throws(AppendFailure) {
    let file = try LockedFile(path: path)
    defer { file.close() }
    try file.append(text, prefixWhenEmpty: prefixWhenEmpty)
}

/// A file opened for appending and reading, held under an exclusive `flock` until ``close()``.
/// Blocking calls: use it from ``onFileQueue(_:)`` only, from one task at a time.
// @unchecked Sendable: every call runs on the one serial file queue, and its one user awaits
// each call before making the next, so the descriptor is never touched by two threads at once.
package final class LockedFile: @unchecked Sendable {
    private var fd: Int32

    /// Opens (creating it 0644) and locks `path`.
    package init(path: String) throws(AppendFailure) {
        fd = open(path, O_RDWR | O_APPEND | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw AppendFailure(.open) }
        while flock(fd, LOCK_EX) != 0 {
            guard errno == EINTR else {
                let failure = AppendFailure(.lock)
                close()
                throw failure
            }
        }
    }

    deinit { close() }

    /// Unlocks and closes; safe to call twice.
    package func close() {
        guard fd >= 0 else { return }
        flock(fd, LOCK_UN)
        closeDescriptor(fd)
        fd = -1
    }

    /// The file's size in bytes.
    package func size() throws(AppendFailure) -> Int {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw AppendFailure(.read) }
        return Int(info.st_size)
    }

    /// The bytes in `range` of the file.
    package func read(_ range: Range<Int>) throws(AppendFailure) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: range.count)
        var done = 0
        while done < range.count {
            let got = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress.map { $0 + done }, range.count - done, off_t(range.lowerBound + done)) }
            if got < 0 && errno == EINTR { continue }
            guard got > 0 else { throw AppendFailure(.read) }
            done += got
        }
        return bytes
    }

    /// Appends `text` with one `write(2)`, `prefixWhenEmpty` first when the file is empty.
    package func append(_ text: String, prefixWhenEmpty: String = "") throws(AppendFailure) {
        let isEmpty = try size() == 0
        let bytes = Array(((isEmpty ? prefixWhenEmpty : "") + text).utf8)
        let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        guard written == bytes.count else {
            if written >= 0 { errno = ENOSPC }
            throw AppendFailure(.write)
        }
    }
}

/// `close(2)`, under a name the class's own `close()` does not shadow.
private func closeDescriptor(_ fd: Int32) {
    _ = close(fd)
}

/// Why a locked append failed: the step and the system's reason.
package struct AppendFailure: Error, Sendable {
    /// The step that failed.
    package enum Step: Sendable { case open, lock, read, write }
    /// The step that failed.
    package let step: Step
    /// `strerror(errno)` at the failure.
    package let reason: String

    init(_ step: Step) {
        self.step = step
        reason = String(cString: strerror(errno))
    }
}
