import RolloutTestSupport
import Testing

@Suite("Controller against a Redis Cluster node", .tags(.e2e, .prometheus, .redis), .requiresPrometheus)
struct ClusterNodeControllerTests {
    /// A policy whose redis: is a cluster node: the run holds with redis_error, exits 1, says
    /// what to do, changes nothing and audits nothing, even with healthy metrics.
    @Test func aRunAgainstAClusterNodeExitsOneAndAuditsNothing() async throws {
        let world = try await ControllerWorld.make()
        let node = try await RedisServer.startClusterNode(arguments: ["--requirepass", "hunter2-pass"])
        try world.writePolicy([("cluster", "dwell: 0s")], redisURL: "redis://:hunter2-pass@127.0.0.1:\(node.port)")
        try await world.serve("cluster", errorRatio: 0.001)
        let run = try await world.run()
        #expect(run.status == 1, "\(run.output.stderr)")
        let output = run.output.stdout + run.output.stderr
        #expect(output.contains("127.0.0.1:\(node.port) is a Redis Cluster node (HELLO says mode cluster)"), "\(output)")
        #expect(!output.contains("hunter2"))
        #expect(run.features["cluster"]?["reason"] as? String == "redis_error")
        #expect((run.features["cluster"]?["explanation"] as? String)?.contains("docs/operations.md, \"Why not Redis Cluster\"") == true)
        #expect(world.auditLines().isEmpty)
        #expect(try await world.get("flags:cluster:rollout_percent") == nil)
    }
}
