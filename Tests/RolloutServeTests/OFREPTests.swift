import Foundation
import Hummingbird
import RolloutGate
import RolloutRedis
@testable import RolloutServe
import Testing

extension OFREP.Evaluation {
    /// The body, parsed back.
    var jsonObject: [String: Any] { (try? JSONSerialization.jsonObject(with: Data(json))) as? [String: Any] ?? [:] }
}

@Suite("OFREP: the gate's decisions as OpenFeature answers")
struct OFREPMappingTests {
    private let state = FeatureState.absent("google")

    private func reason(_ decision: Decision) -> String? {
        if case .success(_, _, let reason, _) = OFREP.answer("google", decision: decision, state: state) { return reason }
        return nil
    }

    @Test func everyGateReasonMapsToOneOfTheSpecsReasons() {
        let bucket = { (percent: RolloutPercent, workspace: Bool) in
            Decision.Reason.bucket(scheme: .v2, bucket: 123, threshold: 50_000, percent: percent, fromWorkspace: workspace)
        }
        #expect(reason(Decision(isOn: false, reason: .killSwitch)) == "DISABLED")
        #expect(reason(Decision(isOn: false, reason: .processOverride(variable: "ROLLOUT_GOOGLE_ENABLED"))) == "DISABLED")
        #expect(reason(Decision(isOn: false, reason: .denied)) == "TARGETING_MATCH")
        #expect(reason(Decision(isOn: true, reason: .allowed)) == "TARGETING_MATCH")
        #expect(reason(Decision(isOn: false, reason: .internalOnly)) == "TARGETING_MATCH")
        #expect(reason(Decision(isOn: true, reason: bucket(RolloutPercent(parsing: "50")!, false))) == "SPLIT")
        #expect(reason(Decision(isOn: true, reason: bucket(.full, false))) == "STATIC")
        #expect(reason(Decision(isOn: false, reason: bucket(.zero, false))) == "STATIC")
        #expect(reason(Decision(isOn: true, reason: bucket(RolloutPercent(parsing: "50")!, true))) == "TARGETING_MATCH")
        #expect(reason(Decision(isOn: true, reason: .anonymousActor(percent: .full))) == "STATIC")
        #expect(reason(Decision(isOn: false, reason: .invalidState(key: "flags:google:rollout_percent"))) == "UNKNOWN")
        #expect(reason(Decision(isOn: false, reason: .staleSnapshot)) == "UNKNOWN")
    }

    @Test func aSuccessCarriesValueVariantAndOnlyScalarMetadata() throws {
        let decision = Decision(
            isOn: true, reason: .bucket(scheme: .v1, bucket: 7, threshold: 10, percent: RolloutPercent(parsing: "10")!, fromWorkspace: false),
            freshness: .stale(age: .seconds(95)))
        let object = OFREP.answer("google", decision: decision, state: state).jsonObject
        #expect(object["key"] as? String == "google" && object["value"] as? Bool == true && object["variant"] as? String == "on")
        #expect(object["reason"] as? String == "SPLIT")
        let metadata = try #require(object["metadata"] as? [String: Any])
        #expect(metadata["bucket"] as? Double == 7 && metadata["threshold"] as? Double == 10 && metadata["scheme"] as? String == "v1")
        #expect(metadata["stale_seconds"] as? Double == 95 && metadata["gate_reason"] as? String == "bucket")
        #expect(metadata.values.allSatisfy { $0 is Bool || $0 is String || $0 is Double })
    }

    @Test func anInvalidStateIsAnAnswerNotAnError() throws {
        let object = OFREP.answer("google", decision: Decision(isOn: false, reason: .invalidState(key: "flags:google:enabled")), state: nil).jsonObject
        #expect(object["value"] as? Bool == false && object["variant"] as? String == "off" && object["reason"] as? String == "UNKNOWN")
        #expect((object["metadata"] as? [String: Any])?["invalid_key"] as? String == "flags:google:enabled")
    }

