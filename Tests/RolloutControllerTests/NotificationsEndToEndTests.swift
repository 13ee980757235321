import Foundation
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

/// The controller's notifications, end to end: real Prometheus and redis-server, the `rollout`
/// binary, and the test's own webhook receiver on loopback.
@Suite("Controller notifications end to end", .tags(.e2e, .prometheus, .redis, .webhook), .requiresPrometheus)
struct NotificationsEndToEndTests {
    func policy(_ world: ControllerWorld, prometheusURL: String? = nil) throws {
        let top = """
            notifications:
              timeout: 1s
              deadline: 5s
              fallback_file: \(world.directory)/fallback.jsonl
              state_file: \(world.directory)/state.json
              retry: {attempts: 2, base_delay: 100ms}
              channels:
                - {type: webhook, url_env: HOOK_URL}
            """
        try world.writePolicy([("told", "dwell: 0s\ncooldown_after_rollback: 0s")], prometheusURL: prometheusURL, top: top)
    }

    /// The kinds received so far, in order, as `kind feature`.
    func kinds(_ receiver: WebhookReceiver) -> [String] {
        receiver.requests.compactMap { request in
            guard let event = try? JSONSerialization.jsonObject(with: request.body) as? [String: Any], let kind = event["kind"] as? String else {
                return nil
            }
            return "\(kind) \(event["feature"] as? String ?? "-")"
        }
    }

    @Test func oneMessagePerChangeOfStateNotOnePerRun() async throws {
        let world = try await ControllerWorld.make()
        let receiver = try WebhookReceiver()
        try policy(world)
        let environment = ["HOOK_URL": receiver.url()]

        // No data for two runs: one hold_started. Data again: one hold_ended.
        try await world.serve("told", errorRatio: nil)
        for _ in 0..<2 { _ = try await world.run(environment: environment) }
        #expect(kinds(receiver) == ["hold_started told"])
        try await world.serve("told", errorRatio: 0.001)
        let promoted = try await world.run(environment: environment)
        #expect(promoted.features["told"]?["decision"] as? String == "promote")
        #expect(kinds(receiver) == ["hold_started told", "hold_ended told"])

        // Up to 100%: one promoted_to_full; holding at the last step sends nothing.
        for _ in 0..<4 { _ = try await world.run(environment: environment) }
        #expect(try await world.get("flags:told:rollout_percent") == "100")
        #expect(kinds(receiver).suffix(1) == ["promoted_to_full told"])

        // A spike: the rollback and its guard, once.
        try await world.serve("told", errorRatio: 0.5)
        let rolled = try await world.run(environment: environment)
        #expect(rolled.features["told"]?["decision"] as? String == "rollback")
        // A channel gets a run's events in order: the rollback before the guard it set.
        #expect(kinds(receiver).suffix(2) == ["rollback told", "guard_locked told"])
        let rollback = try #require(receiver.requests.first { $0.text.contains("\"kind\":\"rollback\"") })
        #expect(rollback.header("Content-Type")?.hasPrefix("application/json") == true)
        #expect(rollback.text.contains("\"to\":\"10\""))
        #expect((rolled.output.stdout.contains("\"delivered\" : 2")), "\(rolled.output.stdout)")

        // A person's change: one manual_change.
        _ = try await world.client.send("SET", "flags:told:rollout_percent", "25")
        let before = receiver.requests.count
        _ = try await world.run(environment: environment)
        #expect(kinds(receiver).dropFirst(before).contains("manual_change told"))
        #expect(try await world.get("flags:told:notified") != nil)
    }

    @Test func prometheusDownIsToldOnceAndItsRecoveryOnce() async throws {
        let world = try await ControllerWorld.make()
        let receiver = try WebhookReceiver()
        let environment = ["HOOK_URL": receiver.url()]
        try await world.serve("told", errorRatio: 0.001)
        try policy(world, prometheusURL: "http://127.0.0.1:\(freeLoopbackPort())")
        for _ in 0..<2 {
            let run = try await world.run(environment: environment)
            #expect(run.status == 1)
        }
        #expect(kinds(receiver) == ["prometheus_unreachable -"])
        try policy(world)
        _ = try await world.run(environment: environment)
        #expect(kinds(receiver) == ["prometheus_unreachable -", "prometheus_recovered -"])
        let state = try String(contentsOfFile: world.directory + "/state.json", encoding: .utf8)
        #expect(state.contains("\"prometheus\":\"ok\""))
    }

    @Test func aFailingReceiverNeverChangesTheDecisionAndNothingIsLost() async throws {
        let world = try await ControllerWorld.make()
        let receiver = try WebhookReceiver(otherwise: .status(500))
        try policy(world)
        try await world.serve("told", errorRatio: 0.001)
        _ = try await world.client.send("SET", "flags:told:rollout_percent", "50")
        _ = try await world.client.send("SET", "flags:told:controller_percent", "50")
        try await world.serve("told", errorRatio: 0.5)
        let run = try await world.run(environment: ["HOOK_URL": receiver.url()])
        #expect(run.status == 0)
        #expect(run.features["told"]?["decision"] as? String == "rollback")
        #expect(try await world.get("flags:told:rollout_percent") == "10")
        let lines = try String(contentsOfFile: world.directory + "/fallback.jsonl", encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 2, "\(lines)")
        #expect(lines.allSatisfy { (try? JSONSerialization.jsonObject(with: Data($0.utf8))) != nil })
        #expect(lines.contains { $0.contains("\"kind\":\"rollback\"") })
        #expect(!lines.joined().contains(receiver.url()))
    }

    @Test func aMissingWebhookVariableIsAPolicyErrorNamingIt() async throws {
        let world = try await ControllerWorld.make()
        try policy(world)
        let run = try await world.run()
        #expect(run.status == 2)
        #expect(run.output.stderr.contains("HOOK_URL"))
    }
}
