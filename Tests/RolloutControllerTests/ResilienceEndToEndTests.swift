import Foundation
import RolloutAdmin
import RolloutRedis
import RolloutTestSupport
import Testing

/// Every network call of the controller goes through a retry policy, a circuit breaker and a
/// bulkhead per endpoint; the `--json` report shows what they did. Real servers throughout.
@Suite("Resilient network calls end to end", .tags(.e2e, .prometheus, .redis), .requiresPrometheus)
struct ResilienceEndToEndTests {
    /// `controller run --json`: the exit status and the document.
    func run(_ world: ControllerWorld, environment: [String: String] = [:]) async throws -> (Int32, [String: Any], CommandResult) {
        let result = try await runCommand(world.binary, ["controller", "run", "--config", world.configPath, "--json"], environment: environment)
        let document = (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [String: Any] ?? [:]
        return (result.status, document, result)
    }

    func network(_ document: [String: Any], _ endpoint: String) -> [String: Any] {
        (document["network"] as? [String: Any])?[endpoint] as? [String: Any] ?? [:]
    }

    @Test func aDeadPrometheusOpensTheBreakerAndLaterQueriesAreNotSent() async throws {
        let world = try await ControllerWorld.make()
        let dead = try freeLoopbackPort()
        try world.writePolicy((1...6).map { ("f\($0)", "dwell: 0s") }, queryTimeout: "1s", prometheusURL: "http://127.0.0.1:\(dead)")
        let (status, document, output) = try await run(world)
        #expect(status == 1, "\(output.stderr)")
        let prometheus = network(document, "prometheus")
        #expect(prometheus["breaker"] as? String == "open", "\(prometheus)")
        #expect((prometheus["short_circuited"] as? Int ?? 0) > 0)
        #expect((prometheus["attempts"] as? Int ?? 0) >= 5)
        #expect((prometheus["failures"] as? Int ?? 0) == (prometheus["calls"] as? Int ?? -1))
        let errors = (document["features"] as? [[String: Any]] ?? []).flatMap { $0["query_errors"] as? [String] ?? [] }
        #expect(errors.contains { $0.contains("circuit breaker is open") })
        for feature in 1...6 { #expect(try await world.get("flags:f\(feature):rollout_percent") == nil) }
    }

    @Test func aHealthyPrometheusShowsOneAttemptPerQueryAndAClosedBreaker() async throws {
        let world = try await ControllerWorld.make()
        let pushgateway = try await offThePool { try PushgatewayServer() }
        try world.writePolicy([("calm", "dwell: 0s")], pushgateway: pushgateway.url)
        try await world.serve("calm", errorRatio: 0.001)
        let (status, document, _) = try await run(world)
        #expect(status == 0)
        let prometheus = network(document, "prometheus")
        #expect(prometheus["calls"] as? Int == 3)  // two checks and min_requests
        #expect(prometheus["attempts"] as? Int == 3 && prometheus["retries"] as? Int == 0)
        #expect(prometheus["breaker"] as? String == "closed")
        let push = network(document, "pushgateway")
        #expect(push["attempts"] as? Int == 1 && push["failures"] as? Int == 0, "\(push)")
    }

    @Test func anUnreachablePushgatewayIsRetriedAndNeverFailsTheRun() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("pushed", "dwell: 0s")], pushgateway: "http://127.0.0.1:\(try freeLoopbackPort())")
        try await world.known(["pushed"])
        try await world.serve("pushed", errorRatio: 0.001)
        let (status, document, output) = try await run(world)
        #expect(status == 0)
        #expect(try await world.get("flags:pushed:rollout_percent") == "10")
        let push = network(document, "pushgateway")
        #expect(push["attempts"] as? Int == 3 && push["retries"] as? Int == 2 && push["failures"] as? Int == 1, "\(push)")
        #expect(output.stderr.contains("Could not push telemetry"))
    }

    @Test func aWebhookChannelHasItsOwnStatistics() async throws {
        let world = try await ControllerWorld.make()
        let receiver = try WebhookReceiver(otherwise: .status(503))
        let top = """
            notifications:
              timeout: 1s
              fallback_file: \(world.directory)/fallback.jsonl
              state_file: \(world.directory)/state.json
              retry: {attempts: 3, base_delay: 50ms}
              channels:
                - {type: webhook, url_env: HOOK_URL, name: ops}
            """
        try world.writePolicy([("hooked", "dwell: 0s")], top: top)
        try await world.serve("hooked", errorRatio: nil)  // no data: one hold_started event
        let (status, document, _) = try await run(world, environment: ["HOOK_URL": receiver.url()])
        #expect(status == 0)
        let ops = network(document, "webhook:ops")
        #expect(ops["calls"] as? Int == 1 && ops["attempts"] as? Int == 3 && ops["retries"] as? Int == 2, "\(document["network"] ?? "")")
        #expect(receiver.requests.count == 3)
        let notifications = document["notifications"] as? [String: Any] ?? [:]
        #expect(notifications["written_to_fallback"] as? Int == 1)
    }
}

