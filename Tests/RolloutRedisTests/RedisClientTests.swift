import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("Redis client against a real redis-server", .tags(.redis), .requiresRedis)
struct RedisClientTests {
    @Test func setGetIsBinarySafe() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        defer { client.close() }
        let value: [UInt8] = [0, 1, 2, 0xff, 13, 10, 0x24]
        _ = try await client.send(RedisCommand(bytes: [Array("SET".utf8), Array("k".utf8), value]))
        #expect(try await client.send("GET", "k") == .bulkString(value))
        #expect(try await client.send("GET", "missing") == .null)
        #expect(try await client.send("PING") == .status("PONG"))
        #expect(try await client.send("SET", "empty", "") == .status("OK"))
        #expect(try await client.send("GET", "empty") == .bulkString([]))
    }

    @Test func pipelineKeepsOrderAndReportsEachError() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        defer { client.close() }
        let replies = try await client.pipeline([
            RedisCommand("SET", "a", "1"),
            RedisCommand("INCR", "a"),
            RedisCommand("SADD", "a", "x"),  // WRONGTYPE
            RedisCommand("GET", "a"),
        ])
        #expect(replies.count == 4)
        #expect(replies[1] == .integer(2))
        guard case .error(let text) = replies[2] else {
            Issue.record("expected an error reply, got \(replies[2])")
            return
        }
        #expect(text.hasPrefix("WRONGTYPE"))
        #expect(replies[3].string == "2")
    }

    /// Calls made at once from many tasks share writes (automatic pipelining): each still gets
    /// its own replies, in its own order, and a server error stays with the call that caused it.
    @Test func concurrentCallsEachGetTheirOwnReplies() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        defer { client.close() }
        let results = try await withThrowingTaskGroup(of: (Int, [RedisValue]).self) { group in
            for index in 0..<500 {
                group.addTask {
                    if index % 50 == 7 {
                        return (index, try await client.pipeline([RedisCommand("SADD", "k\(index)", "x"), RedisCommand("GET", "k\(index)")]))
                    }
                    return (index, try await client.pipeline([RedisCommand("SET", "k\(index)", "v\(index)"), RedisCommand("GET", "k\(index)")]))
                }
            }
            return try await group.reduce(into: [:]) { $0[$1.0] = $1.1 }
        }
        #expect(results.count == 500)
        for (index, replies) in results {
            if index % 50 == 7 {
                #expect(replies.first == .integer(1))
                guard replies.count == 2, case .error(let text) = replies[1] else {
                    Issue.record("call \(index): expected an error reply, got \(replies)")
                    continue
                }
                #expect(text.hasPrefix("WRONGTYPE"))
            } else {
                #expect(replies == [.status("OK"), .bulkString(Array("v\(index)".utf8))], "call \(index)")
            }
        }
    }

    /// A call whose deadline passed before it could be sent is not sent: it fails with a
    /// timeout, the key stays unset, and the connection goes on serving other calls.
    @Test func aCallWhoseDeadlinePassedIsNotSent() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        defer { client.close() }
        let id = try await client.send("CLIENT", "ID")
        do {
            _ = try await client.send(RedisCommand("SET", "late", "1"), waitingUntil: .now.advanced(by: .seconds(-1)))
            Issue.record("a call past its deadline was answered")
        } catch {
            #expect(error.code == .timeout)
            #expect(error.message.contains("nothing was sent"))
        }
        #expect(try await client.send("GET", "late") == .null)
        #expect(try await client.send("CLIENT", "ID") == id, "the same connection")
    }

    @Test func largePipelineIsOneCallAndComplete() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        defer { client.close() }
        let writes = (0..<5000).map { RedisCommand("SET", "key:\($0)", String(repeating: "v", count: $0 % 100)) }
        _ = try await client.pipeline(writes)
        let reads = try await client.pipeline((0..<5000).map { RedisCommand("GET", "key:\($0)") })
        #expect(reads.count == 5000)
        #expect(reads[4321].string == String(repeating: "v", count: 21))
    }

    @Test func serverErrorCarriesItsPrefix() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        defer { client.close() }
        _ = try await client.send("SET", "s", "x")
        await #expect {
            try await client.send("SADD", "s", "y")
        } throws: { error in
            let error = try #require(error as? RedisError)
            return error.code == .serverError && error.serverErrorPrefix == "WRONGTYPE"
        }
        // The connection survives a server error.
        #expect(try await client.send("GET", "s").string == "x")
    }

    @Test func evaluateFallsBackFromEvalshaToEval() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        defer { client.close() }
        let script = RedisScript("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        #expect(try await client.send("SCRIPT", "EXISTS", script.sha1) == .array([.integer(0)]))
        #expect(try await client.evaluate(script, keys: ["n"], arguments: ["5"]) == .integer(5))
        #expect(try await client.send("SCRIPT", "EXISTS", script.sha1) == .array([.integer(1)]))
        #expect(try await client.evaluate(script, keys: ["n"], arguments: ["2"]) == .integer(7))
        _ = try await client.send("SCRIPT", "FLUSH")
        #expect(try await client.evaluate(script, keys: ["n"], arguments: ["1"]) == .integer(8))
    }

    @Test func scanVisitsEveryMatchingKeyOnce() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        defer { client.close() }
        _ = try await client.pipeline((0..<2500).map { RedisCommand("SET", "flags:f\($0):enabled", "true") })
        _ = try await client.pipeline((0..<300).map { RedisCommand("SET", "other:\($0)", "x") })
        let keys = try await client.scan(matching: "flags:*", count: 100)
        #expect(Set(keys).count == 2500)
        #expect(keys.allSatisfy { $0.hasPrefix("flags:") })
    }

    @Test func subscriptionDeliversMessagesAndResubscribesAfterKill() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        defer { client.close() }
        let subscription = RedisSubscription(url: server.url(), channels: ["news"])
        defer { subscription.stop() }
        var events = subscription.events().makeAsyncIterator()
        #expect(await events.next() == .subscribed)
        _ = try await client.send("PUBLISH", "news", "hello")
        #expect(await events.next() == .message(channel: "news", payload: .bulkString(Array("hello".utf8))))
        _ = try await client.send("CLIENT", "KILL", "TYPE", "pubsub")
        guard case .disconnected(let error) = await events.next() else {
            Issue.record("expected a disconnect")
            return
        }
        #expect(error.code == .connectionClosed)
        #expect(await events.next() == .subscribed)
        _ = try await client.send("PUBLISH", "news", "again")
        #expect(await events.next() == .message(channel: "news", payload: .bulkString(Array("again".utf8))))
    }

    @Test func concurrentCallersShareOneClient() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        defer { client.close() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for task in 0..<20 {
                group.addTask {
                    for _ in 0..<50 { _ = try await client.send("INCR", "counter:\(task % 4)") }
                }
            }
            try await group.waitForAll()
        }
        let totals = try await client.pipeline((0..<4).map { RedisCommand("GET", "counter:\($0)") })
        #expect(totals.compactMap(\.integer).reduce(0, +) == 1000)
    }

    @Test func unixSocketURL() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: try RedisURL(parsing: "unix://\(server.unixSocketPath)?db=1"))
        defer { client.close() }
        _ = try await client.send("SET", "where", "db1")
        let tcp = RedisClient(url: server.url(database: 1))
        defer { tcp.close() }
        #expect(try await tcp.send("GET", "where").string == "db1")
    }
}

