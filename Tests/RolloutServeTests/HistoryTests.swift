import Foundation
import NIOHTTP1
import RolloutAudit
import RolloutController
import RolloutGate
import RolloutRedis
@testable import RolloutServe
import RolloutTestSupport
import Testing

/// A feature's percent series built from its audit records, without a server.
@Suite("A feature's history: the percent from the audit records")
struct PercentHistoryTests {
    let since = Timestamp(microsecondsSinceEpoch: 1_764_000_000_000_000)
    var until: Timestamp { since.advanced(by: .seconds(7 * 86_400)) }

    func at(_ hours: Int64) -> Timestamp { since.advanced(by: .seconds(hours * 3600)) }

    func record(_ change: String, at time: Timestamp, by: String = "controller", reason: String = "r") -> AuditRecord {
        AuditRecord(time: time, feature: "checkout", change: change, reason: reason, by: by)
    }

    func percent(_ value: String) -> RolloutPercent? { RolloutPercent(parsing: value) }

    @Test func withoutAChangeTheWindowIsFlatAtTheCurrentPercent() throws {
        let current = try #require(percent("25"))
        let points = PercentHistory.points(newestFirst: [], current: current, since: since, until: until)
        #expect(points == [PercentPointJSON(time: since, percent: current), PercentPointJSON(time: until, percent: current)])
        // Other records (a pause, an adoption) are no percent change.
        let others = [record("paused", at: at(2)), record("adopted at 25%", at: at(1)), record("guard released", at: at(3))]
        #expect(PercentHistory.points(newestFirst: others, current: percent("25"), since: since, until: until) == points)
        // No state and no change: nothing to draw.
        #expect(PercentHistory.points(newestFirst: [], current: nil, since: since, until: until).isEmpty)
    }

    @Test func eachChangeInsideTheWindowIsAPointAndItStartsAtTheFirstOnesFrom() throws {
        let newestFirst = [
            record("50% -> 10%", at: at(30), reason: "rollback: error_rate=0.2 violated"),
            record("10% -> 50%", at: at(20), reason: "healthy: 10% -> 50%"),
            record("0% -> 10%", at: at(10), by: "manual", reason: "canary"),
            // Before the window: not drawn, and not where the window starts.
            record("5% -> 0%", at: since.advanced(by: .seconds(-1))),
        ]
        let points = PercentHistory.points(newestFirst: newestFirst, current: percent("10"), since: since, until: until)
        #expect(points.map(\.percent) == [0, 10, 50, 10, 10])
        #expect(points.map(\.time) == [since, at(10), at(20), at(30), until].map(\.description))
        #expect(points.map(\.rollback) == [false, false, false, true, false])
        #expect(points.map(\.by) == [nil, "manual", "controller", "controller", nil])
        #expect(points[3].reason == "rollback: error_rate=0.2 violated" && points.first?.reason == nil && points.last?.reason == nil)
    }

    @Test func theWindowsEdgesAreInclusiveAndAnInvalidStateEndsAtTheLastChange() {
        let newestFirst = [record("25% -> 12.5%", at: until), record("0% -> 25%", at: since), record("100% -> 0%", at: until.advanced(by: .seconds(1)))]
        let points = PercentHistory.points(newestFirst: newestFirst, current: nil, since: since, until: until)
        #expect(points.map(\.percent) == [0, 25, 12.5, 12.5])
        #expect(points.map(\.rollback) == [false, false, true, false])
        #expect(points.first?.time == since.description && points.last?.time == until.description)
    }

    @Test func aForcedOrAPersonsLoweringIsARollbackAndARaiseIsNot() {
        let newestFirst = [
            record("40% -> 100%", at: at(3), by: "api:oncall"), record("50% -> 40%", at: at(2), by: "manual"),
            record("100% -> 50%", at: at(1), reason: "rollback forced by alert HighErrorBudgetBurn"),
        ]
        let points = PercentHistory.points(newestFirst: newestFirst, current: percent("100"), since: since, until: until)
        #expect(points.map(\.rollback) == [false, true, true, false, false])
        #expect(points.first?.percent == 100)
    }

    @Test func theStepKeepsAbout300PointsInWholeSeconds() {
        #expect(CheckHistory.step(from: since, to: until) == .seconds(2016))
        #expect(CheckHistory.step(from: since, to: since.advanced(by: .seconds(86_400))) == .seconds(288))
        #expect(CheckHistory.step(from: since, to: since.advanced(by: .seconds(86_401))) == .seconds(289))
        #expect(CheckHistory.step(from: since, to: since.advanced(by: .seconds(10))) == .seconds(1))
    }
}

