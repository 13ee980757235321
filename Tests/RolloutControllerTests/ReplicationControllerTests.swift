import Foundation
import RolloutController
import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("Policy: redis as a mapping with min_replicas and replica_timeout")
struct ReplicationPolicyTests {
    private let head = "prometheus: http://127.0.0.1:9090\n"
    private let features = "features:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1}]\n"

    @Test func redisIsAURLOrAMappingOfItsURLAndReplicas() throws {
        let plain = try ControllerPolicy(yaml: head + "redis: redis://127.0.0.1:7000\n" + features)
        #expect(plain.redis.description == "redis://127.0.0.1:7000/0")
        #expect(plain.replicas == .automatic)
        let mapped = try ControllerPolicy(
            yaml: head + "redis:\n  url: redis-sentinel://127.0.0.1:26379#mymaster\n  min_replicas: 2\n  replica_timeout: 2s\n" + features)
        #expect(mapped.redis.sentinel != nil)
        #expect(mapped.replicas == ReplicaAcknowledgement(minimum: 2, timeout: .seconds(2)))
        // REDIS_URL still overrides the URL, and leaves the replicas as the file says.
        let overridden = try ControllerPolicy(
            yaml: head + "redis:\n  url: redis://127.0.0.1:7000\n  min_replicas: 0\n" + features, environment: ["REDIS_URL": "redis://127.0.0.1:7001"])
        #expect(overridden.redis.description == "redis://127.0.0.1:7001/0")
        #expect(overridden.replicas == ReplicaAcknowledgement(minimum: 0))
    }

    @Test func badReplicaSettingsAreProblemsOfTheirFields() {
        #expect {
            try ControllerPolicy(yaml: head + "redis:\n  url: redis://x\n  min_replicas: -1\n  replica_timeout: 2h\n  wait: 1\n" + features, path: "p.yaml")
        } throws: { error in
            let text = "\(error)"
            return text.contains("redis.min_replicas") && text.contains("redis.replica_timeout") && text.contains("redis.wait (line 6): is not a known key")
        }
    }

    @Test func theRequiredCountFollowsTheReplicasConnected() {
        #expect(ReplicaAcknowledgement.automatic.required(connected: 0) == 0)
        #expect(ReplicaAcknowledgement.automatic.required(connected: 2) == 1)
        #expect(ReplicaAcknowledgement(minimum: 2).required(connected: 0) == 2)
        #expect(ReplicaAcknowledgement(minimum: -3).minimum == 0)
        #expect(Replication(required: 1, acknowledged: 1, timeout: .milliseconds(500)).isReplicated)
        #expect(!Replication(required: 2, acknowledged: 1, timeout: .milliseconds(500)).isReplicated)
        #expect(!Replication(required: 1, acknowledged: 0, timeout: .milliseconds(500), refusal: "NOPERM").isReplicated)
        #expect(Replication(required: 2, acknowledged: 1, timeout: .milliseconds(500)).description == "1 of 2 replicas acknowledged the write within 500 ms")
    }
}

@Suite("Controller: a change waits for its replicas", .tags(.e2e, .prometheus, .redis), .requiresPrometheus)
struct ReplicationControllerTests {
    /// A promotion both replicas acknowledge exits 0; one made while they are paused (SIGSTOP)
    /// stands on the primary, is reported `replicated: false` with a `not replicated` note after
    /// its audit record, and the run exits 1.
    @Test func aPromotionTheReplicasMissedStandsAndTheRunExitsOne() async throws {
        let world = try await ControllerWorld.make()
        let topology = try await SentinelTopology.start()
        let primary = RedisClient(url: topology.directURL(topology.nodes[0]))
        defer { primary.close() }
        try world.writePolicy([("chain", "dwell: 0s")], redisURL: topology.urlString())
        _ = try await primary.send("SET", "flags:chain:controller_percent", "0")
        try await world.serve("chain", errorRatio: 0.001)

        let healthy = try await world.run()
        #expect(healthy.status == 0, "\(healthy.output.stderr)")
        #expect(healthy.features["chain"]?["applied"] as? Bool == true)
        #expect(healthy.features["chain"]?["replicated"] == nil)

        let replicas = Array(topology.nodes.dropFirst())
        for replica in replicas { replica.freeze() }
        let missed = try await world.run()
        for replica in replicas { replica.thaw() }
        #expect(missed.status == 1, "\(missed.output.stderr)")
        let chain = try #require(missed.features["chain"])
        #expect(chain["decision"] as? String == "promote")
        #expect(chain["applied"] as? Bool == true)
        #expect(chain["replicated"] as? Bool == false)
        #expect((chain["replication"] as? [String: Any])?["acknowledged"] as? Int == 0)
        #expect(try await primary.send("GET", "flags:chain:rollout_percent").string == "50")
        let lines = world.auditLines()
        #expect(lines.count == 3, "\(lines)")
        #expect(lines.last?.contains("  chain  not replicated  reason=0 of 1 replica acknowledged the write within 500 ms (10% -> 50%)") == true)
        #expect(lines.last?.hasSuffix("by=controller") == true)
        await topology.stopOffPool()
    }
}
