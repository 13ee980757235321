import RolloutGate
import RolloutGateTesting
import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("RolloutGateTesting: TestFlags, a gate without Redis")
struct TestFlagsTests {
    @Test func aPercentDecidesByTheBucketRule() throws {
        let flags = TestFlags()
        let gate: FeatureGate = flags.gate
        #expect(gate.decision("google", for: Subject(id: "user-1")) == Decision(isOn: false, reason: .noData))
        flags.set("google", percent: 50)
        let fifty = try #require(RolloutPercent(parsing: "50"))
        for index in 0..<1000 {
            let subject = Subject(id: "user-\(index)")
            let bucket = Bucketing.bucket(scheme: .v2, feature: "google", workspace: nil, actor: subject.id)
            let expected = Bucketing.isInside(bucket: bucket, scheme: .v2, percent: fifty)
            #expect(gate.isEnabled("google", for: subject) == expected)
        }
        #expect(gate.isEnabled("google", for: Subject(id: "user_123")))  // bucket 30079 < 50000
        #expect(!gate.isEnabled("google", for: Subject(id: "user-1")))  // bucket 83092
        #expect(gate.decision("google", for: Subject(id: "user-1")).freshness == .live)
    }

    @Test func everyChangeIsSeenAtOnceByNameAndByHandle() {
        let flags = TestFlags()
        let google = flags.gate.feature("google")
        let vip = Subject(id: "vip")
        flags.set("google", percent: 100)
        #expect(google.isEnabled(for: vip))
        flags.set("google", .kill)
        #expect(google.decision(for: vip).reason == .killSwitch)
        #expect(flags.gate.decision("google", for: vip).reason == .killSwitch)
        flags.set("google", .enable)
        flags.set("google", percent: 0)
        flags.set("google", .allow("vip"))
        #expect(google.decision(for: vip) == Decision(isOn: true, reason: .allowed))
        flags.set("google", .deny("vip"))
        #expect(google.decision(for: vip) == Decision(isOn: false, reason: .denied))
        flags.set("google", percent: 100)
        flags.set("google", .internalOnly(true))
        #expect(google.decision(for: Subject(id: "a")).reason == .internalOnly)
        #expect(google.isEnabled(for: Subject(id: "a", isInternal: true)))
        flags.set("google", .internalOnly(false))
        flags.set("google", percent: 0)
        flags.set("google", .workspace("acme", percent: 100))
        #expect(google.isEnabled(for: Subject(id: "a", workspace: "acme")))
        #expect(!google.isEnabled(for: Subject(id: "a", workspace: "other")))
        flags.remove("google")
        #expect(google.decision(for: vip).reason == .noData)
        #expect(flags.state(of: "google") == nil)
    }

    @Test func theProcessOverrideComesFromTheGivenEnvironment() {
        let flags = TestFlags(environment: ["ROLLOUT_PAY_V2_ENABLED": "false"])
        flags.set("pay.v2", percent: 100)
        #expect(flags.gate.decision("pay.v2", for: Subject(id: "a")).reason == .processOverride(variable: "ROLLOUT_PAY_V2_ENABLED"))
    }

    @Test func aServiceGroupCanRunTheGateAndRefreshIsANoOp() async throws {
        let flags = TestFlags()
        flags.set("google", percent: 100)
        let task = Task { try await flags.gate.run() }
        #expect(await flags.gate.refresh())
        #expect(await flags.gate.prepare(["other"]))
        #expect(flags.gate.isEnabled("google", for: Subject(id: "a")))
        task.cancel()
        try await task.value
    }
}

/// The same states in a real Redis and in TestFlags give the same decisions, reason for reason.
@Suite("TestFlags decides like a gate reading Redis", .tags(.redis), .requiresRedis)
struct TestFlagsContractTests {
    @Test(arguments: [BucketingScheme.v2, .v1])
    func sameStatesSameDecisions(scheme: BucketingScheme) async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.pipeline([
            RedisCommand("SET", "flags:google:rollout_percent", "37.125"),
            RedisCommand("SET", "flags:google:bucketing", scheme == .v1 ? "v1" : "v2"),
            RedisCommand("SADD", "flags:google:allow", "vip", "acme:boss"),
            RedisCommand("SADD", "flags:google:deny", "blocked"),
            RedisCommand("HSET", "flags:google:workspaces", "acme", "80"),
        ])
        let live = FeatureGate(redisURL: server.url())
        #expect(await live.prepare(["google"]))
        let flags = TestFlags()
        flags.set("google", percent: 37.125)
        flags.set("google", .bucketing(scheme))
        flags.set("google", .allow("vip"))
        flags.set("google", .allow("acme:boss"))
        flags.set("google", .deny("blocked"))
        flags.set("google", .workspace("acme", percent: 80))
        var subjects = (0..<2000).map { Subject(id: "user-\($0)", workspace: $0 % 3 == 0 ? "acme" : nil) }
        subjects += [Subject(id: "vip"), Subject(id: "boss", workspace: "acme"), Subject(id: "blocked"), Subject(id: "")]
        for subject in subjects {
            #expect(flags.gate.decision("google", for: subject) == live.decision("google", for: subject), "\(subject)")
        }
    }
}
