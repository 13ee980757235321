import CHiredis

/// hiredis's RESP reader: bytes in, ``RedisValue``s out. Every reply is copied into Swift
/// values and freed before it is returned.
///
/// Bytes are measured by a ``ReplyBound`` before hiredis sees them: hiredis allocates an
/// array's element table as soon as it reads `*<n>` and buffers a bulk string until it is
/// complete, so a hostile server's `$1073741824` must be refused before it is fed.
final class RESPReader {
    private let reader: UnsafeMutablePointer<redisReader>
    private var bound: ReplyBound

    init(maxReplyBytes: Int = ReplyBound.defaultMaxReplyBytes) throws(RedisError) {
        guard let reader = redisReaderCreate() else {
            throw RedisError(.io, "hiredis could not allocate a reply reader (out of memory).")
        }
        self.reader = reader
        bound = ReplyBound(maxReplyBytes: maxReplyBytes)
    }

    deinit { redisReaderFree(reader) }

    func feed(_ bytes: UnsafeRawBufferPointer) throws(RedisError) {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
        try bound.scan(bytes)
        if redisReaderFeed(reader, base.assumingMemoryBound(to: CChar.self), bytes.count) != REDIS_OK {
            throw protocolError()
        }
    }

    /// The next complete reply, or nil when more bytes are needed.
    func next() throws(RedisError) -> RedisValue? {
        var reply: UnsafeMutableRawPointer?
        if redisReaderGetReply(reader, &reply) != REDIS_OK {
            throw protocolError()
        }
        guard let reply else { return nil }
        defer { freeReplyObject(reply) }
        return Self.value(of: reply.assumingMemoryBound(to: redisReply.self))
    }

    private func protocolError() -> RedisError {
        let text = withUnsafeBytes(of: reader.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        return RedisError(.protocolError, "The server sent bytes that are not RESP: \(text). Is this a Redis port?")
    }

    private static func value(of reply: UnsafeMutablePointer<redisReply>) -> RedisValue {
        let node = reply.pointee
        func text() -> [UInt8] {
            guard let pointer = node.str else { return [] }
            return Array(UnsafeRawBufferPointer(start: pointer, count: node.len))
        }
        switch node.type {
        case REDIS_REPLY_STRING:
            return .bulkString(text())
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: text(), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: text(), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(node.integer))
        case REDIS_REPLY_ARRAY:
            var elements: [RedisValue] = []
            elements.reserveCapacity(node.elements)
            for index in 0..<node.elements {
                if let child = node.element[index] {
                    elements.append(value(of: child))
                } else {
                    elements.append(.null)
                }
            }
            return .array(elements)
        default:
            return .null
        }
    }
}

/// The memory a reply may cost, counted on the raw bytes as they arrive: every line (type
/// byte to CRLF), every announced bulk length, and 8 bytes per announced array element (the
/// pointer table hiredis allocates for it). What hiredis and the Swift copy allocate is a small
/// multiple of this count, so a reply over the limit is refused before its memory exists.
struct ReplyBound {
    /// 64 MiB: far above any flag value, and room for an allow set of a few million ids.
    static let defaultMaxReplyBytes = 64 * 1024 * 1024
    /// What hiredis allocates per array element before the element arrives (one pointer).
    private static let bytesPerElement = 8

    let maxReplyBytes: Int
    /// Values still to come before the current top-level reply is complete; 0 between replies.
    private var pending = 0
    /// What the current top-level reply has cost so far.
    private var cost = 0
    private var state = State.typeByte

    private enum State {
        /// The next byte starts a value.
        case typeByte
        /// Inside a `+`, `-` or `:` line, up to its CR.
        case simpleLine
        /// Inside the length of a `$` (bulk) or `*` (array) header.
        case length(array: Bool, negative: Bool, digits: Int, value: Int)
        /// After the CR of a line, expecting its LF; `then` is what the line announced.
        case lineFeed(Announced)
        /// Inside a bulk string's payload and its CRLF: this many bytes are left.
        case payload(Int)
    }

    private enum Announced {
        case value
        case bulk(Int)
        case array(Int)
    }

    init(maxReplyBytes: Int) {
        self.maxReplyBytes = maxReplyBytes
    }

