import Foundation
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// redis/sentinel.conf as shipped (only its primary's port changed, on a writable copy) runs a
/// sentinel that a gate's `redis-sentinel://...#rollout` URL finds the primary through.
@Suite("Shipped sentinel.conf", .tags(.redis), .requiresRedis)
struct ShippedSentinelConfigTests {
    @Test func aGateFindsThePrimaryThroughTheShippedSentinelConfig() async throws {
        let primary = try await RedisServer.start()
        let shipped = try String(contentsOf: root.appendingPathComponent("redis/sentinel.conf"), encoding: .utf8)
        #expect(shipped.contains("sentinel monitor rollout 127.0.0.1 6379 2\n"))
        let directory = try makeTemporaryDirectory("shipped-sentinel")
        let copy = directory + "/sentinel.conf"
        try shipped.replacingOccurrences(of: "sentinel monitor rollout 127.0.0.1 6379 2", with: "sentinel monitor rollout 127.0.0.1 \(primary.port) 2")
            .write(toFile: copy, atomically: true, encoding: .utf8)
        let sentinel = try await RedisServer.start(arguments: ["--sentinel"], configFile: copy)
        let admin = RedisClient(url: primary.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:google:rollout_percent", "100")
        let gate = try FeatureGate(redisURL: "redis-sentinel://127.0.0.1:\(sentinel.port)#rollout", features: ["google"])
        #expect(await gate.prepare(["google"]))
        #expect(gate.isEnabled("google", for: Subject(id: "a")))
        await sentinel.stopOffPool()
        await primary.stopOffPool()
    }
}
