import Foundation
import RolloutAdmin
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

/// The cohort counters `FeatureHandle.record` exports, for one feature: requests and failures
/// per cohort.
private func cohortSeries(_ feature: String, on: (failures: Int, requests: Int), off: (failures: Int, requests: Int)) -> String {
    var text = ""
    for (cohort, counts) in [("on", on), ("off", off)] {
        text += "rollout_cohort_requests_total{feature=\"\(feature)\",cohort=\"\(cohort)\"} \(counts.requests)\n"
        text += "rollout_cohort_failures_total{feature=\"\(feature)\",cohort=\"\(cohort)\"} \(counts.failures)\n"
    }
    return text + "demo_requests{feature=\"\(feature)\"} 500\n"
}

@Suite("The cohort check end to end: Prometheus scraping cohort counters, redis-server, the rollout binary", .tags(.e2e, .prometheus, .redis), .requiresPrometheus)
struct CohortEndToEndTests {
    @Test func theFeaturesOwnCohortDecidesNotTheServiceWideRate() async throws {
        let world = try await ControllerWorld.make()
        let features = ["regress", "incident", "quiet", "unsure"]
        try world.writePolicy(
            features.map { ($0, "dwell: 5m") },
            checks: """
                - name: cohort_errors
                  type: cohort
                  max_regression: 0.5pp
                  min_requests: 1000
                """, rollbackTo: "zero")
        // Each at 10%, changed ten minutes ago: the counts since then are the step's evidence.
        let changed = Timestamp.now().advanced(by: .seconds(-600)).description
        for feature in features {
            _ = try await world.client.pipeline([
                RedisCommand("SET", "flags:\(feature):rollout_percent", "10"), RedisCommand("SET", "flags:\(feature):last_percent", "0"),
                RedisCommand("SET", "flags:\(feature):last_change_time", changed),
            ])
        }
        try await world.known(features)
        // The counters start at zero (scraped), then grow: increase() over the window sees that.
        let zero = features.map { cohortSeries($0, on: (0, 0), off: (0, 0)) }.joined()
        world.metrics.set("demo_up 1\n" + zero)
        try await waitUntil(world, "sum(rollout_cohort_requests_total{feature=\"unsure\",cohort=\"off\"}) == 0")
        world.metrics.set(
            "demo_up 1\n"
                // The feature's cohort fails at 2%, the rest at 1%: a regression at 10%.
                + cohortSeries("regress", on: (400, 20_000), off: (1_800, 180_000))
                // An outside incident: both cohorts at 10%. The service-wide rate is 10%, far over
                // any threshold; the cohorts are alike.
                + cohortSeries("incident", on: (20_000, 200_000), off: (180_000, 1_800_000))
                // Too little traffic in the feature's cohort.
                + cohortSeries("quiet", on: (3, 300), off: (500, 50_000))
                // 1.4% against 1.0% on little traffic: the interval spans max_regression.
                + cohortSeries("unsure", on: (28, 2_000), off: (180, 18_000)))
        try await waitUntil(world, "sum(increase(rollout_cohort_requests_total{feature=\"unsure\",cohort=\"off\"}[10m])) > 0")

        // rollout compare: what the checks will see, before the run changes anything.
        let compare = try await runCommand(world.binary, ["compare", "unsure", "--config", world.configPath])
        #expect(compare.status == 0, "\(compare.stderr)")
        #expect(compare.stdout.contains("unsure at 10%, counting since its last change"), "\(compare.stdout)")
        #expect(compare.stdout.contains("cohort_errors: max_regression 0.5pp, alpha 0.05, min_requests 1000"))
        // Prometheus's increase() extrapolates each series a little: about 1.4% and 1%.
        #expect(compare.stdout.contains("  on: ") && compare.stdout.contains("  off: ") && compare.stdout.contains(" failed, ratio "), "\(compare.stdout)")
        #expect(compare.stdout.contains("-> inconclusive: on - off in ["))
        let regressJSON = try await runCommand(world.binary, ["compare", "regress", "--config", world.configPath, "--json"])
        let document = (try? JSONSerialization.jsonObject(with: Data(regressJSON.stdout.utf8))) as? [String: Any] ?? [:]
        let compared = (document["checks"] as? [[String: Any]])?.first ?? [:]
        #expect(compared["verdict"] as? String == "regression", "\(regressJSON.stdout)")
        #expect(((compared["interval"] as? [String: Any])?["lower"] as? Double ?? 0) > 0.005)
        #expect(document["complete"] as? Bool == true)
        let noCohort = try await runCommand(world.binary, ["compare", "nope", "--config", world.configPath])
        #expect(noCohort.status == 2)

        let run = try await world.run()
        #expect(run.status == 0, "\(run.output.stderr)")
        let regress = try #require(run.features["regress"])
        #expect(regress["decision"] as? String == "rollback", "\(regress)")
        #expect(try await world.get("flags:regress:rollout_percent") == "0")
        #expect(run.features["incident"]?["decision"] as? String == "promote", "\(run.features["incident"] ?? [:])")
        #expect(try await world.get("flags:incident:rollout_percent") == "50")
        #expect(run.features["quiet"]?["reason"] as? String == "no_data")
        #expect(run.features["unsure"]?["reason"] as? String == "insufficient_evidence", "\(run.features["unsure"] ?? [:])")
        for feature in ["quiet", "unsure"] { #expect(try await world.get("flags:\(feature):rollout_percent") == "10") }
        let checks = regress["checks"] as? [[String: Any]] ?? []
        #expect(checks.first?["status"] as? String == "violated")
        #expect(checks.first?["limit"] as? String == "max_regression 0.5pp")
        // Each change has its audit line, the rollback's with the cohorts' interval.
        let lines = world.auditLines()
        #expect(lines.count == 2)
        #expect(lines.contains { $0.contains("  regress  10% -> 0%  reason=rollback: cohort_errors=") && $0.contains("above max_regression 0.5pp: a regression") })
        #expect(lines.contains { $0.contains("  incident  10% -> 50%  reason=healthy: 10% -> 50%") })
    }

    /// Waits until Prometheus answers `query` with a sample (it scraped what the test serves).
    private func waitUntil(_ world: ControllerWorld, _ query: String) async throws {
        let prometheus = world.prometheus
        try await offThePool { try prometheus.waitForData(query, timeout: 60) }
    }
}
