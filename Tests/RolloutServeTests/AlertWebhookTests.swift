import Foundation
import NIOHTTP1
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

/// A redis-server, a policy file and `rollout serve --config` on it; with `prometheus`, a real
/// Prometheus scraping a /metrics endpoint that serves each feature's error ratio.
final class AlertWorld: Sendable {
    let redis: RedisServer
    let client: RedisClient
    let directory: String
    let metrics: MetricsEndpoint?
    let prometheus: PrometheusServer?

    /// `errorRatios`: each feature's `demo_error_ratio` (Prometheus starts only when given).
    init(errorRatios: [String: Double] = [:]) async throws {
        redis = try await RedisServer.start()
        client = RedisClient(url: redis.url())
        directory = try makeTemporaryDirectory("alerts")
        if errorRatios.isEmpty {
            metrics = nil
            prometheus = nil
        } else {
            let endpoint = try MetricsEndpoint()
            endpoint.set(errorRatios.sorted { $0.key < $1.key }.map { "demo_error_ratio{feature=\"\($0.key)\"} \($0.value)\n" }.joined())
            metrics = endpoint
            let server = try await offThePool { try PrometheusServer(scraping: [endpoint.port]) }
            prometheus = server
            for feature in errorRatios.keys { try await offThePool { try server.waitForData("demo_error_ratio{feature=\"\(feature)\"}") } }
        }
    }

    deinit {
        client.close()
        try? FileManager.default.removeItem(atPath: directory)
    }

    var policyPath: String { directory + "/rollout.yaml" }
    var auditLogPath: String { directory + "/rollout_log.md" }

    /// Writes the policy: every feature steps 10/50/100 with one rollback check on its error
    /// ratio; `extra` lines go in each feature.
    func writePolicy(_ features: [String], rollbackTo: String = "previous_step", extra: String = "") throws {
        var yaml = "prometheus: \(prometheus?.url ?? "http://127.0.0.1:1")\naudit_log: \(auditLogPath)\nquery_timeout: 1s\nfeatures:\n"
        for feature in features {
            yaml += """
                  \(feature):
                    steps: [10, 50, 100]
                    rollback_to: \(rollbackTo)
                    dwell: 0s
                    checks:
                      - {name: error_rate, query: 'max(demo_error_ratio{feature="\(feature)"})', max: 0.01}
                \(extra.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))

                """
        }
        try yaml.write(toFile: policyPath, atomically: true, encoding: .utf8)
    }

    /// The feature at `percent`, known to the controller, changed an hour ago.
    func seed(_ feature: String, percent: String) async throws {
        _ = try await client.pipeline([
            RedisCommand("SET", "flags:\(feature):rollout_percent", percent), RedisCommand("SET", "flags:\(feature):controller_percent", percent),
            RedisCommand("SET", "flags:\(feature):last_change_time", "2026-01-01T00:00:00.000000+00:00"),
        ])
    }

    func get(_ key: String) async throws -> String? { try await client.send("GET", key).string }

    var tokensFile: String { directory + "/tokens" }

    /// A new token in ``tokensFile`` (`rollout tokens add`), returned.
    func addToken(_ name: String, _ scopes: String) async throws -> String {
        let added = try await runCommand(try rolloutBinary(), ["tokens", "add", name, "--scopes", scopes, "--tokens-file", tokensFile])
        return String(added.stdout.split(separator: "\n").last ?? "")
    }

    /// `rollout serve --config` on this world, ready.
    func serve(_ arguments: [String] = [], name: String = "serve") async throws -> Serve {
        let folder = directory + "/" + name
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let serve = try Serve(redis, directory: folder, arguments: ["--config", policyPath] + arguments)
        guard await ready(serve) else { throw FixtureError("rollout serve did not start") }
        return serve
    }

