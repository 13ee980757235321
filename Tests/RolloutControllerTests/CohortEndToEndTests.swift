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

/// The cohort latency histogram `FeatureHandle.record` exports, for one feature: per cohort, its
/// observations (seconds, how many) counted into Prometheus's default buckets.
private func latencySeries(_ feature: String, on: [(seconds: Double, count: Int)], off: [(seconds: Double, count: Int)]) -> String {
    var text = ""
    for (cohort, observations) in [("on", on), ("off", off)] {
        let labels = "feature=\"\(feature)\",cohort=\"\(cohort)\""
        for bound in ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"] {
            let limit = Double(bound) ?? .infinity
            let count = observations.filter { $0.seconds <= limit }.map(\.count).reduce(0, +)
            text += "rollout_cohort_duration_seconds_bucket{\(labels),le=\"\(bound)\"} \(count)\n"
        }
        text += "rollout_cohort_duration_seconds_sum{\(labels)} \(observations.map { $0.seconds * Double($0.count) }.reduce(0, +))\n"
        text += "rollout_cohort_duration_seconds_count{\(labels)} \(observations.map(\.count).reduce(0, +))\n"
    }
    return text + "demo_requests{feature=\"\(feature)\"} 500\n"
}

@Suite("The cohort check end to end: Prometheus scraping cohort counters, redis-server, the rollout binary", .tags(.e2e, .prometheus, .redis), .requiresPrometheus)
struct CohortEndToEndTests {
    @Test func theFeaturesOwnCohortDecidesNotTheServiceWideRate() async throws {
        let world = try await ControllerWorld.make()
        let features = ["regress", "incident", "quiet", "unsure"]
        // "zero" stays at 0%: nobody is in its cohort, the check does not apply, nothing else judges.
        try world.writePolicy(
            (features + ["zero"]).map { ($0, "dwell: 5m") },
            checks: """
                - name: cohort_errors
                  type: cohort
                  max_regression: 0.5pp
                  min_requests: 1000
                """, rollbackTo: "zero")
        try await atTenPercent(world, features)
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
        try await world.known(["zero"], at: "0")
        let atZero = try await runCommand(world.binary, ["compare", "zero", "--config", world.configPath])
        #expect(atZero.status == 0 && atZero.stdout.contains("zero is at 0%: one cohort is empty, so its cohort checks do not apply"), "\(atZero.stdout)")

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
        #expect(run.features["zero"]?["reason"] as? String == "no_data")
        #expect((run.features["zero"]?["explanation"] as? String)?.contains("no check applies at 0%") == true)
        #expect(try await world.get("flags:zero:rollout_percent") == "0")
        let checks = regress["checks"] as? [[String: Any]] ?? []
        #expect(checks.first?["status"] as? String == "violated")
        #expect(checks.first?["limit"] as? String == "max_regression 0.5pp")
        // Each change has its audit line, the rollback's with the cohorts' interval.
        let lines = world.auditLines()
        #expect(lines.count == 2)
        #expect(lines.contains { $0.contains("  regress  10% -> 0%  reason=rollback: cohort_errors=") && $0.contains("above max_regression 0.5pp: a regression") })
        #expect(lines.contains { $0.contains("  incident  10% -> 50%  reason=healthy: 10% -> 50%") })
    }

