import Foundation
import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("rollout demo-service", .tags(.cli, .redis), .requiresRedis)
struct DemoServiceTests {
    @Test func requestsGoThroughTheGateAndFaultsShowInTheMetrics() async throws {
        let server = try await RedisServer.start()
        let redis = RedisClient(url: server.url())
        defer { redis.close() }
        _ = try await redis.send("SET", "flags:demo:rollout_percent", "100")
        let port = try freeLoopbackPort()
        let directory = try makeTemporaryDirectory("demo")
        let demo = try ChildProcess(
            try rolloutBinary(), ["demo-service", "--port", String(port), "--load", "0", "--redis-url", server.urlString],
            stdout: directory + "/demo.log", stderr: nil)
        defer { demo.terminate(SIGTERM) }
        let ready = await eventually(within: .seconds(60), every: .milliseconds(100)) {
            (try? await offThePool { try httpGet(port: port, path: "/metrics") })?.0 == 200
        }
        #expect(ready)
        // The gate loads in the background: the first answers may be the old path.
        let newPath = await answers("new\n", port: port)
        #expect(newPath)
        let faults = try await offThePool { try httpRequest(port: port, method: "POST", path: "/faults?error_rate=1") }
        #expect(faults.0 == 200 && faults.1.contains("error_rate=1.0"))
        let failed = try await offThePool { try httpGet(port: port, path: "/action?actor=bob") }
        #expect(failed.0 == 500)
        let metrics = try await offThePool { try httpGet(port: port, path: "/metrics").1 }
        #expect(metrics.contains("# TYPE action_latency_seconds histogram"))
        #expect(metrics.contains("action_error_total{provider=\"demo\",path=\"new\"} 1"))
        #expect(metrics.contains("action_latency_seconds_bucket{provider=\"demo\",path=\"new\",le=\"+Inf\"}"))
        // Each request recorded in its cohort by the gate (at 100%, all in "on"), flushed at
        // the gate's refresh (every second here).
        let recorded = await eventually(within: .seconds(30), every: .milliseconds(100)) {
            let text = (try? await offThePool { try httpGet(port: port, path: "/metrics").1 }) ?? ""
            return text.contains("rollout_cohort_failures_total{feature=\"demo\",cohort=\"on\"} 1")
                && text.contains("rollout_cohort_duration_seconds_bucket{feature=\"demo\",cohort=\"on\",le=\"+Inf\"}")
                && text.contains("rollout_cohort_duration_seconds_count{feature=\"demo\",cohort=\"on\"}")
        }
        #expect(recorded)
        // A kill switch moves requests back to the old path.
        _ = try await redis.send("SET", "flags:demo:enabled", "false")
        let old = await answers("old\n", port: port)
        #expect(old)
    }

    /// Whether the demo service comes to answer `body` for alice's action.
    private func answers(_ body: String, port: Int) async -> Bool {
        await eventually(within: .seconds(30), every: .milliseconds(100)) {
            (try? await offThePool { try httpGet(port: port, path: "/action?actor=alice") })?.1 == body
        }
    }
}
