import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("Discovery of the primary through Redis Sentinel", .tags(.redis), .requiresRedis)
struct SentinelDiscoveryTests {
    /// Two of three sentinels down (listed first), passwords on the data nodes and the
    /// sentinels: the one live sentinel names the primary, and the write lands there.
    @Test func findsThePrimaryThroughAnyOneLiveSentinel() async throws {
        let topology = try await SentinelTopology.start(password: "data-secret", sentinelPassword: "sentinel-secret")
        await topology.sentinels[0].stopOffPool()
        await topology.sentinels[1].stopOffPool()
        let client = RedisClient(url: try topology.url())
        defer { client.close() }
        #expect(try await client.send("SET", "flags:found:enabled", "true") == .status("OK"))
        #expect(try await topology.query(topology.nodes[0], "GET", "flags:found:enabled").string == "true")
        await topology.stopOffPool()
    }

    /// A sentinel that has not seen a failover names a node that is a replica now (a stand-in
    /// sentinel naming a real replica): ROLE says `slave`, so the next sentinel is asked.
    @Test func aSentinelNamingAReplicaIsCaughtByRole() async throws {
        let topology = try await SentinelTopology.start()
        let stale = try StaleSentinel(naming: topology.nodes[1].port)
        let client = RedisClient(url: try topology.url(sentinelPorts: [stale.port] + topology.sentinels.map(\.port)))
        defer { client.close() }
        #expect(try await client.send("SET", "flags:role:enabled", "true") == .status("OK"))
        #expect(try await topology.query(topology.nodes[0], "GET", "flags:role:enabled").string == "true")

        let staleOnly = RedisClient(url: try topology.url(sentinelPorts: [stale.port]))
        defer { staleOnly.close() }
        await #expect {
            try await staleOnly.send("PING")
        } throws: { error in
            guard let error = error as? RedisError else { return false }
            return error.code == .connectFailed && error.message.contains("127.0.0.1:\(stale.port) (named 127.0.0.1:\(topology.nodes[1].port), whose ROLE is slave, not master)")
        }
        await topology.stopOffPool()
    }

    /// Nothing listens at two addresses and a third never answers: the error names each
    /// address tried, and neither password.
    @Test func allSentinelsUnreachableNamesEachAddress() async throws {
        let refused = [try freeLoopbackPort(), try freeLoopbackPort()]
        let silent = try SilentServer()
        let ports = refused + [silent.port]
        let text = "redis-sentinel://:DATAPASS@" + ports.map { "127.0.0.1:\($0)" }.joined(separator: ",") + "?sentinelPassword=SENTPASS#mymaster"
        let client = RedisClient(url: try RedisURL(parsing: text))
        defer { client.close() }
        do {
            _ = try await client.send("PING")
            Issue.record("PING through unreachable sentinels succeeded")
        } catch {
            #expect(error.code == .connectFailed)
            for port in refused { #expect(error.message.contains("127.0.0.1:\(port) (connection refused)")) }
            #expect(error.message.contains("127.0.0.1:\(silent.port) (timeout)"))
            #expect(error.message.contains("'mymaster'"))
            #expect(!error.message.contains("PASS"))
        }
    }

    /// A forced failover (SENTINEL FAILOVER) demotes the primary the client is connected to;
    /// Sentinel kills that node's clients, so the client's next call re-resolves and writes
    /// land on the new primary, none on the demoted one (READONLY would refuse them anyway).
    @Test func writesFollowAForcedFailoverToTheNewPrimary() async throws {
        let topology = try await SentinelTopology.start()
        let client = RedisClient(url: try topology.url())
        defer { client.close() }
        #expect(try await client.send("SET", "flags:before:enabled", "true") == .status("OK"))
        #expect(try await topology.query(topology.sentinels[0], "SENTINEL", "FAILOVER", topology.primaryName) == .status("OK"))
        var promoted: RedisServer?
        #expect(await eventually(every: .milliseconds(20)) {
            guard let primary = await topology.currentPrimary(), primary !== topology.nodes[0],
                await topology.role(of: primary) == "master", await topology.role(of: topology.nodes[0]) == "slave"
            else { return false }
            promoted = primary
            return true
        })
        let newPrimary = try #require(promoted)
        #expect(await eventually { (try? await client.send("SET", "flags:after:enabled", "true")) == .status("OK") })
        #expect(try await topology.query(newPrimary, "GET", "flags:after:enabled").string == "true")
        #expect(try await topology.query(newPrimary, "GET", "flags:before:enabled").string == "true")
        await topology.stopOffPool()
    }
}

