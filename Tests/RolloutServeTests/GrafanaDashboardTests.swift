import Foundation
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

/// docs/grafana/rollout-gate.json, as far as the tests read it.
struct GrafanaDashboard: Decodable {
    struct DataSource: Decodable {
        let type: String?
        let uid: String?
    }
    struct Target: Decodable {
        let refId: String?
        let expr: String?
        let datasource: DataSource?
    }
    struct Panel: Decodable {
        let id: Int?
        let type: String?
        let title: String?
        let description: String?
        let datasource: DataSource?
        let targets: [Target]?
        /// A collapsed row's panels.
        let panels: [Panel]?
    }
    struct Variable: Decodable {
        let name: String
        let type: String
        let query: String?
        let datasource: DataSource?
    }
    struct Templating: Decodable {
        let list: [Variable]
    }
    let title: String?
    let uid: String?
    let schemaVersion: Int?
    let templating: Templating
    let panels: [Panel]

    static let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("docs/grafana/rollout-gate.json").path

    static func load() throws -> GrafanaDashboard {
        try JSONDecoder().decode(GrafanaDashboard.self, from: Data(contentsOf: URL(fileURLWithPath: path)))
    }

    /// Every panel, the panels of collapsed rows included.
    var allPanels: [Panel] { panels.flatMap { [$0] + ($0.panels ?? []) } }

    /// What a panel queries: each target's expression, named for a failure message.
    var queries: [(panel: String, expr: String)] {
        allPanels.flatMap { panel in
            (panel.targets ?? []).compactMap { target in
                target.expr.map { ("\(panel.title ?? "panel \(panel.id ?? 0)") [\(target.refId ?? "?")]", $0) }
            }
        }
    }

    /// The expression of the panel titled `title` (its first target).
    func expr(ofPanel title: String) -> String? {
        allPanels.first { $0.title == title }?.targets?.first?.expr
    }

    /// `expr` with Grafana's variables (`$name`, `${name}`, `[[name]]`) replaced by `values`;
    /// longer names first, so that `$__interval` never eats the start of `$__interval_ms`.
    static func substitute(_ expr: String, _ values: [String: String]) -> String {
        var text = expr
        for (name, value) in values.sorted(by: { $0.key.count > $1.key.count }) {
            text = text.replacingOccurrences(of: "${\(name)}", with: value).replacingOccurrences(of: "[[\(name)]]", with: value)
                .replacingOccurrences(of: "$\(name)", with: value)
        }
        return text
    }
}

@Suite("Grafana dashboard: the JSON's structure")
struct GrafanaDashboardStructureTests {
    @Test func everyPanelHasAnIdATitleADescriptionAndTheDatasourceVariable() throws {
        let dashboard = try GrafanaDashboard.load()
        #expect(dashboard.title?.isEmpty == false)
        #expect(dashboard.uid == "rollout-gate")
        #expect((dashboard.schemaVersion ?? 0) >= 39, "a current Grafana's schema (11.x writes 39 or later)")
        let variables = Dictionary(dashboard.templating.list.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let datasource = try #require(variables["datasource"])
        #expect(datasource.type == "datasource" && datasource.query == "prometheus")
        let feature = try #require(variables["feature"])
        #expect(feature.type == "query")
        #expect(feature.query?.hasPrefix("label_values(rollout_controller_percent, feature)") == true)
        #expect(feature.datasource?.uid == "${datasource}")

        let panels = dashboard.allPanels
        let ids = panels.compactMap(\.id)
        #expect(ids.count == panels.count, "every panel has an id")
        #expect(Set(ids).count == ids.count, "panel ids are unique: \(ids.sorted())")
        for panel in panels {
            let name = panel.title ?? "panel \(panel.id ?? 0)"
            #expect(panel.title?.isEmpty == false, "panel \(panel.id ?? 0) has a title")
            if panel.type == "row" {
                #expect(panel.targets?.isEmpty ?? true, "row \(name) queries nothing")
                continue
            }
            #expect((panel.description?.count ?? 0) > 40, "\(name) says what to look for")
            #expect(panel.datasource?.type == "prometheus" && panel.datasource?.uid == "${datasource}", "\(name): datasource")
            let targets = panel.targets ?? []
            #expect(!targets.isEmpty, "\(name) has a query")
            #expect(Set(targets.compactMap(\.refId)).count == targets.count, "\(name): refIds unique")
            for target in targets {
                #expect(target.expr?.isEmpty == false, "\(name): every target has an expr")
                #expect(target.datasource.map { $0.uid == "${datasource}" } ?? true, "\(name): the target's datasource is the variable")
            }
        }
    }

    @Test func substitutionReplacesEveryFormOfAVariable() {
        let values = ["feature": "(a|b)", "__interval": "2s", "__interval_ms": "2000", "__range": "1h"]
        #expect(GrafanaDashboard.substitute("x{f=~\"$feature\"}[$__range] ${__interval} [[feature]] $__interval_ms", values)
            == "x{f=~\"(a|b)\"}[1h] 2s (a|b) 2000")
    }
}

