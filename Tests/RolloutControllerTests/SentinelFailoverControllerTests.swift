import Foundation
import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("Controller across a Sentinel failover", .tags(.e2e, .prometheus, .redis), .requiresPrometheus)
struct SentinelFailoverControllerTests {
    /// A run while the primary is dead and the sentinels still name it (the window before they
    /// agree it is down) exits 1 and neither writes nor audits; once they have promoted a
    /// replica, the next run makes the promotion on the new primary and audits it.
    ///
    /// The window is held open on purpose instead of raced: the sentinels' down-after is raised
    /// to ten minutes before the kill, and lowered to one second once the first run is over.
    @Test func aRunDuringTheFailoverChangesNothingAndTheNextRunSucceedsOnTheNewPrimary() async throws {
        let world = try await ControllerWorld.make()
        let topology = try await SentinelTopology.start(password: "data-secret", sentinelPassword: "sentinel-secret")
        let dead = topology.nodes[0]
        try world.writePolicy([("chain", "dwell: 0s")], redisURL: topology.urlString())
        _ = try await topology.query(dead, "SET", "flags:chain:controller_percent", "0")
        for replica in topology.nodes.dropFirst() {
            #expect(await eventually { (try? await topology.query(replica, "GET", "flags:chain:controller_percent").string) == "0" })
        }
        try await world.serve("chain", errorRatio: 0.001)

        try await setDownAfter(milliseconds: 600_000, on: topology)
        await dead.killOffPool()
        #expect(await primaryNamedByEverySentinel(topology) === dead)

        let during = try await world.run()
        #expect(during.status == 1, "\(during.output.stderr)")
        #expect(during.output.stderr.contains("mymaster"), "\(during.output.stderr)")
        #expect(!during.output.stderr.contains("data-secret") && !during.output.stderr.contains("sentinel-secret"))
        #expect(!during.output.stdout.contains("data-secret") && !during.output.stdout.contains("sentinel-secret"))
        #expect(during.features["chain"]?["decision"] as? String == "hold")
        #expect(during.features["chain"]?["reason"] as? String == "redis_error")
        #expect(during.features["chain"]?["applied"] as? Bool == false)
        #expect(world.auditLines().isEmpty, "\(world.auditLines())")
        for replica in topology.nodes.dropFirst() {
            #expect(try await topology.query(replica, "GET", "flags:chain:rollout_percent").string == nil)
        }
        // The run happened inside the window: the sentinels still name the dead node.
        #expect(await primaryNamedByEverySentinel(topology) === dead)

        try await setDownAfter(milliseconds: 1000, on: topology)
        var promoted: RedisServer?
        #expect(await eventually(within: .seconds(60), every: .milliseconds(50)) {
            guard let primary = await primaryNamedByEverySentinel(topology), primary !== dead,
                await topology.role(of: primary) == "master"
            else { return false }
            promoted = primary
            return true
        })
        let newPrimary = try #require(promoted)
        // The other replica follows the new primary before the run, so the run's WAIT has it.
        #expect(await eventually(within: .seconds(60)) { await replicasConnected(to: newPrimary, in: topology) == 1 })

        let after = try await world.run()
        #expect(after.status == 0, "\(after.output.stderr)")
        let chain = try #require(after.features["chain"])
        #expect(chain["decision"] as? String == "promote")
        #expect(chain["applied"] as? Bool == true)
        #expect(chain["replicated"] == nil)
        #expect(try await topology.query(newPrimary, "GET", "flags:chain:rollout_percent").string == "10")
        let lines = world.auditLines()
        #expect(lines.count == 1, "\(lines)")
        #expect(lines.first?.contains("  chain  0% -> 10%  reason=healthy: 0% -> 10%  by=controller") == true, "\(lines)")
        await topology.stopOffPool()
    }
}

/// `SENTINEL SET <primary> down-after-milliseconds` on every sentinel.
private func setDownAfter(milliseconds: Int, on topology: SentinelTopology) async throws {
    for sentinel in topology.sentinels {
        _ = try await topology.query(sentinel, "SENTINEL", "SET", topology.primaryName, "down-after-milliseconds", String(milliseconds))
    }
}

/// The data node every sentinel names as primary, nil when they disagree or one does not answer.
private func primaryNamedByEverySentinel(_ topology: SentinelTopology) async -> RedisServer? {
    var ports: Set<Int> = []
    for sentinel in topology.sentinels {
        guard let reply = try? await topology.query(sentinel, "SENTINEL", "get-master-addr-by-name", topology.primaryName).array,
            let port = reply.last?.string.flatMap({ Int($0) })
        else { return nil }
        ports.insert(port)
    }
    guard ports.count == 1, let port = ports.first else { return nil }
    return topology.nodes.first { topology.announcedPort(of: $0) == port }
}

/// How many replicas `primary`'s ROLE lists as connected.
private func replicasConnected(to primary: RedisServer, in topology: SentinelTopology) async -> Int {
    guard let role = try? await topology.query(primary, "ROLE").array, role.count == 3 else { return -1 }
    return role[2].array?.count ?? -1
}
