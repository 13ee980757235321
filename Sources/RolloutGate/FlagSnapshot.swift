#if canImport(FoundationEssentials)
public import FoundationEssentials
#else
public import Foundation
#endif
import CRolloutCrypto
import Dispatch
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A saved copy of flags keys (strings, sets, hashes and sorted sets, with their TTLs), for
/// `rollout snapshot save|restore`. The JSON is a contract: fields may be added, never renamed.
public struct FlagSnapshot: Codable, Sendable, Hashable {
    /// One key.
    public struct Entry: Codable, Sendable, Hashable {
        /// The key: `flags:<feature>:<name>`.
        public var key: String
        /// string, set, hash or zset.
        public var type: String
        /// A string's value.
        public var value: String?
        /// A set's members, sorted.
        public var members: [String]?
        /// A hash's fields.
        public var fields: [String: String]?
        /// A sorted set's members and scores.
        public var scores: [String: Double]?
        /// Milliseconds left to live, when the key expires.
        public var ttlMilliseconds: Int64?

        enum CodingKeys: String, CodingKey {
            case key, type, value, members, fields, scores
            case ttlMilliseconds = "ttl_ms"
        }

        /// A key of `type` with no content yet.
        package init(key: String, type: String) {
            self.key = key
            self.type = type
        }
    }

    /// The format's version.
    public var version = 1
    /// When it was taken (ISO-8601 UTC).
    public var createdAt: String
    /// The features it covers; nil for every `flags:*` key.
    public var features: [String]?
    /// The keys, sorted.
    public var keys: [Entry]

    enum CodingKeys: String, CodingKey {
        case version, features, keys
        case createdAt = "created_at"
    }

    /// A snapshot of `keys`, taken at `createdAt`, covering `features` (nil: every flags key).
    package init(createdAt: String, features: [String]?, keys: [Entry]) {
        self.createdAt = createdAt
        self.features = features
        self.keys = keys
    }

    /// The JSON as written: pretty, sorted keys, so equal snapshots are equal bytes.
    public func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return try encoder.encode(self) + Data("\n".utf8)
    }

    /// Parses and checks a snapshot: every key is a flags key of a valid feature, of a known type.
    public static func decode(_ data: Data, path: String) throws(SnapshotError) -> FlagSnapshot {
        let snapshot: FlagSnapshot
        do {
            snapshot = try JSONDecoder().decode(FlagSnapshot.self, from: data)
        } catch {
            throw SnapshotError("\(path) is not a rollout snapshot: \(error)")
        }
        guard snapshot.version == 1 else { throw SnapshotError("\(path) has version \(snapshot.version); this rollout reads version 1.") }
        for entry in snapshot.keys {
            guard FeatureKeys.feature(ofKey: entry.key) != nil else {
                throw SnapshotError("\(path): \(entry.key) is not a flags:<feature>:<key> name; nothing was restored.")
            }
            let complete: Bool
            switch entry.type {
            case "string": complete = entry.value != nil
            case "set": complete = entry.members != nil
            case "hash": complete = entry.fields != nil
            case "zset": complete = entry.scores != nil
            default: throw SnapshotError("\(path): \(entry.key) has the unknown type \(entry.type); nothing was restored.")
            }
            guard complete else { throw SnapshotError("\(path): \(entry.key) (\(entry.type)) has no value; nothing was restored.") }
        }
        return snapshot
    }
}

/// A snapshot that cannot be used: unreadable, altered, or not a snapshot. Nothing is changed.
public struct SnapshotError: Error, Sendable, CustomStringConvertible {
    /// What is wrong.
    public let description: String

    package init(_ description: String) { self.description = description }
}

/// The hex SHA-256 of `data`, as `sha256sum` prints it.
package func sha256Hex(_ data: Data) -> String {
    var digest = [UInt8](repeating: 0, count: 32)
    data.withUnsafeBytes { CRolloutCrypto_sha256($0.baseAddress, $0.count, &digest) }
    return hexDigits(digest)
}

/// `bytes` as lowercase hex digits, two a byte.
package func hexDigits(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var text = [UInt8]()
    text.reserveCapacity(bytes.underestimatedCount * 2)
    for byte in bytes {
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 0xf)])
    }
    return String(decoding: text, as: UTF8.self)
}

// MARK: The file beside its checksum

extension FlagSnapshot {
    /// The largest snapshot file read (a few hundred bytes a feature: far above any real one).
    static let maximumFileSize = 64 << 20

    /// Reads `path`, checks it against `path.sha256` (as `rollout snapshot save` writes it) and
    /// parses it. Blocks: call it on ``onFileQueue(_:)``. Returns the snapshot and its SHA-256.
    package static func readChecked(from path: String) throws(SnapshotError) -> (snapshot: FlagSnapshot, sha256: String) {
        let data = try readFile(path)
        let checksumText = try readFile(path + ".sha256", missing: "\(path).sha256 is missing: a snapshot is used only with its checksum.")
        guard let expected = String(decoding: checksumText, as: UTF8.self).split(whereSeparator: { $0 == " " || $0 == "\n" }).first else {
            throw SnapshotError("\(path).sha256 is empty: a snapshot is used only with its checksum.")
        }
        let actual = sha256Hex(data)
        guard actual == expected.lowercased() else {
            throw SnapshotError(
                "\(path) does not match its checksum (\(expected.prefix(12))… expected, \(actual.prefix(12))… found): it was altered or is incomplete.")
        }
        return (try decode(data, path: path), actual)
    }

