import InMemoryLogging
import Logging
import Metrics
import MetricsTestKit
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import ServiceLifecycle
import ServiceLifecycleTestKit
import Testing


/// Runs `gate` as a service for the duration of `body`, then stops it.
func whileRunning<Result>(_ gate: FeatureGate, _ body: () async throws -> Result) async throws -> Result {
    let task = Task { try await gate.run() }
    defer { task.cancel() }
    return try await body()
}

@Suite("Feature gate against a real redis-server", .tags(.redis), .requiresRedis)
struct FeatureGateTests {
    @Test func answersFromTheSnapshotAfterPrepare() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.pipeline([
            RedisCommand("SET", "flags:google:rollout_percent", "50"),
            RedisCommand("SADD", "flags:google:allow", "vip"),
            RedisCommand("HSET", "flags:google:workspaces", "acme", "100"),
        ])
        let gate = FeatureGate(redisURL: server.url())
        #expect(gate.decision("google", for: Subject(id: "user_123")) == Decision(isOn: false, reason: .noData))
        #expect(await gate.prepare(["google"]))
        #expect(gate.isEnabled("google", for: Subject(id: "user_123")))  // bucket 30079 < 50000
        #expect(!gate.isEnabled("google", for: Subject(id: "user-1")))  // bucket 83092
        #expect(gate.decision("google", for: Subject(id: "vip")).reason == .allowed)
        #expect(gate.isEnabled("google", for: Subject(id: "user-1", workspace: "acme")))
    }

    @Test func handleFollowsEveryRefreshAndAgreesWithTheNamePath() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        let gate = FeatureGate(redisURL: server.url())
        let google = gate.feature("google")
        #expect(google.decision(for: Subject(id: "user_123")) == Decision(isOn: false, reason: .noData))
        _ = try await admin.send("SET", "flags:google:rollout_percent", "50")
        await gate.refresh()
        for index in 0..<200 {
            let actor = Subject(id: "user-\(index)", workspace: index % 2 == 0 ? "acme" : nil)
            #expect(google.decision(for: actor) == gate.decision("google", for: actor))
        }
        #expect(google.isEnabled(for: Subject(id: "user_123")))
        _ = try await admin.send("SET", "flags:google:enabled", "off")
        await gate.refresh()
        #expect(google.decision(for: Subject(id: "user_123")).reason == .killSwitch)
        let fifty = try #require(RolloutPercent(parsing: "50"))
        #expect(google.decision(for: Subject(id: "user_123"), atPercent: fifty).reason == .killSwitch)
    }

    @Test func unknownFeatureIsFetchedInTheBackground() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:late:rollout_percent", "100")
        var configuration = FeatureGate.Configuration()
        configuration.refreshInterval = .seconds(60)
        let gate = FeatureGate(redisURL: server.url(), configuration: configuration)
        try await whileRunning(gate) {
            #expect(gate.decision("late", for: Subject(id: "a")).reason == .noData)
            #expect(await eventually { gate.isEnabled("late", for: Subject(id: "a")) })
        }
    }

    @Test func invalidValueTurnsTheFeatureOffAndIsReported() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.pipeline([
            RedisCommand("SET", "flags:google:rollout_percent", "fifty"),
            RedisCommand("SADD", "flags:google:allow", "vip"),
        ])
        let logs = InMemoryLogHandler()
        let metrics = TestMetrics()
        try await withMetricsFactory(metrics) {
            let gate = FeatureGate(redisURL: server.url(), logger: Logger(label: "test") { _ in logs })
            await gate.prepare(["google"])
            // Off for everyone, even the allow list: the state cannot be trusted.
            #expect(gate.decision("google", for: Subject(id: "vip")) == Decision(isOn: false, reason: .invalidState(key: "flags:google:rollout_percent")))
            let errors = logs.entries.filter { $0.level == .error }
            #expect(errors.count == 1)
            #expect(errors.first?.metadata["redis.key"] == "flags:google:rollout_percent")
            #expect(try metrics.expectCounter("rollout_gate_invalid_state_total", [("feature", "google")]).totalValue == 1)
            // Reported once per change, not once per refresh.
            await gate.refresh()
            #expect(logs.entries.filter { $0.level == .error }.count == 1)
            // Fixed by an operator: valid again.
            _ = try await admin.send("SET", "flags:google:rollout_percent", "100")
            await gate.refresh()
            #expect(gate.isEnabled("google", for: Subject(id: "anyone")))
            await gate.refresh()  // decision counts reach swift-metrics at each refresh
            #expect(try metrics.expectCounter("rollout_gate_decisions_total", [("feature", "google"), ("result", "on")]).totalValue == 1)
        }
    }

    @Test func processOverrideKillsTheFeature() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:pay.v2:rollout_percent", "100")
        var configuration = FeatureGate.Configuration()
        configuration.environment = ["ROLLOUT_PAY_V2_ENABLED": "false"]
        let gate = FeatureGate(redisURL: server.url(), configuration: configuration)
        await gate.prepare(["pay.v2"])
        #expect(gate.decision("pay.v2", for: Subject(id: "a")).reason == .processOverride(variable: "ROLLOUT_PAY_V2_ENABLED"))
    }

    @Test func theEnvironmentPercentIsTheFallbackBelowEveryRedisValue() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:google:bucketing", "v1")
        var configuration = FeatureGate.Configuration()
        // The original Python gate's variable: `feature.upper()`, nothing else.
        configuration.environment = ["FLAGS_GOOGLE_ROLLOUT_PERCENT": "19", "FLAGS_PAY.V2_ROLLOUT_PERCENT": "100"]
        let gate = FeatureGate(redisURL: server.url(), configuration: configuration)
        await gate.prepare(["google", "pay.v2"])
        let nineteen = try #require(RolloutPercent(parsing: "19"))
        // v1 user_123 is bucket 19 (docs/bucketing.md): on at 19%, from the environment.
        #expect(gate.decision("google", for: Subject(id: "user_123")).reason
            == .bucket(scheme: .v1, bucket: 19, threshold: 19, percent: nineteen, fromWorkspace: false))
        #expect(try gate.state(of: "google")?.get().rolloutPercentVariable == "FLAGS_GOOGLE_ROLLOUT_PERCENT")
        #expect(gate.isEnabled("pay.v2", for: Subject(id: "anyone")))  // no key at all: the variable still applies
        // Any rollout_percent in Redis wins, even 0; a workspace's own percent wins too.
        _ = try await admin.send("SET", "flags:google:rollout_percent", "0")
        _ = try await admin.send("HSET", "flags:google:workspaces", "acme", "0")
        _ = await gate.refresh()
        #expect(!gate.isEnabled("google", for: Subject(id: "user_123")))
        #expect(try gate.state(of: "google")?.get().rolloutPercentVariable == nil)
        _ = try await admin.send("DEL", "flags:google:rollout_percent")
        _ = await gate.refresh()
        #expect(gate.isEnabled("google", for: Subject(id: "user_123")))
        #expect(!gate.isEnabled("google", for: Subject(id: "user_123", workspace: "acme")))
    }

    /// The original gate reads FLAGS_<F>_ROLLOUT_PERCENT with Python's int(): "37.5" and "10.0"
    /// are no numbers to it (0%). For a v1 feature ours must not read them either, or the two
    /// gates disagree; a v2 feature (no Python gate reads it) keeps the tolerant reading.
    @Test func aV1FeatureTakesOnlyAWholeNumberFromTheEnvironment() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:google:bucketing", "v1")
        _ = try await admin.send("SET", "flags:pay:bucketing", "v1")
        _ = try await admin.send("SET", "flags:lists:bucketing", "v2")
        var configuration = FeatureGate.Configuration()
        configuration.environment = [
            "FLAGS_GOOGLE_ROLLOUT_PERCENT": "37.5", "FLAGS_PAY_ROLLOUT_PERCENT": "100.0", "FLAGS_LISTS_ROLLOUT_PERCENT": "100.0",
        ]
        let gate = FeatureGate(redisURL: server.url(), configuration: configuration)
        await gate.prepare(["google", "pay", "lists"])
        // v1 user_123 is bucket 19: on at 37%, off at the original's 0%.
        #expect(!gate.isEnabled("google", for: Subject(id: "user_123")))
        #expect(try gate.state(of: "google")?.get().rolloutPercentVariable == nil)
        #expect(!gate.isEnabled("pay", for: Subject(id: "user_123")))
        #expect(gate.isEnabled("lists", for: Subject(id: "user_123")))
        #expect(try gate.state(of: "lists")?.get().rolloutPercentVariable == "FLAGS_LISTS_ROLLOUT_PERCENT")
    }

    @Test func pushInvalidationFlipsTheKillSwitchWithoutWaitingForAPoll() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:google:rollout_percent", "100")
        var configuration = FeatureGate.Configuration()
        configuration.refreshInterval = .seconds(3600)  // only push can deliver the change in time
        let gate = FeatureGate(redisURL: server.url(), features: ["google"], configuration: configuration)
        try await whileRunning(gate) {
            #expect(await eventually { gate.isEnabled("google", for: Subject(id: "a")) })
            // Give the subscription a moment to be in place, then flip the switch.
            #expect(await eventually { (try? await admin.send("PUBSUB", "NUMSUB", "__redis__:invalidate").array?.last?.integer) == 1 })
            _ = try await admin.send("SET", "flags:google:enabled", "false")
            #expect(await eventually(within: .seconds(30)) { gate.decision("google", for: Subject(id: "a")).reason == .killSwitch })
            _ = try await admin.send("DEL", "flags:google:enabled")
            #expect(await eventually(within: .seconds(30)) { gate.isEnabled("google", for: Subject(id: "a")) })
        }
    }

    @Test func fallsBackToPollingWhenTrackingIsRefused() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        // A gate user without CLIENT TRACKING: push is refused, polling must carry on.
        _ = try await admin.send(
            "ACL", "SETUSER", "reader", "on", ">pw", "%R~flags:*", "+@read", "+ping", "+client|id", "+subscribe", "allchannels")
        let logs = InMemoryLogHandler()
        var configuration = FeatureGate.Configuration()
        configuration.refreshInterval = .milliseconds(100)
        let gate = FeatureGate(
            redisURL: server.url(username: "reader", password: "pw"), features: ["google"], configuration: configuration,
            logger: Logger(label: "test") { _ in logs })
        try await whileRunning(gate) {
            #expect(await eventually { logs.entries.contains { "\($0.message)".contains("falling back to polling") } })
            _ = try await admin.send("SET", "flags:google:rollout_percent", "100")
            #expect(await eventually { gate.isEnabled("google", for: Subject(id: "a")) })
        }
    }

    @Test func gracefulShutdownEndsRun() async throws {
        let server = try await RedisServer.start()
        let gate = FeatureGate(redisURL: server.url(), features: ["google"])
        try await testGracefulShutdown { trigger in
            let task = Task { try await gate.run() }
            #expect(await eventually(within: .seconds(60)) { gate.state(of: "google") != nil })
            trigger.triggerGracefulShutdown()
            try await task.value
        }
    }
}
