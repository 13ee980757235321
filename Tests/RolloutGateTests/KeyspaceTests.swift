import RolloutGate
import RolloutRedis
import Testing

@Suite("Keyspace contract")
struct KeyspaceTests {
    @Test(arguments: ["google", "new-checkout", "pay.v2", "a", "0", "feature_1", String(repeating: "a", count: 64)])
    func validFeatureNames(name: String) throws {
        #expect(try FeatureName(name).rawValue == name)
    }

    @Test(arguments: [
        ("", "empty"), ("Google", "start with"), ("-x", "start with"), ("goo gle", "' '"), ("flags:x", "':'"),
        ("a*", "'*'"), ("ab/c", "'/'"), ("é", "start with"), ("aé", "non-ASCII"), (String(repeating: "a", count: 65), "at most 64"),
    ])
    func invalidFeatureNamesAreRefusedClearly(name: String, why: String) {
        #expect {
            try FeatureName(name)
        } throws: { error in
            (error as? KeyspaceError)?.message.contains(why) == true
        }
    }

    @Test func overrideVariableName() {
        #expect(FeatureName("pay.v2-beta").overrideVariable == "ROLLOUT_PAY_V2_BETA_ENABLED")
    }

    @Test(arguments: [
        ("0", 0), ("10", 10_000), ("100", 100_000), ("0.5", 500), ("0.125", 125), ("37.125", 37_125), (" 50 ", 50_000),
        ("99.999", 99_999), ("5.10", 5_100), ("007", 7_000),
    ])
    func percentsParseExactly(text: String, thousandths: Int) {
        #expect(RolloutPercent(parsing: text)?.thousandths == thousandths)
    }

    @Test(arguments: ["fifty", "150", "-1", "1e2", "", "10%", "0.1234", "100.001", ".5", "5.", "+5", "1,5", "0x10", "NaN", "inf"])
    func invalidPercentsAreRefused(text: String) {
        #expect(RolloutPercent(parsing: text) == nil)
    }

    @Test func percentPrintsItsShortestExactForm() {
        #expect(RolloutPercent(parsing: "5.10")?.description == "5.1")
        #expect(RolloutPercent(parsing: "0.125")?.description == "0.125")
        #expect(RolloutPercent(parsing: "0.05")?.description == "0.05")
        #expect(RolloutPercent(parsing: "100")?.description == "100")
    }

    @Test(arguments: [
        ("2025-10-08T15:30:00.123456+00:00", Int64(1_759_937_400_123_456)),
        ("2025-10-08T15:30:00Z", Int64(1_759_937_400_000_000)),
        ("2025-10-08T15:30:00.5Z", Int64(1_759_937_400_500_000)),
        ("2025-10-08T17:30:00+02:00", Int64(1_759_937_400_000_000)),
        ("2025-10-08T15:30:00.123456789Z", Int64(1_759_937_400_123_456)),
        ("1970-01-01T00:00:00Z", Int64(0)),
        ("2024-02-29T12:00:00Z", Int64(1_709_208_000_000_000)),
        // No zone: UTC, as the original Python controller read it.
        ("2025-10-08T15:30:00", Int64(1_759_937_400_000_000)),
        ("2025-10-08T15:30:00.123456", Int64(1_759_937_400_123_456)),
        ("2025-10-08 15:30:00", Int64(1_759_937_400_000_000)),
    ])
    func timestampsParse(text: String, micros: Int64) {
        #expect(Timestamp(parsing: text)?.microsecondsSinceEpoch == micros)
    }

    @Test(arguments: ["2025-10-08T15:30:00+", "2025-10-08T15:30:00 Z", "2025-10-08T15:30:00.", "2025-13-08T15:30:00Z", "2025-02-30T00:00:00Z", "yesterday", "", "2025-10-08", "1759937400"])
    func invalidTimestampsAreRefused(text: String) {
        #expect(Timestamp(parsing: text) == nil)
    }

    @Test func timestampWritesThePythonIsoformat() throws {
        let time = try #require(Timestamp(parsing: "2025-10-08T15:30:00.123456Z"))
        #expect(time.description == "2025-10-08T15:30:00.123456+00:00")
        #expect(time.secondsDescription == "2025-10-08T15:30:00Z")
        #expect(Timestamp(parsing: time.description) == time)
    }

    @Test func featureOfKey() {
        #expect(FeatureKeys.feature(ofKey: "flags:google:enabled") == "google")
        #expect(FeatureKeys.feature(ofKey: "flags:pay.v2:allow") == "pay.v2")
        #expect(FeatureKeys.feature(ofKey: "other:google:enabled") == nil)
        #expect(FeatureKeys.feature(ofKey: "flags:Bad Name:enabled") == nil)
    }
}