/// Real redis-server, a real Prometheus scraping a served metric, and `rollout serve --config`.
@Suite("rollout serve: a feature's history, against redis-server and Prometheus", .tags(.redis, .e2e, .prometheus), .requiresPrometheus, .serialized)
struct HistoryEndToEndTests {
    @Test func thePercentFromTheTrailAndTheChecksFromPrometheus() async throws {
        let world = try await AlertWorld(errorRatios: ["checkout": 0.004])
        let prometheus = try #require(world.prometheus)
        try """
            prometheus: \(prometheus.url)
            audit_log: \(world.auditLogPath)
            query_timeout: 2s
            features:
              checkout:
                steps: [10, 50, 100]
                checks:
                  - {name: error_rate, query: 'max(demo_error_ratio{feature="checkout"})', max: 0.01}
                  - {name: broken, query: 'max(demo_error_ratio{feature="checkout"}', max: 0.01}
                  - {name: several, query: 'demo_error_ratio or label_replace(demo_error_ratio, "copy", "1", "", "")', max: 0.01}
                  - {name: doubled, query: 'max(demo_error_ratio{feature="checkout"}) * 2', max: 0.01, on_violation: hold}

            """.write(toFile: world.policyPath, atomically: true, encoding: .utf8)
        let environment = ["REDIS_URL": world.redis.urlString, "ROLLOUT_AUDIT_LOG": world.auditLogPath]
        for (percent, reason) in [("10", "canary"), ("50", "wider"), ("10", "back off")] {
            let result = try await runCommand(try rolloutBinary(), ["flags", "set-percent", "checkout", percent, "--reason", reason], environment: environment)
            #expect(result.status == 0, "\(result.stderr)")
        }
        // A record older than the window (its time is the writer's): not drawn.
        let old = Timestamp.now().advanced(by: .seconds(-8 * 86_400))
        _ = try await world.client.send(
            RedisCommand("XADD", ["rollout:audit", "*", "time", old.description, "feature", "checkout", "change", "100% -> 0%", "reason", "old", "by", "manual", "run", "x"]))
        let serve = try await world.serve()

        let answer = try await call(serve.base + "/v1/features/checkout/history", method: .GET)
        #expect(answer.status == 200 && answer.headers.first(name: "Content-Type") == "application/json", "\(answer.body)")
        #expect(answer.json["feature"] as? String == "checkout")
        let since = try #require((answer.json["since"] as? String).flatMap { Timestamp(parsing: $0) })
        let until = try #require((answer.json["until"] as? String).flatMap { Timestamp(parsing: $0) })
        #expect(until.duration(since: since) == .seconds(7 * 86_400))
        let percent = try #require(answer.json["percent"] as? [[String: Any]])
        #expect(percent.compactMap { $0["percent"] as? Double } == [0, 10, 50, 10, 10], "\(answer.body)")
        #expect(percent.compactMap { $0["rollback"] as? Bool } == [false, false, false, true, false])
        #expect(percent.map { $0["by"] as? String } == [nil, "manual", "manual", "manual", nil])
        #expect(percent[3]["reason"] as? String == "back off")

        let checks = try #require(answer.json["checks"] as? [[String: Any]])
        #expect(checks.compactMap { $0["name"] as? String } == ["error_rate", "broken", "several", "doubled"])
        let errorRate = checks[0]
        #expect(errorRate["error"] == nil && errorRate["query"] as? String == "max(demo_error_ratio{feature=\"checkout\"})", "\(errorRate)")
        let points = try #require(errorRate["points"] as? [[Double]])
        #expect(!points.isEmpty && points.count <= 301, "\(points.count)")
        #expect(points.allSatisfy { $0.count == 2 && $0[1] == 0.004 })
        // Prometheus keeps times to the millisecond.
        let window = (Double(since.microsecondsSinceEpoch) / 1e6 - 0.001)...(Double(until.microsecondsSinceEpoch) / 1e6 + 0.001)
        #expect(points.allSatisfy { window.contains($0[0]) }, "\(points) \(window)")
        #expect((checks[3]["points"] as? [[Double]])?.last?[1] == 0.008)
        for failed in [checks[1], checks[2]] {
            #expect((failed["points"] as? [Any])?.isEmpty == true && (failed["error"] as? String)?.isEmpty == false, "\(failed)")
        }
        #expect((checks[2]["error"] as? String)?.contains("series") == true)

        // One day: the same changes, a shorter step.
        let day = try await call(serve.base + "/v1/features/checkout/history?days=1", method: .GET)
        #expect(day.status == 200, "\(day.body)")
        #expect(((day.json["checks"] as? [[String: Any]])?.first?["points"] as? [[Double]])?.isEmpty == false)
        for bad in ["0", "31", "seven", "-1", "1.5"] {
            let refused = try await call(serve.base + "/v1/features/checkout/history?days=\(bad)", method: .GET)
            #expect(refused.status == 400 && refused.headers.first(name: "Content-Type") == "application/problem+json", "\(bad): \(refused.body)")
            #expect(refused.json["field"] as? String == "days" && refused.json["type"] as? String == "urn:rollout-gate:problem:invalid-parameter")
        }
        let unknown = try await call(serve.base + "/v1/features/nothing-here/history", method: .GET)
        #expect(unknown.status == 404 && unknown.json["type"] as? String == "urn:rollout-gate:problem:unknown-feature", "\(unknown.body)")

        // Prometheus gone: each check carries its error, and the answer stays 200.
        await prometheus.stopOffPool()
        let down = try await call(serve.base + "/v1/features/checkout/history?days=1", method: .GET)
        #expect(down.status == 200, "\(down.body)")
        let downChecks = try #require(down.json["checks"] as? [[String: Any]])
        #expect(downChecks.count == 4 && downChecks.allSatisfy { ($0["error"] as? String)?.isEmpty == false && ($0["points"] as? [Any])?.isEmpty == true })
        #expect((down.json["percent"] as? [Any])?.count == 5)

        // Without a policy: no checks.
        let folder = world.directory + "/plain"
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        let plain = try Serve(world.redis, directory: folder)
        #expect(await ready(plain))
        let bare = try await call(plain.base + "/v1/features/checkout/history", method: .GET)
        #expect(bare.status == 200 && (bare.json["checks"] as? [Any])?.isEmpty == true, "\(bare.body)")
        #expect((bare.json["percent"] as? [Any])?.count == 5)
    }
}
