@testable import RolloutRedis
import RolloutTestSupport
import Testing

/// rollout-gate refuses Redis Cluster at connect (docs/operations.md, "Why not Redis Cluster"):
/// HELLO's mode, asked in the handshake's round trip, says which server it reached.
@Suite("A Redis Cluster node is refused at connect", .tags(.redis), .requiresRedis)
struct ClusterNodeTests {
    @Test func aClusterNodeIsRefusedWithAdviceNamingItsAddress() async throws {
        let node = try await RedisServer.startClusterNode()
        let client = RedisClient(url: node.url())
        defer { client.close() }
        await #expect {
            try await client.send("GET", "flags:google:rollout_percent")
        } throws: { error in
            let error = try #require(error as? RedisError)
            return error.code == .clusterNode
                && error.message.hasPrefix("127.0.0.1:\(node.port) is a Redis Cluster node (HELLO says mode cluster).")
                && error.message.contains("rollout-gate needs a standalone primary or Sentinel")
                && error.message.contains("--redis-url, REDIS_URL")
                && error.message.contains("docs/operations.md, \"Why not Redis Cluster\"")
        }
        // Every reconnect asks again: the node is never used.
        let again = await #expect(throws: RedisError.self) { try await client.send("PING") }
        #expect(again?.code == .clusterNode)
    }

    /// With a password and a database: AUTH passes, the cluster is named before SELECT's own
    /// refusal ("SELECT is not allowed in cluster mode"), and the message holds no password.
    @Test func theClusterIsNamedBeforeSelectFailsAndWithoutThePassword() async throws {
        let node = try await RedisServer.startClusterNode(arguments: ["--requirepass", "s3cret-pass"])
        let client = RedisClient(url: node.url(password: "s3cret-pass", database: 2))
        defer { client.close() }
        let error = await #expect(throws: RedisError.self) { try await client.send("PING") }
        #expect(error?.code == .clusterNode)
        #expect(error?.message.contains("127.0.0.1:\(node.port)") == true)
        #expect(error?.message.contains("s3cret") == false)
    }

    @Test func overAUnixSocketTheMessageNamesTheSocket() async throws {
        let node = try await RedisServer.startClusterNode()
        let client = RedisClient(url: RedisURL(endpoint: .unix(path: node.unixSocketPath)))
        defer { client.close() }
        let error = await #expect(throws: RedisError.self) { try await client.send("PING") }
        #expect(error?.code == .clusterNode)
        #expect(error?.message.hasPrefix("\(node.unixSocketPath) is a Redis Cluster node") == true)
    }

    /// Sentinels are not asked their mode: a connection made as to a sentinel takes the cluster
    /// node as it is, one made as to a data node refuses it.
    @Test func connectionsToSentinelsDoNotAskTheMode() async throws {
        let node = try await RedisServer.startClusterNode()
        let url = node.url()
        let asSentinel = try await offThePool { () throws -> String? in
            let connection = try RedisConnection(url: url, connectTimeout: .seconds(2), commandTimeout: .seconds(2), peer: .sentinel)
            defer { connection.close() }
            return try connection.send([RedisCommand("PING")]).first?.string
        }
        #expect(asSentinel == "PONG")
        let asDataNode = try await offThePool { () -> RedisError.Code? in
            do throws(RedisError) {
                _ = try RedisConnection(url: url, connectTimeout: .seconds(2), commandTimeout: .seconds(2))
                return nil
            } catch {
                return error.code
            }
        }
        #expect(asDataNode == .clusterNode)
    }

    /// AUTH, HELLO and SELECT in one round trip against a standalone server.
    @Test func aStandaloneServerConnectsWithPasswordAndDatabase() async throws {
        let server = try await RedisServer.start(arguments: ["--requirepass", "s3cret-pass"])
        let client = RedisClient(url: server.url(password: "s3cret-pass", database: 3))
        defer { client.close() }
        #expect(try await client.send("SET", "k", "v") == .status("OK"))
        let other = RedisClient(url: server.url(password: "s3cret-pass"))
        defer { other.close() }
        #expect(try await other.send("GET", "k") == .null)  // database 0: SELECT took effect
        #expect(try await client.send("GET", "k") == .bulkString(Array("v".utf8)))
    }

    /// Redis exempts HELLO from ACL rules (like AUTH): a user allowed nothing but GET, even with
    /// `-hello` spelled out, still connects.
    @Test(arguments: [["+get"], ["+get", "-hello"]])
    func aRestrictedACLUserConnects(rules: [String]) async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send(RedisCommand("ACL", ["SETUSER", "reader", "on", ">reader-pass", "~flags:*", "-@all"] + rules))
        _ = try await admin.send("SET", "flags:google:rollout_percent", "10")
        let reader = RedisClient(url: server.url(username: "reader", password: "reader-pass"))
        defer { reader.close() }
        #expect(try await reader.send("GET", "flags:google:rollout_percent") == .bulkString(Array("10".utf8)))
        // The ACL still holds for everything else.
        let refused = await #expect(throws: RedisError.self) { try await reader.send("SET", "flags:google:rollout_percent", "50") }
        #expect(refused?.serverErrorPrefix == "NOPERM")
    }

    /// A server that does not know HELLO (a Redis before 6, here a renamed command) is not a
    /// cluster as far as the connect knows: the connect goes on.
    @Test func aServerWithoutHelloConnects() async throws {
        let server = try await RedisServer.start(arguments: withoutHello)
        let client = RedisClient(url: server.url(database: 1))
        defer { client.close() }
        #expect(try await client.send("SET", "k", "v") == .status("OK"))
        #expect(try await client.send("GET", "k") == .bulkString(Array("v".utf8)))
    }

    /// A cluster node that does not answer HELLO passes the connect; its first key command
    /// fails with a cluster error, and the message carries the same advice.
    @Test func aClusterErrorOnACommandCarriesTheAdvice() async throws {
        let node = try await RedisServer.startClusterNode(arguments: withoutHello)
        let client = RedisClient(url: node.url())
        defer { client.close() }
        #expect(try await client.send("PING") == .status("PONG"))
        let error = await #expect(throws: RedisError.self) { try await client.send("GET", "flags:google:rollout_percent") }
        #expect(error?.code == .serverError)
        #expect(error?.serverErrorPrefix == "CLUSTERDOWN")
        #expect(error?.message.hasPrefix("Redis answered with a Redis Cluster error (GET): CLUSTERDOWN Hash slot not served.") == true)
        #expect(error?.message.contains("docs/operations.md, \"Why not Redis Cluster\"") == true)
    }

    /// A server that wants a password the URL lacks refuses HELLO with NOAUTH: not a new way
    /// to fail; the first command's NOAUTH says what is wrong, as before.
    @Test func aMissingPasswordIsStillReportedAsAuthentication() async throws {
        let server = try await RedisServer.start(arguments: ["--requirepass", "s3cret-pass"])
        let client = RedisClient(url: server.url())
        defer { client.close() }
        let error = await #expect(throws: RedisError.self) { try await client.send("GET", "k") }
        #expect(error?.code == .authenticationFailed)
    }

    @Test(arguments: [
        ("MOVED 3999 127.0.0.1:6381", "MOVED"), ("ASK 3999 127.0.0.1:6381", "ASK"),
        ("CROSSSLOT Keys in request don't hash to the same slot", "CROSSSLOT"), ("CLUSTERDOWN The cluster is down", "CLUSTERDOWN"),
        ("TRYAGAIN Multiple keys request during rehashing of slot", "TRYAGAIN"),
    ])
    func everyClusterErrorReplyIsExplained(text: String, prefix: String) {
        let error = RedisError.fromServer(text, context: "EVALSHA")
        #expect(error.code == .serverError)
        #expect(error.serverErrorPrefix == prefix)
        #expect(error.message == "Redis answered with a Redis Cluster error (EVALSHA): \(text). " + clusterAdvice)
    }

    @Test func otherErrorRepliesKeepTheirPlainMessage() {
        #expect(RedisError.fromServer("READONLY You can't write against a read only replica.", context: "SET").message
            == "Redis answered with an error (SET): READONLY You can't write against a read only replica.")
    }

    @Test func helloModeIsReadFromTheFlatFieldList() {
        func hello(_ mode: String) -> RedisValue {
            .array(["server", "redis", "version", "7.0.15", "proto", "2", "mode", mode, "role", "master"].map { .bulkString(Array($0.utf8)) })
        }
        #expect(RedisConnection.mode(inHello: hello("cluster")) == "cluster")
        #expect(RedisConnection.mode(inHello: hello("standalone")) == "standalone")
        #expect(RedisConnection.mode(inHello: .error("ERR unknown command 'HELLO'")) == nil)
        #expect(RedisConnection.mode(inHello: .array([.bulkString(Array("mode".utf8))])) == nil)
    }

    /// HELLO renamed away: the server answers `ERR unknown command`, like a Redis before 6.
    private let withoutHello = ["--rename-command", "HELLO", "HELLO-renamed-away"]

    private let clusterAdvice =
        "rollout-gate needs a standalone primary or Sentinel, not Redis Cluster: point the Redis URL (--redis-url, REDIS_URL) at a "
        + "standalone primary (redis://host:6379) or at its sentinels (redis-sentinel://host:26379#name). "
        + "See docs/operations.md, \"Why not Redis Cluster\"."
}