    @Test func aSlowerOwnCohortRollsBackAndEqualLatenciesPromote() async throws {
        let world = try await ControllerWorld.make()
        let features = ["slow", "same", "tail"]
        try world.writePolicy(
            features.map { ($0, "dwell: 5m") },
            checks: """
                - name: cohort_latency
                  type: cohort
                  latency: rollout_cohort_duration_seconds
                  max_regression: 20ms
                  min_requests: 1000
                """, rollbackTo: "zero")
        try await atTenPercent(world, features)
        world.metrics.set("demo_up 1\n" + features.map { latencySeries($0, on: [], off: []) }.joined())
        try await waitUntil(world, "sum(rollout_cohort_duration_seconds_count{feature=\"tail\",cohort=\"off\"}) == 0")
        // The rest: half at 40 ms, half at 80 ms (a 60 ms mean).
        let usual: [(seconds: Double, count: Int)] = [(0.04, 9_000), (0.08, 9_000)]
        world.metrics.set(
            "demo_up 1\n"
                // The feature's cohort: half at 200 ms, a 120 ms mean: 60 ms slower, over 20 ms.
                + latencySeries("slow", on: [(0.04, 1_000), (0.2, 1_000)], off: usual)
                // Alike.
                + latencySeries("same", on: [(0.04, 1_000), (0.08, 1_000)], off: usual)
                // Alike, but a few requests took 12 s, above the last finite bucket (10 s).
                + latencySeries("tail", on: [(0.04, 1_000), (0.08, 1_000), (12, 3)], off: usual))
        try await waitUntil(world, "sum(increase(rollout_cohort_duration_seconds_count{feature=\"tail\",cohort=\"off\"}[10m])) > 0")

        let compare = try await runCommand(world.binary, ["compare", "slow", "--config", world.configPath])
        #expect(compare.status == 0, "\(compare.stderr)")
        #expect(compare.stdout.contains("cohort_latency: max_regression 20ms, alpha 0.05, min_requests 1000"), "\(compare.stdout)")
        // Prometheus's increase() extrapolates each series a little: about 120 ms and 60 ms.
        #expect(compare.stdout.contains(" observations, mean 12") && compare.stdout.contains(" observations, mean 6"), "\(compare.stdout)")
        #expect(compare.stdout.contains("-> regression: mean on - off in ["), "\(compare.stdout)")
        let sameJSON = try await runCommand(world.binary, ["compare", "same", "--config", world.configPath, "--json"])
        let document = (try? JSONSerialization.jsonObject(with: Data(sameJSON.stdout.utf8))) as? [String: Any] ?? [:]
        let compared = (document["checks"] as? [[String: Any]])?.first ?? [:]
        #expect(compared["verdict"] as? String == "healthy", "\(sameJSON.stdout)")
        #expect(compared["measure"] as? String == "latency")
        #expect((compared["interval"] as? [String: Any])?["unit"] as? String == "seconds")

        let run = try await world.run()
        #expect(run.status == 0, "\(run.output.stderr)")
        let slow = try #require(run.features["slow"])
        #expect(slow["decision"] as? String == "rollback", "\(slow)")
        #expect(try await world.get("flags:slow:rollout_percent") == "0")
        #expect((slow["checks"] as? [[String: Any]])?.first?["limit"] as? String == "max_regression 20ms")
        #expect(run.features["same"]?["decision"] as? String == "promote", "\(run.features["same"] ?? [:])")
        #expect(try await world.get("flags:same:rollout_percent") == "50")
        let tail = try #require(run.features["tail"])
        #expect(tail["reason"] as? String == "no_data", "\(tail)")
        #expect((tail["explanation"] as? String ?? "").contains("above the histogram's last finite bucket"), "\(tail)")
        #expect(try await world.get("flags:tail:rollout_percent") == "10")
        let lines = world.auditLines()
        #expect(lines.contains { $0.contains("  slow  10% -> 0%  reason=rollback: cohort_latency=") && $0.contains("above max_regression 20ms: a regression") }, "\(lines)")
    }

    /// Puts each feature at 10%, changed ten minutes ago (the counts since then are the step's
    /// evidence), and known to the controller.
    private func atTenPercent(_ world: ControllerWorld, _ features: [String]) async throws {
        let changed = Timestamp.now().advanced(by: .seconds(-600)).description
        for feature in features {
            _ = try await world.client.pipeline([
                RedisCommand("SET", "flags:\(feature):rollout_percent", "10"), RedisCommand("SET", "flags:\(feature):last_percent", "0"),
                RedisCommand("SET", "flags:\(feature):last_change_time", changed),
            ])
        }
        try await world.known(features)
    }

    /// Waits until Prometheus answers `query` with a sample (it scraped what the test serves).
    private func waitUntil(_ world: ControllerWorld, _ query: String) async throws {
        let prometheus = world.prometheus
        try await offThePool { try prometheus.waitForData(query, timeout: 60) }
    }
}
