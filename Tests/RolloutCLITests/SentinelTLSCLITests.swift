import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("rollout CLI through a rediss-sentinel URL", .tags(.cli, .redis), .requiresRedis)
struct SentinelTLSCLITests {
    /// Writes and a check through `rediss-sentinel://` (TLS everywhere, passwords on the data
    /// nodes and the sentinels) land on the primary; a wrong CA exits 1 naming the sentinel.
    @Test func writesAndChecksOverTLSThroughTheSentinels() async throws {
        let cli = try await CLI()
        let topology = try await SentinelTopology.start(password: "data-secret", sentinelPassword: "sentinel-secret", tls: true)
        let environment = ["REDIS_URL": topology.urlString()]
        let set = try await rollOutGoogleToHalf(cli, environment: environment)
        #expect(try await topology.query(topology.nodes[0], "GET", "flags:google:rollout_percent").string == "50")
        let check = try await cli.run("check", "google", "--actor", "user_123", environment: environment)
        #expect(check.stdout == "google for user_123: on: bucket 30079 < threshold 50000 (v2, rollout percent 50%)\n")
        let kill = try await cli.run("flags", "disable", "google", "--reason", "incident", environment: environment)
        #expect(kill.status == 0)
        #expect(try await topology.query(topology.nodes[0], "GET", "flags:google:enabled").string == "false")

        let certificates = try #require(topology.certificates)
        let wrong = try await cli.run(
            "check", "google", "--actor", "user_123", environment: ["REDIS_URL": topology.urlString(caCertificate: certificates.otherCACertificate)])
        #expect(wrong.status == 1)
        #expect(wrong.stderr.contains("127.0.0.1:\(topology.announcedPort(of: topology.sentinels[0])) (TLS: The Redis server's certificate was rejected"))
        let output = [set, check, kill, wrong].map { $0.stdout + $0.stderr }.joined()
        #expect(!output.contains("secret"))
        await topology.stopOffPool()
    }
}