    /// Writes the snapshot to `path` and its SHA-256 to `path.sha256`, each to a temporary file
    /// in the same folder, flushed to disk and renamed over the old one: a crash leaves the old
    /// file or the new one, never a torn one (and a crash between the two renames leaves a
    /// checksum that does not match, so the file is refused, never half used). Blocks: call it
    /// on ``onFileQueue(_:)``.
    package func writeDurably(to path: String) throws(SnapshotError) {
        let data: Data
        do {
            data = try encoded()
        } catch {
            throw SnapshotError("Cannot encode the snapshot for \(path): \(error)")
        }
        let name = path.split(separator: "/", omittingEmptySubsequences: false).last.map(String.init) ?? path
        do {
            try replaceFileDurably(path, with: data)
            try replaceFileDurably(path + ".sha256", with: Data("\(sha256Hex(data))  \(name)\n".utf8))
        } catch {
            throw SnapshotError(error.description)
        }
    }

    private static func readFile(_ path: String, missing: String? = nil) throws(SnapshotError) -> Data {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            let reason = String(cString: strerror(errno))
            if errno == ENOENT, let missing { throw SnapshotError(missing) }
            throw SnapshotError("Cannot read the snapshot \(path): \(reason).")
        }
        defer { close(fd) }
        var bytes = [UInt8]()
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw SnapshotError("Cannot read the snapshot \(path): \(String(cString: strerror(errno))).")
            }
            if count == 0 { break }
            bytes.append(contentsOf: chunk[0..<count])
            guard bytes.count <= maximumFileSize else {
                throw SnapshotError("\(path) is larger than \(maximumFileSize >> 20) MiB: not a rollout snapshot.")
            }
        }
        return Data(bytes)
    }
}

/// Why ``replaceFileDurably(_:with:mode:)`` failed: the step and the system's reason, and
/// what to check.
package struct FileWriteError: Error, CustomStringConvertible {
    package let description: String
}

/// Replaces `path` with `data` durably: a temporary file with `mode` in the same folder, written
/// whole and flushed to disk, renamed over `path`, then the folder flushed. A crash leaves the
/// old file or the new one, never a torn one. Blocking: call it on the file queue.
package func replaceFileDurably(_ path: String, with data: Data, mode: UInt32 = 0o644) throws(FileWriteError) {
    let slash = path.lastIndex(of: "/")
    let directory = slash.map { $0 == path.startIndex ? "/" : String(path[..<$0]) } ?? "."
    let name = slash.map { String(path[path.index(after: $0)...]) } ?? path
    let temporary = "\(directory)/.\(name).\(getpid()).\(UInt32.random(in: 0...UInt32.max)).tmp"
    func failure(_ step: String) -> FileWriteError {
        FileWriteError(description: "Cannot write \(path) (\(step): \(String(cString: strerror(errno)))): check the folder exists, is writable and has room.")
    }
    let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode)
    guard fd >= 0 else { throw failure("create \(temporary)") }
    // The mode exactly, whatever the umask.
    guard fchmod(fd, mode) == 0 else {
        let error = failure("chmod")
        close(fd)
        unlink(temporary)
        throw error
    }
    var written = 0
    let ok = data.withUnsafeBytes { raw -> Bool in
        while written < raw.count, let base = raw.baseAddress {
            let count = write(fd, base + written, raw.count - written)
            if count < 0 {
                if errno == EINTR { continue }
                return false
            }
            written += count
        }
        return true
    }
    guard ok, fsync(fd) == 0 else {
        let error = failure(ok ? "fsync" : "write")
        close(fd)
        unlink(temporary)
        throw error
    }
    close(fd)
    guard rename(temporary, path) == 0 else {
        let error = failure("rename")
        unlink(temporary)
        throw error
    }
    // The rename itself is durable once the folder is.
    let folder = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    if folder >= 0 {
        _ = fsync(folder)
        close(folder)
    }
}

/// The queue every blocking file call of the gate and the tools runs on (the audit log's
/// locked append, snapshot files): `open`, `flock`, `write` and `fsync` block, so they never run
/// on Swift's cooperative pool, a few threads that every task shares.
private let fileQueue = DispatchQueue(label: "rollout-gate.files")

/// Runs blocking file work on the gate's file queue and returns its result.
package func onFileQueue<Result: Sendable>(_ body: @escaping @Sendable () -> Result) async -> Result {
    await withCheckedContinuation { continuation in
        fileQueue.async { continuation.resume(returning: body()) }
    }
}
