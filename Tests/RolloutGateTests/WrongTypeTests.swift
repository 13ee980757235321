import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("Keys of the wrong Redis type", .tags(.redis), .requiresRedis)
struct WrongTypeTests {
    @Test func aKeyOfAnotherTypeIsInvalidStateAndTheGateAnswersOff() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        // One feature per case, plus one set up the same way with every key of the right type.
        let cases = WrongTypeCase.all
        let features = try cases.indices.map { try FeatureName("wrong-\($0)") }
        let control: FeatureName = "control"
        _ = try await admin.pipeline(
            zip(features, cases).flatMap { $1.setUp($0.rawValue) } + [RedisCommand("SET", "flags:control:rollout_percent", "100")])
        let gate = FeatureGate(redisURL: server.url())
        #expect(await gate.prepare(features + [control]))
        #expect(gate.decision(control, for: Subject(id: "a")).isOn)
        for (feature, wrong) in zip(features, cases) {
            let key = "flags:\(feature):\(wrong.suffix)"
            #expect(gate.decision(feature, for: Subject(id: "a")) == Decision(isOn: false, reason: .invalidState(key: key)), "\(wrong)")
            guard case .failure(let invalid)? = gate.state(of: feature) else {
                Issue.record("\(wrong): the state should be invalid")
                continue
            }
            #expect(invalid.problems.map(\.key) == [key], "\(wrong)")
            #expect(invalid.description.contains("\(key) holds another Redis type, not a \(wrong.expected)"), "\(wrong): \(invalid)")
        }
    }

    @Test func everyReadIsOneCommandPerKey() {
        let keys = FeatureKeys("google")
        #expect(keys.readCommands.count == FeatureKeys.readCommandCount)
        #expect(keys.readCommands.map(\.name) == Array(repeating: "GET", count: 7) + ["SMEMBERS", "SMEMBERS", "HGETALL"])
        #expect(keys.all.count == FeatureKeys.readCommandCount)
    }
}