/// The values Grafana would give the built-in variables for a 1 h range: `$__interval` as for a
/// wide panel, `$__rate_interval` well above 4 scrape intervals of the test's Prometheus (1 s).
private let builtInVariables = [
    "__interval": "2s", "__interval_ms": "2000", "__rate_interval": "30s", "__range": "1h", "__range_s": "3600", "__range_ms": "3600000",
]

/// Prometheus's answer to an instant query: its error, or the series it returned (labels and value).
private struct InstantAnswer {
    var error: String?
    var series: [(labels: [String: String], value: String)] = []
}

private func instantQuery(_ prometheus: PrometheusServer, _ query: String) async -> InstantAnswer {
    let encoded = query.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? query
    let port = prometheus.port
    guard let (_, body) = try? await offThePool({ try httpGet(port: port, path: "/api/v1/query?query=\(encoded)") }),
        let document = (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any]
    else { return InstantAnswer(error: "no JSON answer from Prometheus") }
    guard document["status"] as? String == "success" else {
        return InstantAnswer(error: "\(document["errorType"] ?? "error"): \(document["error"] ?? body)")
    }
    let result = (document["data"] as? [String: Any])?["result"]
    // A scalar (time() - ...) comes as [time, "value"]; a vector as [{metric, value}].
    if let scalar = result as? [Any], let value = scalar.last as? String, scalar.count == 2 {
        return InstantAnswer(series: [([:], value)])
    }
    let vector = result as? [[String: Any]] ?? []
    return InstantAnswer(
        series: vector.map { ($0["metric"] as? [String: String] ?? [:], ($0["value"] as? [Any])?.last as? String ?? "") })
}

/// Each query's problem, named for its panel: it did not parse, or it returned nothing.
private func problems(_ queries: [(panel: String, expr: String)], _ prometheus: PrometheusServer) async -> (parse: [String], empty: [String]) {
    var parse: [String] = []
    var empty: [String] = []
    for (panel, expr) in queries {
        let answer = await instantQuery(prometheus, expr)
        if let error = answer.error {
            parse.append("\(panel): \(expr): \(error)")
        } else if answer.series.isEmpty {
            empty.append("\(panel): \(expr) returned nothing")
        }
    }
    return (parse, empty)
}

/// Waits until Prometheus's answer to `query` contains `expected` (it has scraped it).
private func waitForAnswer(_ prometheus: PrometheusServer, _ query: String, containing expected: String) async throws {
    let port = prometheus.port
    let encoded = query.addingPercentEncoding(withAllowedCharacters: .alphanumerics) ?? query
    let shown = await eventually(within: .seconds(60), every: .milliseconds(200)) {
        (try? await offThePool { try httpGet(port: port, path: "/api/v1/query?query=\(encoded)") })?.1.contains(expected) == true
    }
    guard shown else { throw FixtureError("Prometheus never answered \(query) with \(expected)") }
}

/// The controller's policy: each feature's check reads `fixture_error_ratio`, its traffic
/// `fixture_requests`, from the test's own /metrics endpoint.
private func policy(redis: RedisServer, prometheus: PrometheusServer, pushgateway: PushgatewayServer, directory: String) -> String {
    var yaml = """
        prometheus: \(prometheus.url)
        redis: \(redis.urlString)
        audit_log: \(directory)/rollout_log.md
        pushgateway: \(pushgateway.url)
        features:

        """
    for (feature, dwell) in [("checkout", "0s"), ("search", "1h"), ("banner", "0s")] {
        yaml += """
              \(feature):
                steps: [10, 50, 100]
                rollback_to: 10
                dwell: \(dwell)
                min_requests:
                  query: sum(fixture_requests{feature="\(feature)"})
                  at_least: 100
                checks:
                  - name: error_rate
                    query: max(fixture_error_ratio{feature="\(feature)"})
                    max: 0.01

            """
    }
    return yaml
}

/// The fixture's metrics: banner has none, so the controller holds it with no_data.
private func fixtureMetrics(searchErrorRatio: Double) -> String {
    """
    fixture_error_ratio{feature="checkout"} 0.001
    fixture_requests{feature="checkout"} 500
    fixture_error_ratio{feature="search"} \(searchErrorRatio)
    fixture_requests{feature="search"} 500

    """
}

