import CHiredis

/// hiredis's RESP reader: bytes in, ``RedisValue``s out. Every reply is copied into Swift
/// values and freed before it is returned.
final class RESPReader {
    private let reader: UnsafeMutablePointer<redisReader>

    init() throws(RedisError) {
        guard let reader = redisReaderCreate() else {
            throw RedisError(.io, "hiredis could not allocate a reply reader (out of memory).")
        }
        self.reader = reader
    }

    deinit { redisReaderFree(reader) }

    func feed(_ bytes: UnsafeRawBufferPointer) throws(RedisError) {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return }
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
