@testable import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("Replies are bounded before hiredis buffers them")
struct ReplyBoundTests {
    static let limit = ReplyBound.defaultMaxReplyBytes

    @Test(arguments: ["$1073741824\r\n", "*100000000\r\n"], [HostileServer.Tail.flood, .trickle])
    func hostileServerIsRefusedAndDropped(header: String, tail: HostileServer.Tail) async throws {
        let server = try HostileServer(header: header, tail: tail)
        let client = RedisClient(url: server.url, connectTimeout: .seconds(30), commandTimeout: .seconds(60))
        defer { client.close() }
        await #expect {
            try await client.send("GET", "flags:google:rollout_percent")
        } throws: { error in
            let error = try #require(error as? RedisError)
            return error.code == .replyTooLarge && error.message.contains("more than the \(Self.limit) this client accepts; is this really Redis?")
        }
        // The client hangs up without being closed by its owner, having read a fraction of the announced size.
        #expect(await server.waitForHangUp())
        #expect(server.bytesSent < 2 * Self.limit)
    }

    @Test func repliesWithinTheLimitPassAndEachReplyHasItsOwnBudget() throws {
        let reader = try RESPReader(maxReplyBytes: 64)
        // 2 × 8 (element table) + 4 + 6 + 4 + 6 + 4 = 40 bytes each: under 64, twice in a row.
        let reply = Array("*2\r\n$2\r\nab\r\n$2\r\ncd\r\n".utf8)
        for _ in 0..<2 {
            for byte in reply { try [byte].withUnsafeBytes { try reader.feed($0) } }
            #expect(try reader.next() == .array([.bulkString(Array("ab".utf8)), .bulkString(Array("cd".utf8))]))
        }
        try Array("+OK\r\n:12\r\n$-1\r\n*-1\r\n*0\r\n".utf8).withUnsafeBytes { try reader.feed($0) }
        #expect(try reader.next() == .status("OK"))
        #expect(try reader.next() == .integer(12))
        #expect(try reader.next() == .null)
        #expect(try reader.next() == .null)
        #expect(try reader.next() == .array([]))
    }

    @Test(arguments: [
        "$65\r\n",  // one bulk string over the limit
        "*9\r\n",  // 72 bytes of element table
        "*2\r\n$30\r\n" + String(repeating: "a", count: 30) + "\r\n$30\r\n",  // the sum of the parts
        "+" + String(repeating: "a", count: 80),  // a line that never ends
        "*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n",  // nesting
    ])
    func replyOverTheLimitIsRefusedBeforeItIsFed(text: String) throws {
        let reader = try RESPReader(maxReplyBytes: 64)
        #expect(throws: RedisError.self) {
            try Array(text.utf8).withUnsafeBytes { try reader.feed($0) }
        }
    }

    @Test(arguments: ["?x\r\n", "$1x\r\n", "*\r\n", "+OK\rx", "$1234567890123456789\r\n"])
    func bytesThatAreNotRESPAreAProtocolError(text: String) throws {
        let reader = try RESPReader()
        #expect {
            try Array(text.utf8).withUnsafeBytes { try reader.feed($0) }
        } throws: { error in
            (error as? RedisError)?.code == .protocolError
        }
    }
}