    mutating func scan(_ bytes: UnsafeRawBufferPointer) throws(RedisError) {
        var index = 0
        while index < bytes.count {
            if case .payload(let left) = state {
                // A payload was already charged when its length was announced: skip it whole.
                let taken = min(left, bytes.count - index)
                index += taken
                if taken == left {
                    state = .typeByte
                    valueEnded()
                } else {
                    state = .payload(left - taken)
                }
                continue
            }
            let byte = bytes[index]
            index += 1
            try charge(1)
            switch state {
            case .typeByte:
                if pending == 0 { pending = 1 }
                switch byte {
                case UInt8(ascii: "+"), UInt8(ascii: "-"), UInt8(ascii: ":"): state = .simpleLine
                case UInt8(ascii: "$"): state = .length(array: false, negative: false, digits: 0, value: 0)
                case UInt8(ascii: "*"): state = .length(array: true, negative: false, digits: 0, value: 0)
                default:
                    throw RedisError(
                        .protocolError,
                        "The server sent byte \(byte) where a RESP reply starts (+, -, :, $ or *). Is this a Redis port?")
                }
            case .simpleLine:
                if byte == UInt8(ascii: "\r") { state = .lineFeed(.value) }
            case .length(let array, let negative, let digits, let value):
                if byte == UInt8(ascii: "-"), digits == 0, !negative {
                    state = .length(array: array, negative: true, digits: 0, value: 0)
                } else if byte >= UInt8(ascii: "0"), byte <= UInt8(ascii: "9"), digits < 18 {
                    // 18 digits cannot overflow; the header is refused at its CR, before any
                    // byte of it reaches hiredis.
                    state = .length(array: array, negative: negative, digits: digits + 1, value: value * 10 + Int(byte - UInt8(ascii: "0")))
                } else if byte == UInt8(ascii: "\r"), digits > 0 {
                    let length = negative ? -value : value
                    if length > 0 { try announce(length, array: array) }
                    state = .lineFeed(length < 0 ? .value : array ? .array(length) : .bulk(length))
                } else {
                    throw RedisError(
                        .protocolError,
                        "The server sent a \(array ? "array" : "bulk string") header whose length is not a number of at most 18 digits. Is this a Redis port?")
                }
            case .lineFeed(let announced):
                guard byte == UInt8(ascii: "\n") else {
                    throw RedisError(.protocolError, "The server sent a line that does not end in CRLF. Is this a Redis port?")
                }
                switch announced {
                case .value:
                    state = .typeByte
                    valueEnded()
                case .bulk(let length):
                    try charge(length)
                    state = .payload(length + 2)
                case .array(let count):
                    try charge(count * Self.bytesPerElement)
                    state = .typeByte
                    // The header itself is done; its elements are still to come.
                    pending += count
                    valueEnded()
                }
            case .payload:
                break  // handled above
            }
        }
    }

    /// Refuses a length whose cost alone passes the limit.
    private func announce(_ length: Int, array: Bool) throws(RedisError) {
        let (product, overflow) = length.multipliedReportingOverflow(by: Self.bytesPerElement)
        let bytes = !array ? length : overflow ? Int.max : product
        guard bytes > maxReplyBytes - cost else { return }
        throw RedisError(
            .replyTooLarge,
            "The server announced a reply of \(array ? "\(length) elements (\(bytes) bytes)" : "\(bytes) bytes")"
                + ", more than the \(maxReplyBytes) this client accepts; is this really Redis? The connection was dropped.")
    }

    private mutating func charge(_ bytes: Int) throws(RedisError) {
        guard bytes > maxReplyBytes - cost else {
            cost += bytes
            return
        }
        throw RedisError(
            .replyTooLarge,
            "The server sent a reply of more than \(maxReplyBytes) bytes, the most this client accepts; is this really Redis? The connection was dropped.")
    }

    private mutating func valueEnded() {
        pending -= 1
        if pending == 0 { cost = 0 }
    }
}

/// Appends the RESP encoding of `command`, made by hiredis's `redisFormatCommandArgv`.
func appendFormatted(_ command: RedisCommand, to output: inout [UInt8]) throws(RedisError) {
    // hiredis wants every argument's address at once: lay the arguments out in one buffer.
    let arguments = command.arguments
    guard let name = arguments.first, !name.isEmpty else {
        throw RedisError(.io, "A Redis command needs a name.")
    }
    var joined: [UInt8] = []
    joined.reserveCapacity(arguments.reduce(0) { $0 + $1.count })
    var lengths: [Int] = []
    lengths.reserveCapacity(arguments.count)
    for argument in arguments {
        joined.append(contentsOf: argument)
        lengths.append(argument.count)
    }
    let length: Int32 = joined.withUnsafeBufferPointer { buffer in
        let base = UnsafeRawPointer(buffer.baseAddress)?.assumingMemoryBound(to: CChar.self)
        var pointers: [UnsafePointer<CChar>?] = []
        pointers.reserveCapacity(arguments.count)
        var offset = 0
        for count in lengths {
            pointers.append(base.map { $0 + offset })
            offset += count
        }
        var target: UnsafeMutablePointer<CChar>?
        let length = pointers.withUnsafeMutableBufferPointer { argv in
            redisFormatCommandArgv(&target, Int32(arguments.count), argv.baseAddress, lengths)
        }
        if length > 0, let target {
            output.append(contentsOf: UnsafeRawBufferPointer(start: target, count: Int(length)))
            redisFreeCommand(target)
        }
        return length
    }
    guard length > 0 else {
        throw RedisError(.io, "hiredis could not format the command \(command.name).")
    }
}
