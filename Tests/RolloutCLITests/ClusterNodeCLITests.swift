import RolloutTestSupport
import Testing

@Suite("rollout against a Redis Cluster node", .tags(.cli, .redis), .requiresRedis)
struct ClusterNodeCLITests {
    /// A read and a write, through REDIS_URL and --redis-url: each exits 1 (a Redis error) with
    /// the advice on stderr, the node's address and never its password; nothing is audited.
    @Test(arguments: [
        ["flags", "get", "google"], ["flags", "list"], ["flags", "set-percent", "google", "10", "--reason", "try cluster"],
        ["flags", "pause", "google", "--reason", "try cluster"],
    ])
    func aCommandAgainstAClusterNodeExitsOneWithTheAdvice(arguments: [String]) async throws {
        let cli = try await CLI(arguments: RedisServer.clusterNodeArguments + ["--requirepass", "hunter2-pass"])
        let url = "redis://:hunter2-pass@127.0.0.1:\(cli.server.port)"
        for result in [
            try await cli.run(arguments, environment: ["REDIS_URL": url]),
            try await cli.run(arguments + ["--redis-url", url]),
        ] {
            #expect(result.status == 1, "\(arguments): \(result.stderr)")
            #expect(result.stderr.contains("127.0.0.1:\(cli.server.port) is a Redis Cluster node (HELLO says mode cluster)"), "\(result.stderr)")
            #expect(result.stderr.contains("rollout-gate needs a standalone primary or Sentinel"))
            #expect(result.stderr.contains("docs/operations.md, \"Why not Redis Cluster\""))
            #expect(!(result.stdout + result.stderr).contains("hunter2"))
        }
        #expect(cli.auditLines().isEmpty)
    }
}
