import Foundation
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

private let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

/// redis/redis.conf and redis/users.acl as shipped: the gate user can do all the gate needs
/// (push invalidation included) and nothing more; the controller user can write flags only.
@Suite("Shipped redis.conf and users.acl", .tags(.redis), .requiresRedis)
struct ShippedRedisConfigTests {
    func server() async throws -> RedisServer {
        try await RedisServer.start(
            arguments: ["--aclfile", root.appendingPathComponent("redis/users.acl").path],
            configFile: root.appendingPathComponent("redis/redis.conf").path)
    }

    @Test func gateUserRunsTheGateWithPushInvalidationButCannotWrite() async throws {
        let server = try await server()
        let controller = RedisClient(url: server.url(username: "controller", password: "controller-change-me"))
        defer { controller.close() }
        _ = try await controller.send("SET", "flags:google:rollout_percent", "100")
        var configuration = FeatureGate.Configuration()
        configuration.refreshInterval = .seconds(3600)
        let gateURL = server.url(username: "gate", password: "gate-change-me")
        let gate = FeatureGate(redisURL: gateURL, features: ["google"], configuration: configuration)
        try await whileRunning(gate) {
            #expect(await eventually { gate.isEnabled("google", for: Subject(id: "a")) })
            // With an hour-long poll, only the invalidation subscription (push, or the full refresh
            // it triggers once subscribed) can deliver this change: it proves the ACL allows it.
            _ = try await controller.send("SET", "flags:google:enabled", "false")
            #expect(await eventually(within: .seconds(30)) { gate.decision("google", for: Subject(id: "a")).reason == .killSwitch })
        }
        let reader = RedisClient(url: gateURL)
        defer { reader.close() }
        // Sentinel discovery checks each node's ROLE.
        #expect(try await reader.send("ROLE").array?.first?.string == "master")
        for command in [RedisCommand("SET", "flags:google:enabled", "true"), RedisCommand("GET", "other"), RedisCommand("FLUSHALL")] {
            await #expect {
                try await reader.send(command)
            } throws: { error in
                (error as? RedisError)?.serverErrorPrefix == "NOPERM"
            }
        }
    }

    @Test func controllerUserWritesFlagsOnlyAndRunsTheScripts() async throws {
        let server = try await server()
        let controller = RedisClient(url: server.url(username: "controller", password: "controller-change-me"))
        defer { controller.close() }
        // One SET of rollout_percent with its audit record, as the CLI sends it.
        let record = ["2025-10-08T15:30:00.000000+00:00", "g", "0% -> 10%", "test", "manual", "test"]
        let result = try await controller.evaluate(
            RedisScript(operatorChangeSourceForTest), keys: ["rollout:audit", "flags:g:rollout_percent"],
            arguments: ["99999999999999", "1000", "1"] + record + ["0", "2", "SET", "1", "10"])
        #expect(result.array?.first == .integer(1))
        #expect(try await controller.send("GET", "flags:g:rollout_percent").string == "10")
        #expect(try await controller.send("XLEN", "rollout:audit") == .integer(1))
        // `rollout serve`'s operator API reads the newest records first.
        #expect(try await controller.send("XREVRANGE", "rollout:audit", "+", "-", "COUNT", "1").array?.count == 1)
        // A change waits for its replicas (ROLE counts them, WAIT waits): none here, so 0.
        #expect(try await controller.connectedReplicas() == 0)
        #expect(try await controller.send("WAIT", "0", "1") == .integer(0))
        await #expect {
            try await controller.send("SET", "unrelated", "x")
        } throws: { error in
            (error as? RedisError)?.serverErrorPrefix == "NOPERM"
        }
        let anonymous = RedisClient(url: server.url())
        defer { anonymous.close() }
        await #expect(throws: RedisError.self) { try await anonymous.send("GET", "flags:g:rollout_percent") }
    }
}

/// The operators' change script as shipped in redis/.
let operatorChangeSourceForTest: String =
    (try? String(contentsOf: root.appendingPathComponent("redis/operator_change.lua"), encoding: .utf8)) ?? ""