/// Replies as `FeatureKeys.readCommands` would get them, from plain values.
func replies(
    enabled: String? = nil, percent: String? = nil, internalOnly: String? = nil, paused: String? = nil, lastChange: String? = nil,
    lastPercent: String? = nil, bucketing: String? = nil, allow: [String] = [], deny: [String] = [], workspaces: [String: String] = [:]
) -> [RedisValue] {
    func bulk(_ text: String?) -> RedisValue { text.map { .bulkString(Array($0.utf8)) } ?? .null }
    return [enabled, percent, internalOnly, paused, lastChange, lastPercent, bucketing].map(bulk) + [
        .array(allow.map(bulk)), .array(deny.map(bulk)),
        .array(workspaces.sorted { $0.key < $1.key }.flatMap { [bulk($0.key), bulk($0.value)] }),
    ]
}

@Suite("Parsing a feature's keys")
struct FeatureStateTests {
    @Test func absentKeysMeanEnabledAtZero() throws {
        let state = try FeatureState.read("google", from: replies()).get()
        #expect(state.enabled && state.rolloutPercent == .zero && !state.internalOnly && !state.paused)
        #expect(state.bucketing == .v2 && !state.exists)
    }

    @Test(arguments: ["true", "1", "yes", "on", "TRUE", " On ", "Yes"])
    func booleanTrueWords(word: String) throws {
        #expect(try FeatureState.read("f", from: replies(internalOnly: word)).get().internalOnly)
    }

    @Test(arguments: ["false", "0", "no", "off", "FALSE", " Off "])
    func booleanFalseWords(word: String) throws {
        #expect(try !FeatureState.read("f", from: replies(enabled: word)).get().enabled)
    }

    @Test(arguments: [
        (replies(enabled: "maybe"), "flags:f:enabled"),
        (replies(percent: "fifty"), "flags:f:rollout_percent"),
        (replies(percent: "150"), "flags:f:rollout_percent"),
        (replies(percent: "-1"), "flags:f:rollout_percent"),
        (replies(percent: "1e2"), "flags:f:rollout_percent"),
        (replies(internalOnly: "2"), "flags:f:internal_only"),
        (replies(paused: "paused"), "flags:f:paused"),
        (replies(lastChange: "last tuesday"), "flags:f:last_change_time"),
        (replies(lastPercent: "ten"), "flags:f:last_percent"),
        (replies(bucketing: "v3"), "flags:f:bucketing"),
        (replies(workspaces: ["acme": "lots"]), "flags:f:workspaces field acme"),
    ])
    func everyBadValueIsNamedByItsKey(replies: [RedisValue], key: String) {
        guard case .failure(let invalid) = FeatureState.read("f", from: replies) else {
            Issue.record("expected invalid state")
            return
        }
        #expect(invalid.firstKey == key)
        #expect(invalid.description.contains(key))
    }

    @Test func wrongTypeIsInvalidState() {
        var values = replies()
        values[7] = .error("WRONGTYPE Operation against a key holding the wrong kind of value")
        guard case .failure(let invalid) = FeatureState.read("f", from: values) else {
            Issue.record("expected invalid state")
            return
        }
        #expect(invalid.firstKey == "flags:f:allow")
    }
}

@Suite("Decision order")
struct DecisionOrderTests {
    let base: FeatureState = {
        var state = FeatureState.absent("google")
        state.rolloutPercent = .full
        return state
    }()

    @Test func killSwitchBeatsEverything() {
        var state = base
        state.enabled = false
        state.allow = ["alice"]
        #expect(state.decide(for: Subject(id: "alice")) == Decision(isOn: false, reason: .killSwitch))
    }