/// Runs `rollout controller run --json`: its exit status and each feature's decision and reason.
private func controllerRun(_ configPath: String) async throws -> (status: Int32, decisions: [String: String], output: String) {
    let result = try await runCommand(try rolloutBinary(), ["controller", "run", "--config", configPath, "--json"])
    let document = (try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8))) as? [String: Any] ?? [:]
    var decisions: [String: String] = [:]
    for item in document["features"] as? [[String: Any]] ?? [] {
        if let name = item["feature"] as? String {
            decisions[name] = "\(item["decision"] as? String ?? "?") \(item["reason"] as? String ?? "")"
        }
    }
    return (result.status, decisions, result.stdout + result.stderr)
}

/// `rollout demo-service` on a free port, recording its requests in checkout's cohorts; nil
/// (with the failure recorded) when it never served /metrics.
private func startDemoService(redis: RedisServer, directory: String) async throws -> (ChildProcess, Int)? {
    for _ in 0..<3 {
        let port = try freeLoopbackPort()
        let demo = try ChildProcess(
            try rolloutBinary(), ["demo-service", "--feature", "checkout", "--port", String(port), "--load", "50", "--redis-url", redis.urlString],
            output: directory + "/demo.log")
        let up = await eventually(within: .seconds(60), every: .milliseconds(100)) {
            if demo.hasExited() { return true }
            return (try? await offThePool { try httpGet(port: port, path: "/metrics") })?.0 == 200
        }
        if up && !demo.hasExited() { return (demo, port) }
    }
    Issue.record("rollout demo-service did not start: \((try? String(contentsOfFile: directory + "/demo.log", encoding: .utf8)) ?? "")")
    return nil
}

@Suite(
    "Grafana dashboard: every query against a real Prometheus that scraped rollout serve, a demo service and the Pushgateway",
    .tags(.e2e, .prometheus, .redis), .requiresPrometheus, .serialized)
