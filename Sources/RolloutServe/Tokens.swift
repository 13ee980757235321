#if canImport(Glibc)
import Glibc
#endif
import Foundation
public import Logging
import RolloutGate
public import ServiceLifecycle
import Synchronization

/// What a token may do on `rollout serve`.
public enum Scope: String, Sendable, Hashable, CaseIterable, Comparable {
    /// OFREP evaluations.
    case evaluate
    /// The status API and /metrics.
    case read
    /// Operator actions.
    case operate
    /// The Alertmanager webhook.
    case alerts

    public static func < (lhs: Scope, rhs: Scope) -> Bool {
        allCases.firstIndex(of: lhs) ?? 0 < allCases.firstIndex(of: rhs) ?? 0
    }

    /// Parses `evaluate,read`; names what is wrong otherwise.
    public static func parseList(_ text: String) throws(TokenFileError) -> Set<Scope> {
        var scopes = Set<Scope>()
        for part in text.split(separator: ",") {
            let name = part.trimmingCharacters(in: .whitespaces)
            guard let scope = Scope(rawValue: name) else {
                throw TokenFileError("\(name) is not a scope: use \(allCases.map(\.rawValue).joined(separator: ", ")).")
            }
            scopes.insert(scope)
        }
        guard !scopes.isEmpty else { throw TokenFileError("Give at least one scope: \(allCases.map(\.rawValue).joined(separator: ", ")).") }
        return scopes
    }
}

/// A tokens file that cannot be read, parsed or written; nothing was changed.
public struct TokenFileError: Error, Sendable, CustomStringConvertible {
    /// What is wrong, naming the file and line where there is one.
    public let description: String

    init(_ description: String) { self.description = description }
}

/// The tokens `rollout serve` accepts: one line each, `NAME SCOPES sha256:<hex>`, only the
/// SHA-256 of each token stored. `#` starts a comment.
public struct TokenFile: Sendable, Hashable {
    /// One token.
    public struct Entry: Sendable, Hashable {
        /// Who holds it (written in the audit log as `api:<name>`).
        public var name: String
        /// What it may do.
        public var scopes: Set<Scope>
        /// The hex SHA-256 of the token.
        public var sha256: String

        /// The file's line.
        var line: String { "\(name) \(scopes.sorted().map(\.rawValue).joined(separator: ",")) sha256:\(sha256)" }
    }

    /// The tokens, in file order.
    public var entries: [Entry]

    /// No tokens.
    public init(entries: [Entry] = []) { self.entries = entries }

    /// Parses a file's text; `path` names it in errors.
    public init(parsing text: String, path: String) throws(TokenFileError) {
        entries = []
        for (index, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            let fields = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard fields.count == 3, fields[2].hasPrefix("sha256:") else {
                throw TokenFileError("\(path) line \(index + 1) is not NAME SCOPES sha256:<hex>.")
            }
            let hash = String(fields[2].dropFirst("sha256:".count)).lowercased()
            guard hash.count == 64, hash.allSatisfy(\.isHexDigit) else {
                throw TokenFileError("\(path) line \(index + 1): the hash is not 64 hex digits.")
            }
            let scopes: Set<Scope>
            do {
                scopes = try Scope.parseList(fields[1])
            } catch {
                throw TokenFileError("\(path) line \(index + 1): \(error.description)")
            }
            guard Self.isValidName(fields[0]), !entries.contains(where: { $0.name == fields[0] }) else {
                throw TokenFileError("\(path) line \(index + 1): the name \(fields[0]) is invalid or used twice.")
            }
            entries.append(Entry(name: fields[0], scopes: scopes, sha256: hash))
        }
    }

    /// The file's text.
    public var text: String {
        "# rollout serve tokens: NAME SCOPES sha256:<hex of the token>. Made by `rollout tokens add`.\n"
            + entries.map { $0.line + "\n" }.joined()
    }

    /// A name: letters, digits, `-`, `_`, `.`, at most 64.
    public static func isValidName(_ name: String) -> Bool {
        !name.isEmpty && name.count <= 64
            && name.unicodeScalars.allSatisfy { $0.isASCII && (CharacterSet.alphanumerics.contains($0) || "-_.".unicodeScalars.contains($0)) }
    }

