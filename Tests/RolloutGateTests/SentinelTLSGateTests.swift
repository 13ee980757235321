import InMemoryLogging
import Logging
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("Feature gate through a rediss-sentinel URL", .tags(.redis), .requiresRedis)
struct SentinelTLSGateTests {
    /// TLS everywhere, passwords on the data nodes and the sentinels, readFrom=replica: the
    /// gate reads a replica over TLS, its invalidation subscription (TLS too) delivers a kill
    /// switch written on the primary without a poll, and nothing it logs holds a password.
    @Test func gateReadsAndFollowsPushOverTLS() async throws {
        let topology = try await SentinelTopology.start(password: "data-secret", sentinelPassword: "sentinel-secret", tls: true)
        _ = try await topology.query(topology.nodes[0], "SET", "flags:google:rollout_percent", "100")
        for replica in topology.nodes.dropFirst() {
            #expect(await eventually { (try? await topology.query(replica, "GET", "flags:google:rollout_percent").string) == "100" })
        }
        var configuration = FeatureGate.Configuration()
        configuration.refreshInterval = .seconds(3600)  // only push can deliver the change in time
        let logs = InMemoryLogHandler()
        let gate = FeatureGate(
            redisURL: try topology.url(readFrom: "replica"), features: ["google"], configuration: configuration,
            logger: Logger(label: "test") { _ in logs })
        try await whileRunning(gate) {
            #expect(await eventually { gate.isEnabled("google", for: Subject(id: "a")) })
            #expect(await eventually { await subscribedReplicas(topology) == 1 })
            _ = try await topology.query(topology.nodes[0], "SET", "flags:google:enabled", "false")
            #expect(await eventually(within: .seconds(30)) { gate.decision("google", for: Subject(id: "a")).reason == .killSwitch })
        }
        let logged = logs.entries.map { "\($0.message) \($0.metadata)" }.joined(separator: "\n")
        #expect(logged.contains("rediss-sentinel://:***@"))
        #expect(!logged.contains("secret"))
        await topology.stopOffPool()
    }
}

/// How many replicas hold the gate's invalidation subscription (an unnamed client with sub=1;
/// the sentinels' connections are named sentinel-*).
private func subscribedReplicas(_ topology: SentinelTopology) async -> Int {
    var count = 0
    for replica in topology.nodes.dropFirst() {
        let clients = (try? await topology.query(replica, "CLIENT", "LIST").string) ?? ""
        if clients.split(separator: "\n").contains(where: { $0.contains(" name= ") && $0.contains(" sub=1 ") }) { count += 1 }
    }
    return count
}
