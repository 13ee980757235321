/// One RESP2 reply, copied out of hiredis into Swift values.
public enum RedisValue: Sendable, Hashable {
    /// A simple string reply (`+OK`).
    case status(String)
    /// A bulk string reply: raw bytes.
    case bulkString([UInt8])
    /// An integer reply.
    case integer(Int64)
    /// An array reply.
    case array([RedisValue])
    /// A nil bulk string or nil array.
    case null
    /// An error reply (`-ERR ...`). Only pipelines return it as a value;
    /// single commands throw it as ``RedisError``.
    case error(String)

    /// The reply as text: a bulk string decoded as UTF-8, a status, or an integer's digits.
    public var string: String? {
        switch self {
        case .bulkString(let bytes): return String(decoding: bytes, as: UTF8.self)
        case .status(let text): return text
        case .integer(let value): return String(value)
        default: return nil
        }
    }

    /// The reply as an integer: an integer reply or a bulk string holding digits.
    public var integer: Int64? {
        switch self {
        case .integer(let value): return value
        case .bulkString, .status: return string.flatMap { Int64($0) }
        default: return nil
        }
    }

    /// The elements of an array reply.
    public var array: [RedisValue]? {
        if case .array(let values) = self { return values }
        return nil
    }

    /// Whether the reply is nil.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The reply, or the error it carries thrown as ``RedisError``.
    public func throwingServerError(context: String? = nil) throws(RedisError) -> RedisValue {
        if case .error(let text) = self { throw RedisError.fromServer(text, context: context) }
        return self
    }
}

/// One command: a name and its arguments, each sent as a binary-safe bulk string.
public struct RedisCommand: Sendable, Hashable, CustomStringConvertible {
    /// The arguments, command name first.
    public var arguments: [[UInt8]]

    /// A command from text arguments, name first: `RedisCommand("SET", "flags:google:paused", "true")`.
    public init(_ name: String, _ arguments: String...) {
        self.init(name, arguments)
    }

    /// A command from text arguments, name first.
    public init(_ name: String, _ arguments: [String]) {
        self.arguments = [Array(name.utf8)] + arguments.map { Array($0.utf8) }
    }

    /// A command from raw byte arguments, name first.
    public init(bytes arguments: [[UInt8]]) {
        self.arguments = arguments
    }

    /// The command's name in upper case.
    public var name: String {
        String(decoding: arguments.first ?? [], as: UTF8.self).uppercased()
    }

    /// The name only: arguments may hold secrets (AUTH) or user data.
    public var description: String { name }
}