/// Redis fails after the compare-and-set was sent: the controller cannot know whether it ran.
/// It reads the keys back, and a change that was applied is reported and audited.
@Suite("An applied change whose reply was lost", .tags(.e2e, .prometheus, .redis), .requiresPrometheus)
struct LostReplyTests {
    /// A world whose controller reaches Redis through a proxy that drops the reply to the first
    /// compare-and-set (the script is loaded first, so that EVALSHA runs it).
    func world(_ extra: String) async throws -> (ControllerWorld, ReplyDroppingProxy) {
        let world = try await ControllerWorld.make()
        _ = try await world.client.send("SCRIPT", "LOAD", Scripts.applyChange.source)
        let proxy = try ReplyDroppingProxy(to: world.redis.port, trigger: Scripts.applyChange.sha1)
        try world.writePolicy([("lost", extra)], redisURL: "redis://127.0.0.1:\(proxy.port)")
        try await world.known(["lost"])
        return (world, proxy)
    }

    @Test func aPromotionIsStillAudited() async throws {
        let (world, proxy) = try await world("dwell: 0s")
        try await world.serve("lost", errorRatio: 0.001)
        let run = try await world.run()
        #expect(proxy.hasFired)
        #expect(run.status == 0, "\(run.output.stderr)")
        #expect(run.features["lost"]?["applied"] as? Bool == true, "\(run.output.stdout)")
        #expect(try await world.get("flags:lost:rollout_percent") == "10")
        #expect(world.auditLines().contains { $0.contains("lost  0% -> 10%") && $0.contains("by=controller") })
        #expect(run.output.stderr.contains("it was applied (confirmed by reading it back)"))
    }

    @Test func aRollbackThatPausedTheFeatureIsReportedAsAFlapPause() async throws {
        let (world, proxy) = try await world("dwell: 0s\nmax_rollbacks_per_hour: 1")
        _ = try await world.client.send("SET", "flags:lost:rollout_percent", "50")
        _ = try await world.client.send("SET", "flags:lost:controller_percent", "50")
        try await world.serve("lost", errorRatio: 0.5)
        let run = try await world.run()
        #expect(proxy.hasFired)
        #expect(run.features["lost"]?["decision"] as? String == "rollback", "\(run.output.stdout)")
        #expect(run.features["lost"]?["paused_by_flap_protection"] as? Bool == true)
        #expect(try await world.get("flags:lost:paused") == "true")
        #expect(world.auditLines().contains { $0.contains("lost  paused  reason=flap protection") })
    }
}

/// A Prometheus that sends its headers and then stalls, or trickles its body a byte at a time:
/// query_timeout bounds the whole answer, the feature holds, and the run releases its lock.
@Suite("A stalled Prometheus answer", .tags(.e2e, .prometheus, .redis, .webhook), .requiresPrometheus)
struct StalledPrometheusTests {
    @Test(arguments: [WebhookReceiver.Behaviour.stallAfterHead, .trickle(every: .milliseconds(200))])
    func aStalledAnswerTimesOutHoldsAndTheLockIsReleased(behaviour: WebhookReceiver.Behaviour) async throws {
        let world = try await ControllerWorld.make()
        let stand = try WebhookReceiver(otherwise: behaviour)
        defer { stand.stop() }
        try world.writePolicy([("stalled", "dwell: 0s")], queryTimeout: "1s", prometheusURL: stand.url(""))
        let run = try await world.run()
        #expect(run.status == 1, "\(run.output.stderr)")
        let feature = try #require(run.features["stalled"], "\(run.output.stdout)")
        #expect(feature["reason"] as? String == "prom_unreachable")
        let errors = feature["query_errors"] as? [String] ?? []
        #expect(errors.count == 3, "\(errors)")  // error_rate, latency_p95, min_requests
        #expect(errors.allSatisfy { $0.contains("did not answer within query_timeout 1s") && $0.contains("headers to last byte") }, "\(errors)")
        #expect(try await world.get("flags:stalled:lock") == nil)
        #expect(try await world.get("flags:stalled:rollout_percent") == nil)
        #expect(world.auditLines().isEmpty)
        // Every answer it held back was given up by the client, which closed the connection.
        #expect(stand.requests.count >= 3)
        #expect(await eventually { stand.closedByClient == stand.requests.count }, "\(stand.closedByClient) of \(stand.requests.count)")
    }
}