struct GrafanaDashboardTests {
    @Test func everyPanelsQueryParsesAndReturnsSeries() async throws {
        let dashboard = try GrafanaDashboard.load()
        let redis = try await RedisServer.start()
        let admin = RedisClient(url: redis.url())
        defer { admin.close() }
        let justNow = Timestamp.now().description
        _ = try await admin.pipeline([
            RedisCommand("SET", "flags:checkout:rollout_percent", "10"), RedisCommand("SET", "flags:checkout:controller_percent", "10"),
            RedisCommand("SET", "flags:search:rollout_percent", "50"), RedisCommand("SET", "flags:search:controller_percent", "50"),
            RedisCommand("SET", "flags:search:last_percent", "10"), RedisCommand("SET", "flags:search:last_change_time", justNow),
            RedisCommand("SET", "flags:banner:controller_percent", "0"),
            // Not the controller's: only the gate sees it, and counts it invalid.
            RedisCommand("SET", "flags:broken:rollout_percent", "fifty"),
        ])
        let directory = try makeTemporaryDirectory("grafana")
        defer { try? FileManager.default.removeItem(atPath: directory) }

        let serve = try Serve(redis, directory: directory)
        try #require(await ready(serve))
        let (demo, demoPort) = try #require(try await startDemoService(redis: redis, directory: directory))
        defer { demo.terminate(SIGTERM) }
        // The new code path fails a fifth of its requests: the on cohort has failures.
        #expect(try await offThePool { try httpRequest(port: demoPort, method: "POST", path: "/faults?error_rate=0.2") }.0 == 200)
        let fixture = try MetricsEndpoint()
        fixture.set(fixtureMetrics(searchErrorRatio: 0.001))
        let pushgateway = try await offThePool { try PushgatewayServer() }
        let servePort = serve.port
        let prometheus = try await offThePool {
            try PrometheusServer(scraping: [fixture.port, servePort, demoPort], pushgateways: [pushgateway.port])
        }
        let configPath = directory + "/rollout.yaml"
        try policy(redis: redis, prometheus: prometheus, pushgateway: pushgateway, directory: directory)
            .write(toFile: configPath, atomically: true, encoding: .utf8)
        try await waitForAnswer(prometheus, "max(fixture_error_ratio{feature=\"search\"})", containing: "\"0.001\"")

        // Run 1: checkout promoted, search held in its dwell, banner held without data.
        let first = try await controllerRun(configPath)
        #expect(first.status == 0, "\(first.output)")
        #expect(first.decisions["checkout"]?.hasPrefix("promote") == true, "\(first.output)")
        #expect(first.decisions["search"] == "hold dwell", "\(first.output)")
        #expect(first.decisions["banner"] == "hold no_data", "\(first.output)")
        try await waitForAnswer(prometheus, "rollout_controller_percent{feature=\"search\",job=\"rollout_controller\"}", containing: "\"50\"")

        // Run 2, after search's errors rose: search rolled back from 50 to 10.
        fixture.set(fixtureMetrics(searchErrorRatio: 0.2))
        try await waitForAnswer(prometheus, "max(fixture_error_ratio{feature=\"search\"})", containing: "\"0.2\"")
        let second = try await controllerRun(configPath)
        #expect(second.status == 0, "\(second.output)")
        #expect(second.decisions["search"]?.hasPrefix("rollback") == true, "\(second.output)")
        #expect(second.decisions["checkout"]?.hasPrefix("promote") == true, "\(second.output)")
        try await waitForAnswer(prometheus, "rollout_controller_percent{feature=\"search\"}", containing: "\"10\"")

        // OFREP traffic: answers, a bulk evaluation, an unknown flag, the broken feature.
        for index in 0..<20 { _ = try await call(serve.base + "/ofrep/v1/evaluate/flags/checkout", body: context("user-\(index)")) }
        _ = try await call(serve.base + "/ofrep/v1/evaluate/flags", body: context("user-1"))
        _ = try await call(serve.base + "/ofrep/v1/evaluate/flags/nothing-here", body: context("user-1"))
        _ = try await call(serve.base + "/ofrep/v1/evaluate/flags/broken", body: context("user-1"))

        // $feature as Grafana sends "All": the label's values, as a regular expression.
        let featureValues = try await offThePool {
            try httpGet(port: prometheus.port, path: "/api/v1/label/feature/values?match%5B%5D=rollout_controller_percent")
        }.1
        let features = ((try? JSONSerialization.jsonObject(with: Data(featureValues.utf8))) as? [String: Any])?["data"] as? [String] ?? []
        #expect(features.sorted() == ["banner", "checkout", "search"], "label_values(rollout_controller_percent, feature): \(featureValues)")
        var values = builtInVariables
        values["feature"] = "(" + features.sorted().joined(separator: "|") + ")"
        let queries = dashboard.queries.map { ($0.panel, GrafanaDashboard.substitute($0.expr, values)) }
        #expect(queries.count >= 15)
        for (panel, expr) in queries { #expect(!expr.contains("$"), "\(panel): a variable left in \(expr)") }

        // Every query parses, and returns series once Prometheus has scraped what it reads (a
        // rate needs two scrapes in its window); the requests keep the OFREP rates above zero.
        // One that does not parse never will, but the wait goes on for the others, so that the
        // failure names only the queries that return nothing once everything was scraped.
        var found: (parse: [String], empty: [String]) = ([], [])
        let answered = await eventually(within: .seconds(90), every: .milliseconds(500)) {
            _ = try? await call(serve.base + "/ofrep/v1/evaluate/flags/checkout", body: context("user-live"))
            found = await problems(queries, prometheus)
            return found.empty.isEmpty
        }
        #expect(found.parse.isEmpty, "queries that do not parse:\n\(found.parse.joined(separator: "\n"))")
        #expect(answered && found.empty.isEmpty, "queries that return nothing:\n\(found.empty.joined(separator: "\n"))")

        // The rollback and the hold show where an on-call engineer looks for them.
        let drops = await instantQuery(
            prometheus, GrafanaDashboard.substitute(try #require(dashboard.expr(ofPanel: "Percent drops in the time range")), values))
        #expect(drops.series.first { $0.labels["feature"] == "search" }?.value == "1", "\(drops.series)")
        #expect(drops.series.first { $0.labels["feature"] == "checkout" }?.value == "0", "\(drops.series)")
        let rollbacks = await instantQuery(
            prometheus, GrafanaDashboard.substitute(try #require(dashboard.expr(ofPanel: "Rollbacks (the last run's decision)")), values))
        #expect(rollbacks.series.first { $0.labels["feature"] == "search" }?.value == "1", "\(rollbacks.series)")
        let holds = await instantQuery(
            prometheus, GrafanaDashboard.substitute(try #require(dashboard.expr(ofPanel: "Features on hold now")), values))
        #expect(holds.series.map { $0.labels } == [["feature": "banner", "reason": "no_data"]], "\(holds.series)")
        let invalid = await instantQuery(
            prometheus, GrafanaDashboard.substitute(try #require(dashboard.expr(ofPanel: "Features whose keys stopped parsing")), values))
        #expect(invalid.series.contains { $0.labels["feature"] == "broken" }, "\(invalid.series)")
    }
}