@Suite("Redis failures", .tags(.redis), .requiresRedis)
struct RedisFailureTests {
    @Test func connectionRefusedSaysSo() async throws {
        let port = try freeLoopbackPort()
        let client = RedisClient(url: RedisURL(endpoint: .tcp(host: "127.0.0.1", port: port)))
        await #expect {
            try await client.send("PING")
        } throws: { error in
            let error = try #require(error as? RedisError)
            return error.code == .connectionRefused && error.message.contains("127.0.0.1:\(port)")
        }
    }

    @Test func silentServerTimesOutWithinTheCommandTimeout() async throws {
        let silent = try SilentServer()
        let client = RedisClient(url: silent.url, commandTimeout: .milliseconds(200))
        // The timeout error is the proof that the command timeout ended the wait (a hang would
        // never return); no bound on elapsed time, which a loaded machine can break.
        await #expect {
            try await client.send("PING")
        } throws: { error in
            (error as? RedisError)?.code == .timeout
        }
    }

    @Test func requirepassAuthentication() async throws {
        let server = try await RedisServer.start(arguments: ["--requirepass", "s3cret-pass"])
        let good = RedisClient(url: server.url(password: "s3cret-pass"))
        defer { good.close() }
        #expect(try await good.send("PING") == .status("PONG"))

        let wrong = RedisClient(url: server.url(password: "nope"))
        await #expect {
            try await wrong.send("PING")
        } throws: { error in
            let error = try #require(error as? RedisError)
            return error.code == .authenticationFailed && !error.message.contains("nope")
        }
        let none = RedisClient(url: server.url())
        await #expect {
            try await none.send("GET", "x")
        } throws: { error in
            (error as? RedisError)?.code == .authenticationFailed
        }
    }

    @Test func aclUserAuthentication() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("ACL", "SETUSER", "gate", "on", ">gate-pass", "%R~flags:*", "+@read", "+ping")
        let gate = RedisClient(url: server.url(username: "gate", password: "gate-pass"))
        defer { gate.close() }
        #expect(try await gate.send("GET", "flags:x:enabled") == .null)
        await #expect {
            try await gate.send("SET", "flags:x:enabled", "false")
        } throws: { error in
            (error as? RedisError)?.serverErrorPrefix == "NOPERM"
        }
        let wrong = RedisClient(url: server.url(username: "gate", password: "bad"))
        await #expect {
            try await wrong.send("PING")
        } throws: { error in
            (error as? RedisError)?.code == .authenticationFailed
        }
    }

    @Test func reconnectsAfterClientKill() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        let admin = RedisClient(url: server.url())
        defer {
            client.close()
            admin.close()
        }
        _ = try await client.send("SET", "k", "v")
        let id = try #require(try await client.send("CLIENT", "ID").integer)
        _ = try await admin.send("CLIENT", "KILL", "ID", String(id))
        // The idle connection is seen closed before the next command is sent: no error surfaces.
        #expect(try await client.send("GET", "k").string == "v")
        #expect(try await client.send("CLIENT", "ID").integer != id)
    }

    @Test func reconnectsAfterServerRestart() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        defer { client.close() }
        _ = try await client.send("SET", "k", "v")
        await server.stopOffPool()
        await #expect(throws: RedisError.self) { try await client.send("PING") }
        try await server.restartOffPool()
        #expect(try await client.send("PING") == .status("PONG"))
    }

    @Test func closedClientRefusesCalls() async throws {
        let server = try await RedisServer.start()
        let client = RedisClient(url: server.url())
        _ = try await client.send("PING")
        client.close()
        await #expect {
            try await client.send("PING")
        } throws: { error in
            (error as? RedisError)?.code == .clientClosed
        }
    }
}