    /// The audit stream's records: (feature, change, reason).
    func auditRecords() async throws -> [(feature: String, change: String, reason: String)] {
        let entries = try await client.send("XRANGE", "rollout:audit", "-", "+").array ?? []
        return entries.compactMap { entry in
            guard let fields = entry.array?.last?.array?.compactMap(\.string) else { return nil }
            var record: [String: String] = [:]
            for index in stride(from: 0, to: fields.count - 1, by: 2) { record[fields[index]] = fields[index + 1] }
            return (record["feature"] ?? "", record["change"] ?? "", record["reason"] ?? "")
        }
    }
}

/// One alert of a webhook payload.
struct TestAlert {
    var fingerprint: String
    var labels: [String: String]
    var status = "firing"
    var startsAt = "2026-12-02T10:00:00.000Z"
    var generatorURL = "http://prometheus:9090/graph?g0.expr=up&token=hunter2"
}

/// Alertmanager's version 4 body with `alerts`.
func webhookPayload(_ alerts: [TestAlert]) -> String {
    let body: [String: Any] = [
        "version": "4", "groupKey": "{}:{alertname=\"x\"}", "truncatedAlerts": 0, "status": alerts.allSatisfy { $0.status == "resolved" } ? "resolved" : "firing",
        "receiver": "rollout", "groupLabels": ["alertname": "x"], "commonLabels": [String: String](), "commonAnnotations": [String: String](),
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts.map {
            [
                "status": $0.status, "labels": $0.labels, "annotations": ["summary": "s"], "startsAt": $0.startsAt, "endsAt": "0001-01-01T00:00:00Z",
                "generatorURL": $0.generatorURL, "fingerprint": $0.fingerprint,
            ] as [String: Any]
        },
    ]
    return String(decoding: (try? JSONSerialization.data(withJSONObject: body, options: [.sortedKeys])) ?? Data(), as: UTF8.self)
}

func postAlerts(_ serve: Serve, _ body: String, token: String? = nil) async throws -> Answer {
    try await call(serve.base + "/v1/alerts", body: body, headers: token.map { [("Authorization", "Bearer \($0)")] } ?? [])
}

/// The answer's alerts by fingerprint.
func outcomes(_ answer: Answer) -> [String: [String: Any]] {
    var found: [String: [String: Any]] = [:]
    for item in answer.json["alerts"] as? [[String: Any]] ?? [] {
        if let fingerprint = item["fingerprint"] as? String { found[fingerprint] = item }
    }
    return found
}

private let forced = ["alertname": "CheckoutErrorBudgetBurn", "feature": "checkout", "rollout_action": "rollback", "severity": "page"]

@Suite("rollout serve: the Alertmanager webhook, against redis-server and Prometheus", .tags(.redis, .e2e), .requiresRedis, .serialized)
struct AlertWebhookTests {
    @Test(.requiresPrometheus) func aFiringAlertWhoseChecksFailRollsBackAndOneWhoseChecksPassHoldsWithoutPromoting() async throws {
        let world = try await AlertWorld(errorRatios: ["failing": 0.2, "healthy": 0.001])
        try world.writePolicy(["failing", "healthy"], rollbackTo: "10")
        try await world.seed("failing", percent: "50")
        try await world.seed("healthy", percent: "50")
        let serve = try await world.serve()
        let answer = try await postAlerts(
            serve,
            webhookPayload([
                TestAlert(fingerprint: "aaaa000000000001", labels: ["alertname": "FailingErrors", "feature": "failing"]),
                TestAlert(fingerprint: "aaaa000000000002", labels: ["alertname": "HealthyErrors", "feature": "healthy"]),
            ]))
        #expect(answer.status == 200, "\(answer.body)")
        let results = outcomes(answer)
        let failing = try #require(results["aaaa000000000001"])
        #expect(failing["outcome"] as? String == "rolled_back" && failing["from"] as? String == "50" && failing["to"] as? String == "10", "\(failing)")
        #expect(failing["forced"] as? Bool == false && failing["guard_locked"] as? Bool == true)
        let healthy = try #require(results["aaaa000000000002"])
        #expect(healthy["outcome"] as? String == "held" && healthy["reason"] as? String == "watching", "\(healthy)")
        #expect(try await world.get("flags:failing:rollout_percent") == "10")
        #expect(try await world.get("flags:healthy:rollout_percent") == "50")  // never a promotion from an alert
        // An alert's run leaves its verdict, as any evaluation does.
        #expect(try await world.get("flags:failing:last_verdict")?.hasPrefix("rollback ") == true)
        #expect(try await world.get("flags:failing:last_verdict")?.hasSuffix(" error_rate") == true)
        #expect(try await world.get("flags:healthy:last_verdict")?.hasSuffix(" watching") == true)
        let records = try await world.auditRecords()
        #expect(records.contains { $0.feature == "failing" && $0.change == "50% -> 10%" && $0.reason.contains("error_rate=0.2 violated") && $0.reason.hasSuffix("; evaluated at once for alert FailingErrors (fingerprint aaaa000000000001)") })
        #expect(!records.contains { $0.feature == "healthy" })
        let log = (try? String(contentsOfFile: world.auditLogPath, encoding: .utf8)) ?? ""
        #expect(log.contains("failing  50% -> 10%"), "\(log)")
    }

