import Foundation
import RolloutAdmin
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

/// Real redis-server, a /metrics endpoint the test controls, a real Prometheus scraping it
/// every second, and the `rollout` binary.
final class ControllerWorld: @unchecked Sendable {
    // @unchecked: used by one test at a time.
    let redis: RedisServer
    let metrics: MetricsEndpoint
    let prometheus: PrometheusServer
    let directory: String
    let binary: String
    let client: RedisClient
    private var series: [String: String] = [:]

    /// Starts everything off the cooperative pool (Prometheus takes seconds to scrape first).
    static func make() async throws -> ControllerWorld {
        try await offThePool { try ControllerWorld() }
    }

    private init() throws {
        redis = try RedisServer()
        metrics = try MetricsEndpoint()
        metrics.set("demo_up 1\n")
        prometheus = try PrometheusServer(scraping: [metrics.port])
        directory = try makeTemporaryDirectory("controller")
        binary = try rolloutBinary()
        client = RedisClient(url: redis.url())
        try prometheus.waitForData("demo_up")
    }

    deinit { client.close() }

    var auditLogPath: String { directory + "/rollout_log.md" }
    var configPath: String { directory + "/rollout.yaml" }

    /// Writes the policy: each feature's checks read demo_error_ratio and demo_latency_p95,
    /// its traffic demo_requests, all labelled with the feature.
    /// `checks` replaces the two default checks (a YAML list, `{feature}` standing for the
    /// feature's name); `top` adds top-level keys.
    func writePolicy(
        _ features: [(name: String, extra: String)], queryTimeout: String = "2s", prometheusURL: String? = nil, pushgateway: String? = nil,
        checks: String? = nil, top: String = "", rollbackTo: String = "10", redisURL: String? = nil
    ) throws {
        var yaml = "prometheus: \(prometheusURL ?? prometheus.url)\nredis: \(redisURL ?? redis.urlString)\naudit_log: \(auditLogPath)\nquery_timeout: \(queryTimeout)\n"
        if let pushgateway { yaml += "pushgateway: \(pushgateway)\n" }
        yaml += top.isEmpty ? "" : top + "\n"
        yaml += "features:\n"
        for (name, extra) in features {
            yaml += """
                  \(name):
                    steps: [10, 50, 100]
                    rollback_to: \(rollbackTo)
                    min_requests:
                      query: sum(demo_requests{feature="\(name)"})
                      at_least: 100
                    checks:
                \((checks ?? defaultChecks).replacingOccurrences(of: "{feature}", with: name).split(separator: "\n").map { "      " + $0 }.joined(separator: "\n"))
                \(extra.split(separator: "\n").map { "    " + $0 }.joined(separator: "\n"))

                """
        }
        try yaml.write(toFile: configPath, atomically: true, encoding: .utf8)
    }

    let defaultChecks = """
        - name: error_rate
          query: max(demo_error_ratio{feature="{feature}"})
          max: 0.01
        - name: latency_p95
          query: max(demo_latency_p95{feature="{feature}"})
          max: 0.5
        """

    /// Serves the feature's metrics (nil leaves a series out: Prometheus then has no data)
    /// and waits until Prometheus has scraped them.
    func serve(_ feature: String, errorRatio: Double?, latency: Double? = 0.1, requests: Double? = 500) async throws {
        func line(_ metric: String, _ value: Double?) -> String {
            guard let value else { return "" }
            return "\(metric){feature=\"\(feature)\"} \(value.isNaN ? "NaN" : String(value))\n"
        }
        series[feature] = line("demo_error_ratio", errorRatio) + line("demo_latency_p95", latency) + line("demo_requests", requests)
        metrics.set("demo_up 1\n" + series.values.sorted().joined())
        if let errorRatio {
            try await waitForValue("max(demo_error_ratio{feature=\"\(feature)\"})", errorRatio)
        } else {
            try await waitForAnswer(to: "demo_error_ratio{feature=\"\(feature)\"}", containing: "\"result\":[]")
        }
        if let latency { try await waitForValue("max(demo_latency_p95{feature=\"\(feature)\"})", latency) }
    }