@Suite("Redis over TLS", .tags(.redis), .requiresRedis)
struct RedisTLSTests {
    @Test func verifiesTheServerAgainstTheGivenCA() async throws {
        let server = try await RedisServer.start(tls: true)
        let certificates = try #require(server.certificates)
        let port = try #require(server.tlsPort)
        for host in ["127.0.0.1", "localhost"] {
            let url = try RedisURL(parsing: "rediss://\(host):\(port)?cacert=\(certificates.caCertificate)")
            let client = RedisClient(url: url)
            _ = try await client.send("SET", "over", "tls")
            #expect(try await client.send("GET", "over").string == "tls")
            let replies = try await client.pipeline((0..<2000).map { RedisCommand("ECHO", String(repeating: "z", count: $0)) })
            #expect(replies[1999].string?.count == 1999)
            client.close()
        }
    }

    @Test func rejectsACertificateFromAnUntrustedCA() async throws {
        let server = try await RedisServer.start(tls: true)
        let certificates = try #require(server.certificates)
        let port = try #require(server.tlsPort)
        let url = try RedisURL(parsing: "rediss://127.0.0.1:\(port)?cacert=\(certificates.otherCACertificate)")
        let client = RedisClient(url: url)
        await #expect {
            try await client.send("PING")
        } throws: { error in
            let error = try #require(error as? RedisError)
            return error.code == .tls && error.message.contains("certificate")
        }
    }

    @Test func rejectsACertificateForAnotherHostName() async throws {
        let server = try await RedisServer.start(tls: true, tlsHostNames: "DNS:redis.example.com")
        let certificates = try #require(server.certificates)
        let port = try #require(server.tlsPort)
        for host in ["127.0.0.1", "localhost"] {
            let client = RedisClient(url: try RedisURL(parsing: "rediss://\(host):\(port)?cacert=\(certificates.caCertificate)"))
            await #expect {
                try await client.send("PING")
            } throws: { error in
                let error = try #require(error as? RedisError)
                return error.code == .tls && error.message.contains("certificate")
            }
        }
    }

    @Test func rejectsTheSystemStoreForAPrivateCA() async throws {
        let server = try await RedisServer.start(tls: true)
        let port = try #require(server.tlsPort)
        // Loading the system's trust store takes longer than the default connect timeout on a
        // busy machine; this test is about verification, not speed.
        let client = RedisClient(url: try RedisURL(parsing: "rediss://127.0.0.1:\(port)"), connectTimeout: .seconds(30))
        await #expect {
            try await client.send("PING")
        } throws: { error in
            (error as? RedisError)?.code == .tls
        }
    }

    @Test func insecureSkipsVerification() async throws {
        let server = try await RedisServer.start(tls: true)
        let port = try #require(server.tlsPort)
        let client = RedisClient(url: try RedisURL(parsing: "rediss://127.0.0.1:\(port)?insecure=true"))
        defer { client.close() }
        #expect(try await client.send("PING") == .status("PONG"))
    }

    @Test func clientCertificateIsPresented() async throws {
        let server = try await RedisServer.start(arguments: ["--tls-auth-clients", "yes"], tls: true)
        let certificates = try #require(server.certificates)
        let port = try #require(server.tlsPort)
        // The server certificate doubles as a client certificate signed by the trusted CA.
        let url = try RedisURL(
            parsing:
                "rediss://127.0.0.1:\(port)?cacert=\(certificates.caCertificate)&cert=\(certificates.serverCertificate)&key=\(certificates.serverKey)"
        )
        let client = RedisClient(url: url)
        defer { client.close() }
        #expect(try await client.send("PING") == .status("PONG"))
        let anonymous = RedisClient(url: try RedisURL(parsing: "rediss://127.0.0.1:\(port)?cacert=\(certificates.caCertificate)"))
        await #expect(throws: RedisError.self) { try await anonymous.send("PING") }
    }

    @Test func plainClientOnTLSPortFailsClearly() async throws {
        let server = try await RedisServer.start(tls: true)
        let port = try #require(server.tlsPort)
        let client = RedisClient(url: RedisURL(endpoint: .tcp(host: "127.0.0.1", port: port)), commandTimeout: .milliseconds(300))
        await #expect(throws: RedisError.self) { try await client.send("PING") }
    }
}