    @Test func aForcedRollbackGoesToTheTargetWithoutChecksOnceAcrossServers() async throws {
        // Prometheus is nowhere: a forced rollback sends no query.
        let world = try await AlertWorld()
        try world.writePolicy(["checkout"])
        try await world.seed("checkout", percent: "100")
        let first = try await world.serve(name: "a")
        let second = try await world.serve(name: "b")
        let body = webhookPayload([TestAlert(fingerprint: "bbbb000000000001", labels: forced)])
        // An HA pair delivers the same alert to both servers at once: one acts. The other finds
        // it done (200, duplicate) or still being acted on (503, in_progress: its retry finds it done).
        async let one = postAlerts(first, body)
        async let other = postAlerts(second, body)
        let answers = try await [one, other]
        let seen = answers.compactMap { outcomes($0)["bbbb000000000001"]?["outcome"] as? String }.sorted()
        #expect(seen == ["duplicate", "rolled_back"] || seen == ["in_progress", "rolled_back"], "\(answers.map(\.body))")
        #expect(answers.map(\.status).sorted() == (seen[0] == "duplicate" ? [200, 200] : [200, 503]), "\(answers.map(\.body))")
        let acted = try #require(answers.compactMap { outcomes($0)["bbbb000000000001"] }.first { $0["outcome"] as? String == "rolled_back" })
        #expect(acted["from"] as? String == "100" && acted["to"] as? String == "50" && acted["forced"] as? Bool == true)
        #expect(try await world.get("flags:checkout:last_verdict")?.hasSuffix(" forced") == true)
        // Sent again to either: a duplicate, never a second step down.
        for serve in [first, second] {
            let again = try await postAlerts(serve, body)
            #expect(outcomes(again)["bbbb000000000001"]?["outcome"] as? String == "duplicate", "\(again.body)")
            #expect((outcomes(again)["bbbb000000000001"]?["detail"] as? String)?.contains("rolled_back 100% -> 50%") == true, "\(again.body)")
        }
        #expect(try await world.get("flags:checkout:rollout_percent") == "50")
        let records = try await world.auditRecords().filter { $0.feature == "checkout" }
        #expect(records.map(\.change) == ["100% -> 50%"])
        let reason = try #require(records.first?.reason)
        #expect(reason.contains("alert CheckoutErrorBudgetBurn (fingerprint bbbb000000000001)"), "\(reason)")
        #expect(!reason.contains("hunter2") && !reason.contains("generatorURL") && !reason.contains("graph?"))
        for serve in [first, second] { #expect(!serve.logText.contains("hunter2")) }
        // The claim is documented: rollout:alert:<sha256 of fingerprint NUL startsAt>, done for a week.
        let key = "rollout:alert:" + sha256Hex(Data("bbbb000000000001".utf8) + [0] + Data("2026-12-02T10:00:00.000Z".utf8))
        #expect(try await world.get(key) == "done:rolled_back 100% -> 50%")
        let ttl = try await world.client.send("TTL", key).integer ?? 0
        #expect(ttl > 6 * 24 * 3600 && ttl <= 7 * 24 * 3600)
        // The same alert firing anew (a new startsAt) acts again.
        var anew = TestAlert(fingerprint: "bbbb000000000001", labels: forced)
        anew.startsAt = "2026-12-02T11:00:00.000Z"
        let second2 = try await postAlerts(second, webhookPayload([anew]))
        #expect(outcomes(second2)["bbbb000000000001"]?["outcome"] as? String == "rolled_back", "\(second2.body)")
        #expect(try await world.get("flags:checkout:rollout_percent") == "10")
    }

    @Test func aForcedRollbackHasTheGuardAndFlapProtectionOfAnyRollback() async throws {
        let world = try await AlertWorld()
        try world.writePolicy(["checkout"], extra: "max_rollbacks_per_hour: 2\nguard_window: 30m")
        try await world.seed("checkout", percent: "100")
        let serve = try await world.serve()
        let first = try await postAlerts(serve, webhookPayload([TestAlert(fingerprint: "cccc000000000001", labels: forced)]))
        #expect(outcomes(first)["cccc000000000001"]?["outcome"] as? String == "rolled_back", "\(first.body)")
        // The guard locks promotions for guard_window.
        let guardValue = try #require(try await world.get("flags:checkout:guard"))
        #expect(guardValue.hasPrefix("rollback "))
        let pttl = try await world.client.send("PTTL", "flags:checkout:guard").integer ?? 0
        #expect(pttl > 29 * 60_000 && pttl <= 30 * 60_000)
        // A second alert within the hour reaches max_rollbacks_per_hour: the feature is paused for a person.
        let second = try await postAlerts(serve, webhookPayload([TestAlert(fingerprint: "cccc000000000002", labels: forced)]))
        let result = try #require(outcomes(second)["cccc000000000002"])
        #expect(result["outcome"] as? String == "rolled_back" && result["to"] as? String == "10", "\(second.body)")
        #expect(result["paused_by_flap_protection"] as? Bool == true)
        #expect(try await world.get("flags:checkout:paused") == "true")
        // A third alert: paused, nothing to do, and it says so.
        let third = try await postAlerts(serve, webhookPayload([TestAlert(fingerprint: "cccc000000000003", labels: forced)]))
        let held = try #require(outcomes(third)["cccc000000000003"])
        #expect(held["outcome"] as? String == "nothing_to_do" && held["reason"] as? String == "paused", "\(third.body)")
        #expect(try await world.get("flags:checkout:rollout_percent") == "10")
        // At the target, or with the kill switch on: nothing to do either.
        _ = try await world.client.send("DEL", "flags:checkout:paused")
        let atTarget = try await postAlerts(serve, webhookPayload([TestAlert(fingerprint: "cccc000000000004", labels: forced)]))
        #expect(outcomes(atTarget)["cccc000000000004"]?["outcome"] as? String == "rolled_back")  // previous_step: 10 -> 0
        _ = try await world.client.send("DEL", "flags:checkout:paused")  // flap protection paused it again
        let atZero = try await postAlerts(serve, webhookPayload([TestAlert(fingerprint: "cccc000000000005", labels: forced)]))
        #expect(outcomes(atZero)["cccc000000000005"]?["reason"] as? String == "at_rollback_target", "\(atZero.body)")
        _ = try await world.client.send("SET", "flags:checkout:enabled", "false")
        let killed = try await postAlerts(serve, webhookPayload([TestAlert(fingerprint: "cccc000000000006", labels: forced)]))
        #expect(outcomes(killed)["cccc000000000006"]?["reason"] as? String == "disabled", "\(killed.body)")
    }

    @Test func aClaimLeftPendingIs503UntilItExpiresThenTheRetryActs() async throws {
        // A server that died while acting leaves its claim pending until its TTL: a delivery meanwhile
        // must not be answered 200 (Alertmanager would never send it again), nor act twice.
        let world = try await AlertWorld()
        try world.writePolicy(["checkout"])
        try await world.seed("checkout", percent: "100")
        let serve = try await world.serve()
        let key = "rollout:alert:" + sha256Hex(Data("acac000000000001".utf8) + [0] + Data("2026-12-02T10:00:00.000Z".utf8))
        _ = try await world.client.send("SET", key, "pending:a-server-that-died", "PX", "600000")
        let body = webhookPayload([TestAlert(fingerprint: "acac000000000001", labels: forced)])
        let pending = try await postAlerts(serve, body)
        #expect(pending.status == 503 && outcomes(pending)["acac000000000001"]?["outcome"] as? String == "in_progress", "\(pending.body)")
        #expect(try await world.get("flags:checkout:rollout_percent") == "100")
        _ = try await world.client.send("DEL", key)  // what its expiry does
        let retried = try await postAlerts(serve, body)
        #expect(retried.status == 200 && outcomes(retried)["acac000000000001"]?["outcome"] as? String == "rolled_back", "\(retried.body)")
    }

    @Test func resolvedIsLoggedOnlyAndAlertsAboutNoFeatureAreSkipped() async throws {
        let world = try await AlertWorld()
        try world.writePolicy(["checkout"])
        try await world.seed("checkout", percent: "100")
        let serve = try await world.serve(["--alert-feature-label", "rollout_feature"])
        var resolved = TestAlert(fingerprint: "dddd000000000001", labels: ["alertname": "A", "rollout_feature": "checkout", "rollout_action": "rollback"])
        resolved.status = "resolved"
        let answer = try await postAlerts(
            serve,
            webhookPayload([
                resolved,
                TestAlert(fingerprint: "dddd000000000002", labels: ["alertname": "NoLabel", "feature": "checkout"]),  // not the configured label
                TestAlert(fingerprint: "dddd000000000003", labels: ["alertname": "Elsewhere", "rollout_feature": "search"]),
                TestAlert(fingerprint: "dddd000000000004", labels: ["alertname": "Bad", "rollout_feature": "Not A Name"]),
            ]))
        #expect(answer.status == 200, "\(answer.body)")
        let results = outcomes(answer)
        #expect(results["dddd000000000001"]?["outcome"] as? String == "resolved_logged")
        #expect(results["dddd000000000002"]?["outcome"] as? String == "skipped")
        #expect((results["dddd000000000002"]?["detail"] as? String)?.contains("no label rollout_feature") == true)
        #expect(results["dddd000000000003"]?["outcome"] as? String == "skipped")
        #expect((results["dddd000000000003"]?["detail"] as? String)?.contains("not a feature of the policy") == true)
        #expect(results["dddd000000000004"]?["outcome"] as? String == "skipped")
        #expect(try await world.get("flags:checkout:rollout_percent") == "100")
        #expect(try await world.auditRecords().isEmpty)
        #expect(serve.logText.contains("Resolved alert logged"))
    }

    @Test func aMalformedPayloadIs400NamingTheFieldAndExtraFieldsAreFine() async throws {
        let world = try await AlertWorld()
        try world.writePolicy(["checkout"])
        let serve = try await world.serve()
        func expectProblem(_ body: String, field: String?, _ comment: Comment) async throws {
            let answer = try await postAlerts(serve, body)
            #expect(answer.status == 400, comment)
            #expect(answer.headers.first(name: "Content-Type") == "application/problem+json", comment)
            #expect(answer.json["status"] as? Int == 400 && answer.json["type"] is String && answer.json["title"] is String, comment)
            #expect(answer.json["detail"] is String, comment)
            #expect(answer.json["field"] as? String == field, "\(comment): \(answer.body)")
        }
        let good = webhookPayload([TestAlert(fingerprint: "eeee000000000001", labels: ["alertname": "A"])])
        try await expectProblem("{\"version\":", field: nil, "not JSON")
        try await expectProblem("[]", field: nil, "not an object")
        try await expectProblem(good.replacingOccurrences(of: "\"version\":\"4\"", with: "\"version\":\"3\""), field: "version", "another version")
        try await expectProblem(good.replacingOccurrences(of: "\"fingerprint\":\"eeee000000000001\",", with: ""), field: "alerts[0].fingerprint", "no fingerprint")
        try await expectProblem(good.replacingOccurrences(of: "\"alertname\":\"A\"", with: "\"alertname\":7"), field: "alerts[0].labels.alertname", "a number label")
        try await expectProblem(good.replacingOccurrences(of: "\"status\":\"firing\"", with: "\"status\":\"burning\""), field: "status", "a status")
        try await expectProblem("{\"version\":\"4\",\"status\":\"firing\"}", field: "alerts", "no alerts")
        // Unknown fields are Alertmanager's to add.
        let extra = try await postAlerts(serve, good.replacingOccurrences(of: "{\"alerts\"", with: "{\"newField\":{\"a\":[1]},\"alerts\""))
        #expect(extra.status == 200, "\(extra.body)")
        #expect(outcomes(extra)["eeee000000000001"]?["outcome"] as? String == "skipped")
        // Bounded at 64 KiB.
        let huge = webhookPayload([TestAlert(fingerprint: "eeee000000000002", labels: ["alertname": String(repeating: "x", count: 70_000)])])
        #expect(try await postAlerts(serve, huge).status == 413)
    }

    @Test(.requiresPrometheus) func unreachablePrometheusOrRedisIs503AndTheClaimIsReleasedForTheRetry() async throws {
        let world = try await AlertWorld(errorRatios: ["checkout": 0.2])
        try world.writePolicy(["checkout"], rollbackTo: "10")
        try await world.seed("checkout", percent: "50")
        let serve = try await world.serve()
        let prometheus = try #require(world.prometheus)
        let body = webhookPayload([
            TestAlert(fingerprint: "ffff000000000001", labels: ["alertname": "Errors", "feature": "checkout"]),
            TestAlert(fingerprint: "ffff000000000002", labels: ["alertname": "Errors", "feature": "checkout"]),
        ])
        let key = "rollout:alert:" + sha256Hex(Data("ffff000000000001".utf8) + [0] + Data("2026-12-02T10:00:00.000Z".utf8))

        // Prometheus away: 503, nothing changed, the claim released.
        await prometheus.stopOffPool()
        let down = try await postAlerts(serve, body)
        #expect(down.status == 503 && down.headers.first(name: "Content-Type") == "application/problem+json", "\(down.body)")
        #expect(outcomes(down)["ffff000000000001"]?["outcome"] as? String == "unavailable", "\(down.body)")
        #expect(outcomes(down)["ffff000000000002"]?["outcome"] as? String == "not_acted")
        #expect(try await world.client.send("EXISTS", key) == .integer(0))
        #expect(try await world.get("flags:checkout:rollout_percent") == "50")
        // Alertmanager's retry, once Prometheus is back, acts.
        try await prometheus.restartOffPool()
        try await offThePool { try prometheus.waitForData("demo_error_ratio{feature=\"checkout\"}") }
        let retried = try await postAlerts(serve, body)
        #expect(retried.status == 200, "\(retried.body)")
        #expect(outcomes(retried)["ffff000000000001"]?["outcome"] as? String == "rolled_back", "\(retried.body)")
        #expect(try await world.get("flags:checkout:rollout_percent") == "10")

        // Redis away: 503 (no claim could be taken); back, the retry acts.
        try await world.seed("checkout", percent: "50")
        let third = webhookPayload([TestAlert(fingerprint: "ffff000000000003", labels: forced)])
        await world.redis.stopOffPool()
        let noRedis = try await postAlerts(serve, third)
        #expect(noRedis.status == 503, "\(noRedis.body)")
        #expect(outcomes(noRedis)["ffff000000000003"]?["outcome"] as? String == "unavailable")
        try await world.redis.restartOffPool()
        try await world.seed("checkout", percent: "50")  // the fixture keeps no data across a restart
        let afterRedis = try await postAlerts(serve, third)
        #expect(outcomes(afterRedis)["ffff000000000003"]?["outcome"] as? String == "rolled_back", "\(afterRedis.body)")
        #expect(try await world.get("flags:checkout:rollout_percent") == "10")
    }

    @Test(.requiresAlertmanager) func aRealAlertmanagerDeliversOnceItsRepeatsAreDuplicatesAndResolvedIsLogged() async throws {
        let world = try await AlertWorld()
        try world.writePolicy(["checkout"])
        try await world.seed("checkout", percent: "100")
        let file = world.tokensFile
        let add = world.addToken
        let credentials = world.directory + "/alertmanager.token"
        try (try await add("alertmanager", "alerts")).write(toFile: credentials, atomically: true, encoding: .utf8)
        let reader = try await add("ops", "read")
        let serve = try await world.serve(["--tokens-file", file])
        // Sent at once, then again every second with the same startsAt (repeat_interval), and resolved.
        let alertmanager = try await offThePool {
            try AlertmanagerServer(
                config: """
                    route:
                      receiver: rollout
                      group_by: [alertname, feature]
                      group_wait: 0s
                      group_interval: 1s
                      repeat_interval: 1s
                    receivers:
                      - name: rollout
                        webhook_configs:
                          - url: \(serve.base)/v1/alerts
                            send_resolved: true
                            max_alerts: 20
                            http_config:
                              authorization:
                                credentials_file: \(credentials)

                    """)
        }
        let startsAt = ISO8601DateFormatter().string(from: Date())
        func post(endsAt: String?) async throws {
            var alert: [String: Any] = [
                "labels": ["alertname": "CheckoutErrorBudgetBurn", "feature": "checkout", "rollout_action": "rollback"],
                "annotations": ["summary": "burning"], "generatorURL": "http://prometheus:9090/graph?g0.expr=x&token=hunter2", "startsAt": startsAt,
            ]
            if let endsAt { alert["endsAt"] = endsAt }
            let body = String(decoding: try JSONSerialization.data(withJSONObject: [alert]), as: UTF8.self)
            let posted = try await call(alertmanager.url + "/api/v2/alerts", body: body)
            #expect(posted.status == 200, "\(posted.body)")
        }
        func counted(_ outcome: String) async -> Bool {
            let metrics = try? await call(serve.base + "/metrics", method: .GET, headers: [("Authorization", "Bearer \(reader)")])
            return metrics?.body.contains("rollout_serve_alerts_total{outcome=\"\(outcome)\"}") == true
        }
        try await post(endsAt: nil)
        #expect(await eventually(within: .seconds(60)) { await counted("duplicate") }, "\(alertmanager.logText)\n\(serve.logText)")
        #expect(await counted("rolled_back"))
        #expect(try await world.get("flags:checkout:rollout_percent") == "50")  // once, whatever the repeats
        #expect(try await world.auditRecords().filter { $0.feature == "checkout" }.map(\.change) == ["100% -> 50%"])
        try await post(endsAt: ISO8601DateFormatter().string(from: Date()))
        #expect(await eventually(within: .seconds(60)) { await counted("resolved_logged") }, "\(serve.logText)")
        #expect(try await world.get("flags:checkout:rollout_percent") == "50")
        #expect(!serve.logText.contains("hunter2"))
    }

    @Test func tokensNeedTheAlertsScope() async throws {
        let world = try await AlertWorld()
        try world.writePolicy(["checkout"])
        try await world.seed("checkout", percent: "100")
        let file = world.tokensFile
        let add = world.addToken
        let web = try await add("web", "evaluate,read,operate")
        let alertmanager = try await add("alertmanager", "alerts")
        let serve = try await world.serve(["--tokens-file", file])
        let body = webhookPayload([TestAlert(fingerprint: "abab000000000001", labels: forced)])
        #expect(try await postAlerts(serve, body).status == 401)
        #expect(try await postAlerts(serve, body, token: web).status == 403)
        #expect(try await world.get("flags:checkout:rollout_percent") == "100")
        let allowed = try await postAlerts(serve, body, token: alertmanager)
        #expect(allowed.status == 200 && outcomes(allowed)["abab000000000001"]?["outcome"] as? String == "rolled_back", "\(allowed.body)")
        // The alerts scope opens nothing else.
        #expect(try await call(serve.base + "/ofrep/v1/evaluate/flags/checkout", body: context("u1"), headers: [("Authorization", "Bearer \(alertmanager)")]).status == 403)
    }

    @Test func withoutAPolicyTheWebhookIs501AndABadPolicyStopsTheStart() async throws {
        let world = try await AlertWorld()
        // No --config: OFREP serves, the webhook says what it lacks.
        let plain = try Serve(world.redis, directory: world.directory)
        #expect(await ready(plain))
        let answer = try await postAlerts(plain, webhookPayload([TestAlert(fingerprint: "1", labels: forced)]))
        #expect(answer.status == 501 && answer.headers.first(name: "Content-Type") == "application/problem+json")
        #expect((answer.json["detail"] as? String)?.contains("--config") == true, "\(answer.body)")
        await plain.process.terminateOffPool(SIGTERM)

        let binary = try rolloutBinary()
        let environment = ["REDIS_URL": world.redis.urlString]
        func start(_ arguments: [String]) async throws -> CommandResult {
            try await runCommand(binary, ["serve", "--listen", "127.0.0.1:\(try freeLoopbackPort())"] + arguments, environment: environment)
        }
        let missing = try await start(["--config", world.directory + "/nothing.yaml"])
        #expect(missing.status == 2 && missing.stderr.contains("nothing.yaml"), "\(missing.stderr)")
        try "features: {}\n".write(toFile: world.policyPath, atomically: true, encoding: .utf8)
        let invalid = try await start(["--config", world.policyPath])
        #expect(invalid.status == 2 && invalid.stderr.contains("prometheus"), "\(invalid.stderr)")
        try world.writePolicy(["checkout"])
        let unwritableLog = try await runCommand(
            binary, ["serve", "--listen", "127.0.0.1:\(try freeLoopbackPort())", "--config", world.policyPath],
            environment: environment.merging(["ROLLOUT_AUDIT_LOG": world.directory + "/no-such-folder/log.md"]) { $1 })
        #expect(unwritableLog.status == 2 && unwritableLog.stderr.contains("no-such-folder"), "\(unwritableLog.stderr)")
        let unwritableFlag = try await start(["--config", world.policyPath, "--audit-log", "/dev/full"])
        #expect(unwritableFlag.status == 2 && unwritableFlag.stderr.contains("/dev/full"), "\(unwritableFlag.stderr)")
        let otherRedis = try await start(["--config", world.policyPath, "--redis-url", "redis://:s3cret@127.0.0.1:1/3"])
        #expect(otherRedis.status == 2 && otherRedis.stderr.contains("different servers"), "\(otherRedis.stderr)")
        #expect(!otherRedis.stderr.contains("s3cret"))
    }
}