    /// A new random token (256 bits, URL-safe) and its entry.
    public static func newToken(name: String, scopes: Set<Scope>) -> (token: String, entry: Entry) {
        var generator = SystemRandomNumberGenerator()
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
        // 43 characters of 64 symbols: 258 bits.
        let token = "rg_" + String((0..<43).map { _ in alphabet[Int(generator.next(upperBound: UInt8(64)))] })
        return (token, Entry(name: name, scopes: scopes, sha256: sha256Hex(Data(token.utf8))))
    }

    /// The entry of `token`, comparing hashes in constant time over every entry (the time
    /// says nothing about which entry, or how much of a hash, matched).
    public func entry(for token: String) -> Entry? {
        let digest = Array(sha256Hex(Data(token.utf8)).utf8)
        var found: Entry?
        for entry in entries where constantTimeEqual(Array(entry.sha256.utf8), digest) { found = entry }
        return found
    }

    /// Reads `path` (blocking: on the file queue).
    public static func read(_ path: String) async throws(TokenFileError) -> TokenFile {
        let read = await onFileQueue { () -> String? in
            guard let data = FileManager.default.contents(atPath: path) else { return nil }
            return String(decoding: data, as: UTF8.self)
        }
        guard let text = read else { throw TokenFileError("Cannot read the tokens file \(path).") }
        return try TokenFile(parsing: text, path: path)
    }

    /// Writes the file whole and durably, readable by its owner only (0600): a crash leaves the
    /// old file or the new one.
    public func write(to path: String) async throws(TokenFileError) {
        let data = Data(text.utf8)
        let failure = await onFileQueue { () -> FileWriteError? in
            do throws(FileWriteError) {
                try replaceFileDurably(path, with: data, mode: 0o600)
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw TokenFileError("The tokens file: \(failure.description)") }
    }
}

/// The tokens a running server accepts: the file, re-read when it changes (checked every 2 s),
/// the last good version kept when a new one does not parse.
public final class TokenStore: Service, Sendable {
    /// The tokens file.
    public let path: String
    private let current: Mutex<(file: TokenFile, stamp: FileStamp?)>
    private let logger: Logger

    /// Reads `path` once; fails when it cannot be read or parsed.
    public init(path: String, logger: Logger) async throws(TokenFileError) {
        self.path = path
        self.logger = logger
        let stamp = await onFileQueue { FileStamp(path) }
        current = Mutex((try await TokenFile.read(path), stamp))
    }

    /// The tokens now.
    public var file: TokenFile { current.withLock { $0.file } }

    /// Re-reads the file whenever it changes, until a graceful shutdown.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                do {
                    try await Task.sleep(for: .seconds(2))
                } catch {
                    return
                }
                await self.reloadIfChanged()
            }
        }
    }

    /// Reads the file again if its inode, size or modification time changed.
    public func reloadIfChanged() async {
        let path = path
        let stamp = await onFileQueue { FileStamp(path) }
        guard stamp != current.withLock({ $0.stamp }) else { return }
        do {
            let file = try await TokenFile.read(path)
            current.withLock { $0 = (file, stamp) }
            logger.notice("Tokens file re-read", metadata: ["serve.tokens_file": "\(path)", "serve.tokens": "\(file.entries.count)"])
        } catch {
            current.withLock { $0.stamp = stamp }
            logger.error(
                "The tokens file changed but cannot be used; the previous tokens stay in force",
                metadata: ["serve.tokens_file": "\(path)", "error": "\(error)"])
        }
    }
}

/// What tells a file changed: its inode, size and modification time.
struct FileStamp: Sendable, Hashable {
    let inode: Int
    let size: Int
    let modified: Double

    init?(_ path: String) {
        guard let attributes = try? FileManager.default.attributesOfItem(atPath: path) else { return nil }
        inode = (attributes[.systemFileNumber] as? NSNumber)?.intValue ?? 0
        size = (attributes[.size] as? NSNumber)?.intValue ?? 0
        modified = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only, never on
/// where they differ.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    var difference: UInt8 = a.count == b.count ? 0 : 1
    for index in 0..<min(a.count, b.count) { difference |= a[index] ^ b[index] }
    return difference == 0
}