    private func waitForValue(_ query: String, _ value: Double) async throws {
        let expected = value.isNaN ? "\"NaN\"" : "\"\(value == value.rounded() ? String(Int(value)) : String(value))\""
        try await waitForAnswer(to: query, containing: expected)
    }

    /// Waits until Prometheus's answer to `query` contains `expected` (it has scraped the series).
    private func waitForAnswer(to query: String, containing expected: String) async throws {
        let encoded = query.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? query
        let port = prometheus.port
        let shown = await eventually(within: .seconds(60), every: .milliseconds(100)) {
            (try? await offThePool { try httpGet(port: port, path: "/api/v1/query?query=\(encoded)") })?.1.contains(expected) == true
        }
        guard shown else { throw FixtureError("Prometheus never answered \(query) with \(expected)") }
    }

    /// Runs `rollout controller run --json` and returns its exit status and features by name.
    func run(_ extra: String..., environment: [String: String] = [:]) async throws -> (status: Int32, features: [String: [String: Any]], output: CommandResult) {
        let result = try await runCommand(binary, ["controller", "run", "--config", configPath, "--json"] + extra, environment: environment)
        let document = (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [String: Any] ?? [:]
        var features: [String: [String: Any]] = [:]
        for item in document["features"] as? [[String: Any]] ?? [] {
            if let name = item["feature"] as? String { features[name] = item }
        }
        return (result.status, features, result)
    }

    func get(_ key: String) async throws -> String? { try await client.send("GET", key).string }

    func auditLines() -> [String] {
        ((try? String(contentsOfFile: auditLogPath, encoding: .utf8)) ?? "").split(separator: "\n").filter { $0.hasPrefix("20") }.map { withoutRecordID(String($0)) }
    }
}

@Suite("Controller end to end: redis-server, Prometheus, the rollout binary", .tags(.e2e, .prometheus, .redis), .requiresPrometheus)
struct ControllerEndToEndTests {
    @Test func healthyChainThenSpikeRollsBackAtOnceThenCoolsDown() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("chain", "dwell: 0s\ncooldown_after_rollback: 1h")])
        try await world.known(["chain"])
        try await world.serve("chain", errorRatio: 0.001)
        for (from, to) in [("0", "10"), ("10", "50"), ("50", "100")] {
            let run = try await world.run()
            #expect(run.status == 0, "\(run.output.stderr)")
            #expect(run.features["chain"]?["decision"] as? String == "promote")
            #expect(run.features["chain"]?["from"] as? String == from)
            #expect(try await world.get("flags:chain:rollout_percent") == to)
            #expect(try await world.get("flags:chain:controller_percent") == to)
        }
        let top = try await world.run()
        #expect(top.features["chain"]?["reason"] as? String == "at_last_step")

        try await world.serve("chain", errorRatio: 0.2)
        let spike = try await world.run()
        #expect(spike.status == 0)
        #expect(spike.features["chain"]?["decision"] as? String == "rollback")
        #expect(try await world.get("flags:chain:rollout_percent") == "10")
        #expect(try await world.get("flags:chain:last_percent") == "100")

        try await world.serve("chain", errorRatio: 0.001)
        let after = try await world.run()
        #expect(after.features["chain"]?["reason"] as? String == "cooldown")
        let lines = world.auditLines()
        #expect(lines.count == 4)
        #expect(lines[0].contains("  chain  0% -> 10%  reason=healthy: 0% -> 10%  by=controller"))
        #expect(lines[3].contains("  chain  100% -> 10%  reason=rollback: error_rate=0.2 violated"))
        #expect(lines.allSatisfy { $0.hasSuffix("by=controller") })
    }

    @Test func rollbackInsideTheDwellAndEveryHoldReason() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([
            ("spike", "dwell: 1h"), ("nodata", "dwell: 0s"), ("nan", "dwell: 0s"), ("quiet", "dwell: 0s"), ("paused", "dwell: 0s"),
            ("dwelling", "dwell: 1h"),
        ])
        let justNow = Timestamp.now().description
        _ = try await world.client.pipeline([
            RedisCommand("SET", "flags:spike:rollout_percent", "50"), RedisCommand("SET", "flags:spike:last_change_time", justNow),
            RedisCommand("SET", "flags:spike:last_percent", "10"),
            RedisCommand("SET", "flags:paused:paused", "true"),
            RedisCommand("SET", "flags:dwelling:rollout_percent", "10"), RedisCommand("SET", "flags:dwelling:last_change_time", justNow),
        ])
        try await world.known(["spike", "nodata", "nan", "quiet", "paused", "dwelling"])
        try await world.serve("spike", errorRatio: 0.5)
        try await world.serve("nodata", errorRatio: nil)
        try await world.serve("nan", errorRatio: .nan)
        try await world.serve("quiet", errorRatio: 0.001, requests: 3)
        try await world.serve("paused", errorRatio: 0.001)
        try await world.serve("dwelling", errorRatio: 0.001)
        let run = try await world.run()
        #expect(run.status == 0, "\(run.output.stderr)")
        #expect(run.features["spike"]?["decision"] as? String == "rollback")
        #expect(try await world.get("flags:spike:rollout_percent") == "10")
        #expect(run.features["nodata"]?["reason"] as? String == "no_data")
        #expect(run.features["nan"]?["reason"] as? String == "no_data")
        #expect(run.features["quiet"]?["reason"] as? String == "insufficient_sample")
        #expect(run.features["paused"]?["reason"] as? String == "paused")
        #expect(run.features["dwelling"]?["reason"] as? String == "dwell")
        for feature in ["nodata", "nan", "quiet", "paused"] {
            #expect(try await world.get("flags:\(feature):rollout_percent") == nil)
        }
        #expect(try await world.get("flags:dwelling:rollout_percent") == "10")
        #expect(world.auditLines().count == 1)
    }

    @Test func eachEvaluationLeavesItsVerdictAndAFailedRunLeavesTheLastOne() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("verdict", "dwell: 1h")], queryTimeout: "1s")
        _ = try await world.client.pipeline([
            RedisCommand("SET", "flags:verdict:rollout_percent", "10"), RedisCommand("SET", "flags:verdict:last_change_time", Timestamp.now().description),
        ])
        try await world.known(["verdict"])
        try await world.serve("verdict", errorRatio: 0.001)
        /// The key, split: result, time (as parsed), reason.
        func lastVerdict() async throws -> (String, Timestamp?, String)? {
            guard let value = try await world.get("flags:verdict:last_verdict") else { return nil }
            let parts = value.split(separator: " ", maxSplits: 2).map(String.init)
            guard parts.count == 3 else { return nil }
            return (parts[0], Timestamp(parsing: parts[1]), parts[2])
        }
        #expect(try await lastVerdict() == nil)

        let before = Timestamp.now()
        let held = try await world.run()
        #expect(held.features["verdict"]?["reason"] as? String == "dwell", "\(held.output.stderr)")
        let hold = try #require(try await lastVerdict())
        #expect(hold.0 == "hold" && hold.2 == "dwell")
        let holdTime = try #require(hold.1)
        #expect(holdTime >= before && holdTime <= Timestamp.now())
        #expect(try await world.get("flags:verdict:lock") == nil)

        try world.writePolicy([("verdict", "dwell: 0s")], queryTimeout: "1s")
        let promoted = try await world.run()
        #expect(promoted.features["verdict"]?["decision"] as? String == "promote", "\(promoted.output.stderr)")
        let promotion = try #require(try await lastVerdict())
        #expect(promotion.0 == "promote" && promotion.2 == "healthy")
        #expect(try #require(promotion.1) > holdTime)

        try await world.serve("verdict", errorRatio: 0.2)
        let rolledBack = try await world.run()
        #expect(rolledBack.features["verdict"]?["decision"] as? String == "rollback", "\(rolledBack.output.stderr)")
        let rollback = try #require(try await lastVerdict())
        #expect(rollback.0 == "rollback" && rollback.2 == "error_rate")
        let stored = try await world.get("flags:verdict:last_verdict")

        // A failed run writes nothing: the last verdict stays.
        await world.prometheus.stopOffPool()
        let failed = try await world.run()
        #expect(failed.status == 1 && failed.features["verdict"]?["reason"] as? String == "prom_unreachable")
        #expect(try await world.get("flags:verdict:last_verdict") == stored)
        // It is a controller key: `rollout flags get` lists it.
        let get = try await runCommand(world.binary, ["flags", "get", "verdict"], environment: ["REDIS_URL": world.redis.urlString])
        #expect(get.stdout.contains("last_verdict") && get.stdout.contains("rollback "), "\(get.stdout)\(get.stderr)")
    }

    @Test func aNegativeErrorRateFromPrometheusHoldsWithInvalidDataAndWritesNothing() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("negative", "dwell: 0s")])
        _ = try await world.client.pipeline([
            RedisCommand("SET", "flags:negative:rollout_percent", "50"), RedisCommand("SET", "flags:negative:controller_percent", "50"),
        ])
        try await world.serve("negative", errorRatio: -0.5)
        let run = try await world.run()
        #expect(run.status == 0, "\(run.output.stderr)")
        let feature = try #require(run.features["negative"], "\(run.output.stdout)")
        #expect(feature["decision"] as? String == "hold")
        #expect(feature["reason"] as? String == "invalid_data")
        #expect((feature["explanation"] as? String)?.contains("error_rate=-0.5") == true, "\(feature)")
        let checks = feature["checks"] as? [[String: Any]] ?? []
        #expect(checks.first { $0["name"] as? String == "error_rate" }?["status"] as? String == "invalid_data", "\(checks)")
        #expect(try await world.get("flags:negative:rollout_percent") == "50")
        #expect(try await world.get("flags:negative:last_change_time") == nil)
        #expect(try await world.get("flags:negative:healthy_since") == nil)
        #expect(world.auditLines().isEmpty)
    }

    @Test func prometheusDownOrSlowChangesNothingAndExitsOne() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("steady", "dwell: 0s")], queryTimeout: "1s")
        try await world.serve("steady", errorRatio: 0.001)
        await world.prometheus.stopOffPool()
        let down = try await world.run()
        #expect(down.status == 1)
        #expect(down.features["steady"]?["reason"] as? String == "prom_unreachable")
        #expect(try await world.get("flags:steady:rollout_percent") == nil)

        let silent = try SilentServer()
        try world.writePolicy([("steady", "dwell: 0s")], queryTimeout: "1s", prometheusURL: "http://127.0.0.1:\(silent.port)")
        let slow = try await world.run()
        #expect(slow.status == 1)
        #expect(slow.features["steady"]?["reason"] as? String == "prom_unreachable")
        #expect((slow.features["steady"]?["query_errors"] as? [String])?.contains { $0.contains("did not answer within") } == true)
        #expect(try await world.get("flags:steady:rollout_percent") == nil)
        #expect(world.auditLines().isEmpty)
    }

    @Test func tenControllersAtOnceMakeExactlyOneChange() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("race", "dwell: 1h")])
        try await world.known(["race"])
        try await world.serve("race", errorRatio: 0.001)
        let processes = try (0..<10).map { index in
            try ChildProcess(
                world.binary, ["controller", "run", "--config", world.configPath, "--json"], stdout: world.directory + "/out\(index).json",
                stderr: world.directory + "/err\(index).txt")
        }
        var statuses: [Int32] = []
        for process in processes { statuses.append(await process.exitStatus()) }
        #expect(statuses.allSatisfy { $0 == 0 })
        #expect(try await world.get("flags:race:rollout_percent") == "10")
        #expect(world.auditLines().count == 1)
        var reasons: [String] = []
        for index in 0..<10 {
            let data = FileManager.default.contents(atPath: world.directory + "/out\(index).json") ?? Data()
            let document = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any]
            let feature = (document?["features"] as? [[String: Any]])?.first
            reasons.append((feature?["decision"] as? String == "promote" ? "promote" : feature?["reason"] as? String) ?? "?")
        }
        #expect(reasons.filter { $0 == "promote" }.count == 1, "\(reasons)")
        #expect(reasons.allSatisfy { ["promote", "locked", "dwell", "concurrent_change"].contains($0) }, "\(reasons)")
        #expect(try await world.get("flags:race:lock") == nil)
    }

    @Test func manualChangeIsDetectedOnceAndRestartsTheDwell() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("manual", "dwell: 1h")])
        try await world.known(["manual"])
        try await world.serve("manual", errorRatio: 0.001)
        _ = try await world.run()
        #expect(try await world.get("flags:manual:controller_percent") == "10")
        _ = try await world.client.send("SET", "flags:manual:rollout_percent", "25")  // redis-cli by a person
        let detected = try await world.run()
        #expect(detected.features["manual"]?["reason"] as? String == "dwell")
        #expect(detected.features["manual"]?["manual_change_detected"] as? Bool == true)
        #expect(try await world.get("flags:manual:rollout_percent") == "25")
        #expect(try await world.get("flags:manual:controller_percent") == "25")
        let again = try await world.run()
        #expect(again.features["manual"]?["manual_change_detected"] as? Bool == false)
        let manualLines = world.auditLines().filter { $0.contains("by=manual-detected") }
        #expect(manualLines.count == 1)
        #expect(manualLines.first?.contains("  manual  10% -> 25%  ") == true)
    }

    @Test func corruptStateStopsWithExitThreeNamingTheKey() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("broken", "dwell: 0s"), ("fine", "dwell: 0s")])
        _ = try await world.client.pipeline([
            RedisCommand("SET", "flags:broken:rollout_percent", "10"), RedisCommand("SET", "flags:broken:last_change_time", "last tuesday"),
        ])
        try await world.serve("broken", errorRatio: 0.001)
        try await world.serve("fine", errorRatio: 0.001)
        try await world.known(["broken", "fine"])
        let run = try await world.run()
        #expect(run.status == 3)
        #expect(run.features["broken"]?["reason"] as? String == "corrupt_state")
        #expect((run.features["broken"]?["explanation"] as? String)?.contains("flags:broken:last_change_time") == true)
        #expect(try await world.get("flags:broken:rollout_percent") == "10")
        #expect(run.features["fine"]?["decision"] as? String == "promote")
    }

    @Test func aKeyOfTheWrongTypeHoldsWithCorruptStateAndWritesNothing() async throws {
        let world = try await ControllerWorld.make()
        let wrong: [(feature: String, suffix: String, type: RedisKeyType, value: String)] = [
            ("wt-change", "last_change_time", .zset, "2025-10-08T15:30:00Z"), ("wt-percent", "controller_percent", .list, "10"),
            ("wt-healthy", "healthy_since", .hash, "2025-10-08T15:30:00Z"), ("wt-streaks", "streaks", .string, "error_rate"),
            ("wt-guard", "guard", .set, "operator 2025-10-08T15:30:00Z hold"),
        ]
        try world.writePolicy((wrong.map(\.feature) + ["fine"]).map { ($0, "dwell: 0s") })
        for (feature, suffix, type, value) in wrong {
            _ = try await world.client.pipeline([
                RedisCommand("SET", "flags:\(feature):rollout_percent", "10"), RedisCommand("SET", "flags:\(feature):internal_only", "false"),
                type.write("flags:\(feature):\(suffix)", value),
            ])
            try await world.serve(feature, errorRatio: 0.001)
        }
        try await world.serve("fine", errorRatio: 0.001)
        try await world.known(["fine"])
        /// Every key of the feature, each with its serialized value and TTL.
        func everyKey(_ feature: String) async throws -> [String: [RedisValue]] {
            let keys = try await world.client.send("KEYS", "flags:\(feature):*").array?.compactMap(\.string) ?? []
            var dump: [String: [RedisValue]] = [:]
            for key in keys { dump[key] = try await world.client.pipeline([RedisCommand("DUMP", key), RedisCommand("PTTL", key)]) }
            return dump
        }
        var before: [String: [String: [RedisValue]]] = [:]
        for (feature, _, _, _) in wrong { before[feature] = try await everyKey(feature) }
        let run = try await world.run()
        #expect(run.status == 3)
        for (feature, suffix, type, _) in wrong {
            let key = "flags:\(feature):\(suffix)"
            #expect(run.features[feature]?["reason"] as? String == "corrupt_state", "\(suffix) as a \(type)")
            #expect((run.features[feature]?["explanation"] as? String)?.contains("\(key) holds another Redis type") == true, "\(suffix) as a \(type)")
            #expect(try await everyKey(feature) == before[feature], "\(suffix) as a \(type): a key was written")
        }
        #expect(run.features["fine"]?["decision"] as? String == "promote")
        #expect(world.auditLines().allSatisfy { $0.contains("  fine  ") })
    }

    @Test func telemetryReachesThePushgatewayAndItsFailureOnlyWarns() async throws {
        let world = try await ControllerWorld.make()
        let pushgateway = try await offThePool { try PushgatewayServer() }
        try world.writePolicy([("pushed", "dwell: 1h"), ("silent", "dwell: 0s")], pushgateway: pushgateway.url)
        try await world.known(["pushed", "silent"])
        try await world.serve("pushed", errorRatio: 0.001)
        try await world.serve("silent", errorRatio: nil)
        #expect(try await world.run().status == 0)
        #expect(try await world.run().status == 0)
        let text = try pushgateway.metrics()
        func line(_ prefix: String) -> String? {
            text.split(separator: "\n").first { $0.hasPrefix(prefix) }.map(String.init)
        }
        #expect(line("rollout_controller_percent{feature=\"pushed\"")?.hasSuffix(" 10") == true)
        #expect(line("rollout_controller_decision{feature=\"pushed\",instance=\"\",job=\"rollout_controller\",result=\"hold\"}")?.hasSuffix(" 1") == true)
        #expect(line("rollout_controller_hold{feature=\"pushed\",instance=\"\",job=\"rollout_controller\",reason=\"dwell\"}") != nil)
        #expect(line("rollout_controller_hold{feature=\"silent\",instance=\"\",job=\"rollout_controller\",reason=\"no_data\"}") != nil)
        #expect(line("rollout_controller_runs_total{instance=\"\",job=\"rollout_controller\",status=\"ok\"}")?.hasSuffix(" 2") == true)
        #expect(text.contains("# TYPE rollout_controller_runs_total counter"))
        #expect(line("rollout_controller_last_run_timestamp_seconds") != nil)

        // A Pushgateway that is gone: the run still decides and exits 0.
        let gone = try freeLoopbackPort()
        try world.writePolicy([("pushed", "dwell: 1h")], pushgateway: "http://127.0.0.1:\(gone)")
        let run = try await world.run()
        #expect(run.status == 0)
        #expect(run.output.stderr.contains("Could not push telemetry"))
    }

    @Test func everyKeepsRunningAsAWorker() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("worker", "dwell: 0s")])
        try await world.known(["worker"])
        try await world.serve("worker", errorRatio: 0.001)
        let worker = try ChildProcess(
            world.binary, ["controller", "run", "--config", world.configPath, "--every", "1s"], stdout: world.directory + "/worker.txt",
            stderr: world.directory + "/worker.err")
        _ = await eventually(within: .seconds(60), every: .milliseconds(200)) {
            (try? await world.get("flags:worker:rollout_percent")) == "100"
        }
        #expect(!worker.hasExited())
        await worker.terminateOffPool(SIGTERM)
        #expect(try await world.get("flags:worker:rollout_percent") == "100")
        #expect(world.auditLines().count == 3)
    }

    @Test func aRedisCliChangeDuringARunWins() async throws {
        let world = try await ControllerWorld.make()
        try await world.serve("during", errorRatio: 0.001)
        // Prometheus answers after 3 s: the person's change lands while the run waits for it.
        let slow = try SlowProxy(to: world.prometheus.port, delay: .seconds(3))
        try world.writePolicy([("during", "dwell: 0s")], queryTimeout: "10s", prometheusURL: slow.url)
        try await world.known(["during"], at: "10")
        async let run = world.run()
        // The run has read the feature and waits for Prometheus (held back 3 s).
        try #require(await eventually(within: .seconds(60)) { slow.requestsSeen > 0 })
        _ = try await world.client.send("SET", "flags:during:rollout_percent", "0")  // redis-cli, by a person
        let result = try await run
        #expect(result.status == 0)
        // The person's change wins: caught by the compare-and-set, or (when a busy machine makes
        // the run read after it) seen as a manual change. Never written over.
        let reason = result.features["during"]?["reason"] as? String
        #expect(reason == "concurrent_change" || reason == "dwell", "\(result.output.stdout)")
        #expect(try await world.get("flags:during:rollout_percent") == "0")
        #expect(world.auditLines().allSatisfy { $0.contains("by=manual-detected") })
    }

    @Test func redisStoppedMidRunExitsOneAndWritesNothing() async throws {
        let world = try await ControllerWorld.make()
        try await world.serve("midrun", errorRatio: 0.001)
        let slow = try SlowProxy(to: world.prometheus.port, delay: .seconds(3))
        try world.writePolicy([("midrun", "dwell: 0s")], queryTimeout: "10s", prometheusURL: slow.url)
        async let run = world.run()
        try #require(await eventually(within: .seconds(60)) { slow.requestsSeen > 0 })
        await world.redis.stopOffPool()
        let result = try await run
        #expect(result.status == 1)
        #expect(result.features["midrun"]?["reason"] as? String == "redis_error")
        #expect(world.auditLines().isEmpty)
    }

    @Test func redisDownExitsOne() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("gone", "dwell: 0s")])
        try await world.serve("gone", errorRatio: 0.001)
        await world.redis.stopOffPool()
        let run = try await world.run()
        #expect(run.status == 1)
        #expect(run.features["gone"]?["reason"] as? String == "redis_error")
    }

    @Test func dryRunWritesNothingButTheAuditLog() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("dry", "dwell: 0s")])
        try await world.known(["dry"])
        try await world.serve("dry", errorRatio: 0.001)
        let flag = try await world.run("--dry-run")
        #expect(flag.status == 0)
        #expect(flag.features["dry"]?["decision"] as? String == "promote")
        #expect(flag.features["dry"]?["applied"] as? Bool == false)
        let environment = try await world.run(environment: ["ROLLOUT_DRY_RUN": "true"])
        #expect(environment.features["dry"]?["applied"] as? Bool == false)
        #expect(try await world.client.send("KEYS", "flags:dry:*") == .array([.bulkString(Array("flags:dry:controller_percent".utf8))]))
        let lines = world.auditLines()
        #expect(lines.count == 2)
        #expect(lines.allSatisfy { $0.contains("  dry  [dry-run] 0% -> 10%  ") })
    }

    @Test func invalidPolicyExitsTwoBeforeAnyWrite() async throws {
        let world = try await ControllerWorld.make()
        try "prometheus: \(world.prometheus.url)\nredis: \(world.redis.urlString)\nfeatures:\n  google:\n    steps: [50, 10]\n    checks: []\n"
            .write(toFile: world.configPath, atomically: true, encoding: .utf8)
        let run = try await world.run()
        #expect(run.status == 2)
        #expect(run.output.stderr.contains("features.google.steps[1]"))
        #expect(run.output.stderr.contains("features.google.checks"))
        #expect(try await world.client.send("DBSIZE") == .integer(0))
        let validate = try await runCommand(world.binary, ["controller", "validate", "--config", world.configPath])
        #expect(validate.status == 2)
    }

    @Test func validateOnlineAsksPrometheus() async throws {
        let world = try await ControllerWorld.make()
        try world.writePolicy([("valid", "dwell: 0s")])
        let good = try await runCommand(world.binary, ["controller", "validate", "--config", world.configPath, "--online"])
        #expect(good.status == 0, "\(good.stdout)\(good.stderr)")
        #expect(good.stdout.contains("valid.error_rate: accepted"))
        var yaml = try String(contentsOfFile: world.configPath, encoding: .utf8)
        yaml = yaml.replacingOccurrences(of: "max(demo_latency_p95{feature=\"valid\"})", with: "sum(rate(demo_up[5m])")
        try yaml.write(toFile: world.configPath, atomically: true, encoding: .utf8)
        let bad = try await runCommand(world.binary, ["controller", "validate", "--config", world.configPath, "--online"])
        #expect(bad.status == 2, "\(bad.stdout)")
        #expect(bad.stdout.contains("valid.latency_p95: Prometheus refused the query"))
    }
}