    @Test func theBucketRuleWithoutATargetingKeyIsAnErrorButZeroAndHundredAnswer() {
        let missing = OFREP.answer("google", decision: Decision(isOn: false, reason: .anonymousActor(percent: RolloutPercent(parsing: "50")!)), state: state)
        #expect(missing.status == 400)
        #expect(missing.jsonObject["errorCode"] as? String == "TARGETING_KEY_MISSING")
        #expect(missing.jsonObject["key"] as? String == "google" && missing.jsonObject["errorDetails"] is String)
        #expect(OFREP.answer("google", decision: Decision(isOn: false, reason: .anonymousActor(percent: .zero)), state: state).status == 200)
    }

    @Test(arguments: [
        ("{", "PARSE_ERROR"), ("[1]", "PARSE_ERROR"), ("{\"context\": 5}", "INVALID_CONTEXT"),
        ("{\"context\": {\"targetingKey\": 5}}", "INVALID_CONTEXT"), ("{\"context\": {\"internal\": 1}}", "INVALID_CONTEXT"),
        ("{\"context\": {\"workspace\": true}}", "INVALID_CONTEXT"),
    ])
    func aBadBodyIsTheRightError(body: String, code: String) {
        guard case .failure(let error) = OFREP.Context.parse(Array(body.utf8)) else {
            Issue.record("\(body) must be refused")
            return
        }
        #expect(error.code.rawValue == code)
    }

    @Test func aContextIsReadWithTheTypesItMustHave() throws {
        let body = #"{"context": {"targetingKey": "u1", "workspace": "acme", "internal": true, "plan": "gold"}}"#
        #expect(try OFREP.Context.parse(Array(body.utf8)).get() == OFREP.Context(targetingKey: "u1", workspace: "acme", isInternal: true))
        #expect(try OFREP.Context.parse([]).get() == OFREP.Context())
        #expect(try OFREP.Context.parse(Array("{}".utf8)).get() == OFREP.Context())
    }

    @Test func ifNoneMatchNamesTheETagInAnyOfItsForms() {
        #expect(FlagServer.matches("\"abc\"", "\"abc\""))
        #expect(FlagServer.matches("\"x\", W/\"abc\"", "\"abc\""))
        #expect(FlagServer.matches("*", "\"abc\""))
        #expect(!FlagServer.matches("\"abd\"", "\"abc\""))
    }
}

@Suite("Change events: the URL's own credential")
struct ChangeEventCredentialTests {
    @Test func aCredentialIsGoodForItsTokenUntilItExpiresAndCannotBeForged() throws {
        let events = ChangeEvents()
        let now: Int64 = 1_800_000_123
        let credential = try #require(events.credential(for: "web.app", now: now))
        #expect(events.verify(credential, now: now) == "web.app")
        #expect(events.verify(credential, now: now + 3600) == "web.app")  // good for the next whole hour too
        #expect(events.verify(credential, now: now + 3 * 3600) == nil)  // then expired
        let parts = credential.split(separator: ".")
        #expect(events.verify("\(parts[0]).other.\(parts.last ?? "")", now: now) == nil)  // another name
        #expect(events.verify("\(Int64(parts[0])! + 3600).web.app.\(parts.last ?? "")", now: now) == nil)  // a longer life
        #expect(events.verify(String(credential.dropLast()) + (credential.hasSuffix("0") ? "1" : "0"), now: now) == nil)
        #expect(ChangeEvents().verify(credential, now: now) == nil)  // another process's key
        #expect(events.verify("", now: now) == nil && events.verify("1.2", now: now) == nil)
    }

    /// Hummingbird runs a streamed body only once the response's head is written: a client that
    /// goes away before that drops the response with its body never run. Its slot must come
    /// back then too, or enough such clients fill ``ChangeEvents/maximumSubscribers`` for good
    /// and every later stream (the dashboard's, OFREP's) is 503. No server is needed: nothing
    /// connects until the body runs.
    @Test func aStreamWhoseBodyNeverRunsGivesItsSlotBack() throws {
        let gate = FeatureGate(redisURL: try RedisURL(parsing: "redis://127.0.0.1:1"), features: ["checkout"])
        let server = FlagServer(gate: gate, events: ChangeEvents(maximumSubscribers: 1))
        for _ in 0..<3 {
            #expect(server.eventResponse().status == .ok)
            #expect(server.eventResponse().status == .ok)
        }
        // Kept, the slot stays taken.
        let open = server.eventResponse()
        #expect(open.status == .ok)
        #expect(server.eventResponse().status == .serviceUnavailable)
        _ = open
    }
}
