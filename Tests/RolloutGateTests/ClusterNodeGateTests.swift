import Foundation
import InMemoryLogging
import Logging
import Metrics
import MetricsTestKit
@testable import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

/// A gate pointed at a Redis Cluster node: refused at connect like any Redis it cannot read,
/// so every check answers by the fail-static rules, and the logs say what to do.
@Suite("A gate pointed at a Redis Cluster node", .tags(.redis), .requiresRedis)
struct ClusterNodeGateTests {
    private func gate(_ node: RedisServer, logs: InMemoryLogHandler, snapshotFile: String? = nil) -> FeatureGate {
        var configuration = FeatureGate.Configuration()
        configuration.connectTimeout = .seconds(2)
        configuration.snapshotFile = snapshotFile
        return FeatureGate(redisURL: node.url(), features: ["google"], configuration: configuration, logger: Logger(label: "test") { _ in logs })
    }

    @Test func withoutASnapshotEveryCheckIsOffWithNoDataAndTheLogSaysWhy() async throws {
        let node = try await RedisServer.startClusterNode()
        let logs = InMemoryLogHandler()
        let metrics = TestMetrics()
        try await withMetricsFactory(metrics) {
            let gate = gate(node, logs: logs)
            let error = await #expect(throws: RedisError.self) { try await gate.load(["google"]) }
            #expect(error?.code == .clusterNode)
            #expect(error?.message.contains("127.0.0.1:\(node.port) is a Redis Cluster node") == true)
            #expect(!(await gate.prepare(["google"])))
            #expect(!gate.hasSnapshot)
            #expect(gate.decision("google", for: Subject(id: "a")) == Decision(isOn: false, reason: .noData))
            #expect(!gate.isEnabled("google", for: Subject(id: "a")))
            try await whileRunning(gate) {
                let logged = await eventually(within: .seconds(60)) {
                    logs.entries.contains { entry in
                        entry.level == .warning && "\(entry.message)".contains("Cannot refresh the feature snapshot")
                            && "\(entry.metadata["error"] ?? "")".contains("is a Redis Cluster node (HELLO says mode cluster)")
                    }
                }
                #expect(logged)
            }
            #expect(gate.decision("google", for: Subject(id: "a")) == Decision(isOn: false, reason: .noData))
        }
        #expect(try metrics.expectCounter("rollout_gate_redis_errors_total").totalValue >= 2)
    }

    /// With a snapshot file, the gate answers from it as it would for any Redis it cannot read.
    @Test func withASnapshotFileTheGateAnswersFromIt() async throws {
        let node = try await RedisServer.startClusterNode()
        let directory = try makeTemporaryDirectory("cluster-gate")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let file = directory + "/gate.json"
        var percent = FlagSnapshot.Entry(key: "flags:google:rollout_percent", type: "string")
        percent.value = "100"
        try FlagSnapshot(createdAt: Timestamp.now().description, features: ["google"], keys: [percent]).writeDurably(to: file)
        let logs = InMemoryLogHandler()
        let gate = gate(node, logs: logs, snapshotFile: file)
        #expect(!(await gate.prepare(["google"])))
        let decision = gate.decision("google", for: Subject(id: "a"))
        #expect(decision.isOn)
        guard case .snapshotFile = decision.freshness else {
            Issue.record("the answer does not come from the snapshot file: \(decision)")
            return
        }
        #expect(logs.entries.contains { "\($0.metadata["redis.error"] ?? "")".contains("is a Redis Cluster node") })
    }
}