    @Test func processOverrideIsAKillSwitch() {
        #expect(
            base.decide(for: Subject(id: "a"), overriddenBy: "ROLLOUT_GOOGLE_ENABLED")
                == Decision(isOn: false, reason: .processOverride(variable: "ROLLOUT_GOOGLE_ENABLED")))
    }

    @Test func denyBeatsAllow() {
        var state = base
        state.allow = ["acme:alice"]
        state.deny = ["acme:alice"]
        #expect(state.decide(for: Subject(id: "alice", workspace: "acme")).reason == .denied)
        #expect(state.decide(for: Subject(id: "alice")).isOn)  // stickiness key "alice" is in neither
    }

    @Test func allowBeatsInternalOnlyAndZeroPercent() {
        var state = base
        state.rolloutPercent = .zero
        state.internalOnly = true
        state.allow = ["bob"]
        #expect(state.decide(for: Subject(id: "bob")) == Decision(isOn: true, reason: .allowed))
    }

    @Test func internalOnlyTurnsOffExternalActors() {
        var state = base
        state.internalOnly = true
        #expect(state.decide(for: Subject(id: "x")) == Decision(isOn: false, reason: .internalOnly))
        #expect(state.decide(for: Subject(id: "x", isInternal: true)).isOn)
    }

    @Test func workspacePercentOverridesRolloutPercent() throws {
        var state = base
        state.rolloutPercent = .zero
        state.workspaces = ["acme": .full]
        let decision = state.decide(for: Subject(id: "user_123", workspace: "acme"))
        #expect(decision.isOn)
        guard case .bucket(_, _, let threshold, _, let fromWorkspace) = decision.reason else {
            Issue.record("expected a bucket reason")
            return
        }
        #expect(threshold == 100_000 && fromWorkspace)
        #expect(!state.decide(for: Subject(id: "user_123", workspace: "other")).isOn)
    }

    @Test func percentOverridePreviewsAnotherPercent() throws {
        var state = base
        state.rolloutPercent = .zero
        let fifty = try #require(RolloutPercent(parsing: "50"))
        let decision = state.decide(for: Subject(id: "user_123"), percentOverride: fifty)
        #expect(decision.isOn)  // bucket 30079 < 50000 (docs/bucketing.md)
        #expect(decision.reason == .bucket(scheme: .v2, bucket: 30079, threshold: 50_000, percent: fifty, fromWorkspace: false))
    }

    @Test(arguments: ["37.5", "0.5", "99.999", "10.001"])
    func aV1FeatureTakesWholePercentsOnly(text: String) throws {
        let percent = try #require(RolloutPercent(parsing: text))
        #expect(throws: KeyspaceError.self) { try BucketingScheme.v1.checkWritable(percent, for: "google") }
        do {
            try BucketingScheme.v1.checkWritable(percent, for: "google", as: "steps[0]")
        } catch {
            #expect(error.message.hasPrefix("steps[0] \(percent) cannot be written for google"))
            #expect(error.message.contains("int()") && error.message.contains("0%"))  // why
            #expect(error.message.contains("Give a whole number (\(percent.wholePercent) or \(percent.wholePercent + 1))"))  // what to do
            #expect(error.message.contains("flags:google:bucketing v2"))
        }
        try BucketingScheme.v2.checkWritable(percent, for: "google")
    }

    @Test(arguments: ["0", "1", "10", "10.0", "100.000"])
    func wholePercentsAreWritableUnderBothSchemesAsPlainIntegers(text: String) throws {
        let percent = try #require(RolloutPercent(parsing: text))
        for scheme in BucketingScheme.allCases { try scheme.checkWritable(percent, for: "google") }
        #expect(!percent.description.contains("."))
    }

    @Test func bucketingValuesAreReadAsTheKeyspaceReadsThem() {
        #expect(BucketingScheme(storedValue: " V1 ") == .v1)
        #expect(BucketingScheme(storedValue: "v2") == .v2)
        #expect(BucketingScheme(storedValue: "v3") == nil)
    }

    @Test func anonymousActorOnlyAtFull() throws {
        var state = base
        #expect(state.decide(for: Subject(id: "")).isOn)
        state.rolloutPercent = try #require(RolloutPercent(parsing: "99.999"))
        #expect(
            state.decide(for: Subject(id: "")) == Decision(isOn: false, reason: .anonymousActor(percent: state.rolloutPercent), isAnonymous: true))
    }
}
