import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Synchronization
import Testing

@Suite("Feature gate across a Sentinel failover", .tags(.redis), .requiresRedis)
struct SentinelFailoverTests {
    /// The primary is SIGKILLed while a gate (sentinel URL) answers checks in a loop: no answer
    /// for an untouched feature changes, and a kill switch set on the new primary reaches the
    /// gate (by push once its subscription re-resolved, or by the full refresh that follows).
    /// Plain, and with TLS between every node, sentinel and the gate (`rediss-sentinel://`).
    @Test(arguments: [false, true]) func gateKeepsAnsweringAcrossAKilledPrimaryAndSeesTheNewOne(tls: Bool) async throws {
        let topology = try await SentinelTopology.start(password: "data-secret", tls: tls)
        let admin = RedisClient(url: try topology.url())
        defer { admin.close() }
        _ = try await admin.pipeline([
            RedisCommand("SET", "flags:steady:rollout_percent", "50"),
            RedisCommand("SADD", "flags:steady:allow", "vip"),
            RedisCommand("SET", "flags:target:rollout_percent", "100"),
        ])
        // Both replicas hold the flags before the primary dies (replication is asynchronous).
        for replica in topology.nodes.dropFirst() {
            #expect(await eventually { (try? await topology.query(replica, "GET", "flags:target:rollout_percent").string) == "100" })
        }
        var configuration = FeatureGate.Configuration()
        configuration.refreshInterval = .seconds(3600)  // only a reconnect's refresh and push can deliver
        let gate = FeatureGate(redisURL: try topology.url(), features: ["steady", "target"], configuration: configuration)
        let subjects = (0..<200).map { Subject(id: $0 == 0 ? "vip" : "user-\($0)") }
        try await whileRunning(gate) {
            #expect(await eventually { gate.isEnabled("target", for: Subject(id: "a")) })
            #expect(await eventually { (try? await topology.query(topology.nodes[0], "PUBSUB", "NUMSUB", "__redis__:invalidate").array?.last?.integer) == 1 })
            let baseline = subjects.map { gate.isEnabled("steady", for: $0) }
            #expect(baseline.contains(true) && baseline.contains(false))

            let stop = Atomic<Bool>(false)
            let changed = Atomic<Int>(0)
            let checks = Atomic<Int>(0)
            let checker = Task {
                while !stop.load(ordering: .acquiring) {
                    for (subject, expected) in zip(subjects, baseline) where gate.isEnabled("steady", for: subject) != expected {
                        changed.add(1, ordering: .relaxed)
                    }
                    if !gate.isEnabled("target", for: Subject(id: "a")) && !stop.load(ordering: .acquiring) { changed.add(1, ordering: .relaxed) }
                    checks.add(1, ordering: .relaxed)
                    await Task.yield()
                }
            }

            let killedAt = ContinuousClock.now
            await topology.nodes[0].killOffPool()
            var promoted: RedisServer?
            #expect(await eventually(within: .seconds(30), every: .milliseconds(20)) {
                guard let primary = await topology.currentPrimary(), primary !== topology.nodes[0],
                    await topology.role(of: primary) == "master"
                else { return false }
                promoted = primary
                return true
            })
            let failoverTook = ContinuousClock.now - killedAt
            let newPrimary = try #require(promoted)
            stop.store(true, ordering: .releasing)
            await checker.value
            #expect(changed.load(ordering: .relaxed) == 0)
            #expect(checks.load(ordering: .relaxed) > 0)

            _ = try await topology.query(newPrimary, "SET", "flags:target:enabled", "false")
            let setAt = ContinuousClock.now
            #expect(await eventually(within: .seconds(30), every: .milliseconds(2)) { gate.decision("target", for: Subject(id: "a")).reason == .killSwitch })
            let reachedIn = ContinuousClock.now - setAt
            // Measured, not asserted (a busy CI machine): reported in the test's output.
            print("sentinel failover\(tls ? " over TLS" : ""): switch-master seen \(failoverTook) after SIGKILL; kill switch reached the gate \(reachedIn) after it was set")
            #expect(subjects.map { gate.isEnabled("steady", for: $0) } == baseline)

            // Push works on the new primary too: a second change arrives without a poll.
            #expect(await eventually { (try? await topology.query(newPrimary, "PUBSUB", "NUMSUB", "__redis__:invalidate").array?.last?.integer) == 1 })
            _ = try await admin.send("DEL", "flags:target:enabled")
            #expect(await eventually(within: .seconds(30)) { gate.isEnabled("target", for: Subject(id: "a")) })
        }
        await topology.stopOffPool()
    }

    /// readFrom=replica: the gate's reads (HGETALL, which no sentinel sends) go to one replica,
    /// its invalidation subscription is on that same replica, and a change written to the
    /// primary reaches the gate by push through replication.
    @Test func readFromReplicaReadsAndSubscribesOnOneReplica() async throws {
        let topology = try await SentinelTopology.start()
        _ = try await topology.query(topology.nodes[0], "SET", "flags:google:rollout_percent", "100")
        for replica in topology.nodes.dropFirst() {
            #expect(await eventually { (try? await topology.query(replica, "GET", "flags:google:rollout_percent").string) == "100" })
        }
        var configuration = FeatureGate.Configuration()
        configuration.refreshInterval = .seconds(3600)  // only push can deliver the change in time
        let gate = FeatureGate(redisURL: try topology.url(readFrom: "replica"), features: ["google"], configuration: configuration)
        try await whileRunning(gate) {
            #expect(await eventually { gate.isEnabled("google", for: Subject(id: "a")) })
            func readsHere(_ node: RedisServer) async -> Bool {
                let stats = (try? await topology.query(node, "INFO", "commandstats").string) ?? ""
                return stats.contains("cmdstat_hgetall:")
            }
            func gateSubscribedHere(_ node: RedisServer) async -> Bool {
                let clients = (try? await topology.query(node, "CLIENT", "LIST").string) ?? ""
                // The gate's connections have no name; the sentinels' are named sentinel-*.
                return clients.split(separator: "\n").contains { $0.contains(" name= ") && $0.contains(" sub=1 ") }
            }
            #expect(await eventually {
                let first = await gateSubscribedHere(topology.nodes[1])
                let second = await gateSubscribedHere(topology.nodes[2])
                return first || second
            })
            let primaryReads = await readsHere(topology.nodes[0])
            let primarySubscribed = await gateSubscribedHere(topology.nodes[0])
            #expect(!primaryReads && !primarySubscribed)
            var readers: [Bool] = []
            var subscribers: [Bool] = []
            for replica in topology.nodes.dropFirst() {
                readers.append(await readsHere(replica))
                subscribers.append(await gateSubscribedHere(replica))
            }
            #expect(readers.filter { $0 }.count == 1)
            #expect(readers == subscribers)

            _ = try await topology.query(topology.nodes[0], "SET", "flags:google:enabled", "false")
            #expect(await eventually(within: .seconds(30)) { gate.decision("google", for: Subject(id: "a")).reason == .killSwitch })
        }
        await topology.stopOffPool()
    }
}
