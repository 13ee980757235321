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
        let ready = try await offThePool {
            for _ in 0..<100 {
                if let (status, _) = try? httpGet(port: port, path: "/metrics"), status == 200 { return true }
                usleep(100_000)
            }
            return false
        }
        #expect(ready)
        // The gate loads in the background: the first answers may be the old path.
        let newPath = try await offThePool {
            for _ in 0..<50 {
                if let (_, body) = try? httpGet(port: port, path: "/action?actor=alice"), body == "new\n" { return true }
                usleep(100_000)
            }
            return false
        }
        #expect(newPath)
        let faults = try await offThePool { try httpRequest(port: port, method: "POST", path: "/faults?error_rate=1") }
        #expect(faults.0 == 200 && faults.1.contains("error_rate=1.0"))
        let failed = try await offThePool { try httpGet(port: port, path: "/action?actor=bob") }
        #expect(failed.0 == 500)
        let metrics = try await offThePool { try httpGet(port: port, path: "/metrics").1 }
        #expect(metrics.contains("# TYPE action_latency_seconds histogram"))
        #expect(metrics.contains("action_error_total{provider=\"demo\",path=\"new\"} 1"))
        #expect(metrics.contains("action_latency_seconds_bucket{provider=\"demo\",path=\"new\",le=\"+Inf\"}"))
        // A kill switch moves requests back to the old path.
        _ = try await redis.send("SET", "flags:demo:enabled", "false")
        let old = try await offThePool {
            for _ in 0..<50 {
                if let (_, body) = try? httpGet(port: port, path: "/action?actor=alice"), body == "old\n" { return true }
                usleep(100_000)
            }
            return false
        }
        #expect(old)
    }
}
