import Foundation
import RolloutAdmin
import RolloutController
import RolloutGate
import Testing

private func percent(_ text: String) -> RolloutPercent { RolloutPercent(parsing: text) ?? .zero }

/// A file without any safety key behaves as before: the defaults are the issue's.
let safetyYAML = """
    prometheus: http://127.0.0.1:9090
    freeze:
      - {from: "Fri 12:00", to: "Mon 08:00", time_zone: Europe/Paris}
    environments:
      staging:
        prometheus: http://staging-prometheus:9090
        features:
          checkout:
            dwell: 1m
    features:
      checkout:
        steps: [10, 50, 100]
        rollback_to: last_good
        guard_window: 30m
        stability_window: 10m
        max_rollbacks_per_hour: 2
        freeze:
          - {from: "22:00", to: "06:00", time_zone: UTC}
        checks:
          - name: errors
            type: burn_rate
            query: sum(rate(errors_total[$window])) / sum(rate(requests_total[$window]))
            slo: 0.999
          - name: latency
            query: max(latency_p95)
            max: 0.5
            consecutive: 3
            on_violation: hold
        environments:
          production:
            dwell: 1h
            steps: [1, 5, 25, 100]
          staging:
            steps: [50, 100]
    """

@Suite("Safety policies in the policy file")
struct SafetyPolicyTests {
    @Test func aFileWithoutThemKeepsTheDefaults() throws {
        let feature = try #require(try ControllerPolicy(yaml: sampleYAML).features.first)
        #expect(feature.guardWindow == .seconds(900))
        #expect(feature.stabilityWindow == .seconds(900))
        #expect(feature.maxRollbacksPerHour == 3)
        #expect(feature.freeze.isEmpty)
        #expect(feature.burnRateChecks.isEmpty)
        #expect(feature.checks.allSatisfy { $0.consecutive == 1 })
    }

    @Test func burnRateChecksGetTheWorkbookPairs() throws {
        let feature = try #require(try ControllerPolicy(yaml: safetyYAML).features.first)
        let burn = try #require(feature.burnRateChecks.first)
        #expect(burn.name == "errors")
        #expect(abs(burn.budget - 0.001) < 1e-12)
        #expect(burn.period == .seconds(30 * 86_400))
        #expect(burn.windows.map(\.label) == ["1h/5m", "6h/30m"])
        #expect(burn.windows.map(\.factor) == [14.4, 6])
        #expect(burn.windows.map(\.onViolation) == [.rollback, .hold])
        #expect(burn.distinctWindows == [.seconds(300), .seconds(1800), .seconds(3600), .seconds(21_600)])
        #expect(burn.query(window: .seconds(300)) == "sum(rate(errors_total[5m])) / sum(rate(requests_total[5m]))")
        #expect(feature.checks.map(\.name) == ["latency"])
        #expect(feature.checks.first?.consecutive == 3)
        #expect(feature.checks.first?.onViolation == .hold)
        #expect(feature.guardWindow == .seconds(1800))
        #expect(feature.stabilityWindow == .seconds(600))
        #expect(feature.maxRollbacksPerHour == 2)
        #expect(feature.rollbackTo == .lastGood)
        // The file's window first, then the feature's own.
        #expect(feature.freeze.map(\.description) == ["Fri 12:00 to Mon 08:00 (Europe/Paris)", "22:00 to 06:00 (UTC)"])
    }

    @Test func customWindowPairs() throws {
        let yaml = """
            prometheus: http://p:9090
            features:
              f:
                steps: [100]
                checks:
                  - {name: b, type: burn_rate, query: 'x[$window]', slo: 0.95, period: 7d, consecutive: 2, windows: [{long: 30m, short: 2m, factor: 10, on_violation: alert}]}
            """
        let burn = try #require(try ControllerPolicy(yaml: yaml).features.first?.burnRateChecks.first)
        #expect(burn.windows == [BurnRateCheck.WindowPair(long: .seconds(1800), short: .seconds(120), factor: 10, onViolation: .alert)])
        #expect(burn.period == .seconds(7 * 86_400))
        #expect(burn.consecutive == 2)
    }

    @Test func anEnvironmentOverridesTopLevelAndFeatureSettings() throws {
        let base = try ControllerPolicy(yaml: safetyYAML)
        #expect(base.prometheus.url == "http://127.0.0.1:9090")
        #expect(base.features.first?.steps == [percent("10"), percent("50"), percent("100")])
        #expect(base.features.first?.dwell == .seconds(900))

        let production = try ControllerPolicy(yaml: safetyYAML, environmentName: "production")
        #expect(production.environmentName == "production")
        #expect(production.prometheus.url == "http://127.0.0.1:9090")
        #expect(production.features.first?.steps == [percent("1"), percent("5"), percent("25"), percent("100")])
        #expect(production.features.first?.dwell == .seconds(3600))

        // The top-level environment's feature keys win over the feature's own environment.
        let staging = try ControllerPolicy(yaml: safetyYAML, environmentName: "staging")
        #expect(staging.prometheus.url == "http://staging-prometheus:9090")
        #expect(staging.features.first?.steps == [percent("50"), percent("100")])
        #expect(staging.features.first?.dwell == .seconds(60))
        // Everything else is inherited.
        #expect(staging.features.first?.maxRollbacksPerHour == 2)
    }

    @Test func anUnknownEnvironmentIsRefusedWithTheKnownOnes() {
        #expect {
            try ControllerPolicy(yaml: safetyYAML, path: "p.yaml", environmentName: "prod")
        } throws: { error in
            (error as? PolicyError)?.problems.contains { $0.contains("\"prod\"") && $0.contains("production, staging") } == true
        }
    }

    @Test func anEnvironmentOverrideIsCheckedLikeTheBase() {
        let yaml = safetyYAML.replacingOccurrences(of: "dwell: 1h", with: "dwell: one hour")
        #expect(throws: PolicyError.self) { try ControllerPolicy(yaml: yaml, environmentName: "production") }
        #expect(throws: Never.self) { try ControllerPolicy(yaml: yaml, environmentName: "staging") }
    }

    @Test func aCheckMayBeNamedMinRequestsBesideTheTrafficFloor() throws {
        // Queries are keyed by what they are for, so the name no longer collides.
        let yaml = """
            prometheus: http://p:9090
            features:
              f:
                steps: [100]
                min_requests: {query: sum(requests), at_least: 100}
                checks: [{name: min_requests, query: min(requests_per_pod), min: 1}]
            """
        let feature = try #require(try ControllerPolicy(yaml: yaml).features.first)
        var state = FeatureState.absent("f")
        state.rolloutPercent = .zero
        let starved = Observation(state: state, controllerPercent: .zero, checkValues: ["min_requests": 0], requests: .some(500))
        #expect(decide(policy: feature, observation: starved, now: Timestamp.now()).action == .hold)
        let fine = Observation(state: state, controllerPercent: .zero, checkValues: ["min_requests": 5], requests: .some(50))
        #expect(decide(policy: feature, observation: fine, now: Timestamp.now()).holdReason == .insufficientSample)
    }

    @Test func twoChecksNamedAlikeAreRefusedRatherThanCrashingARun() {
        let yaml = """
            prometheus: http://p:9090
            features:
              f:
                steps: [100]
                checks:
                  - {name: b, type: burn_rate, query: 'x[$window]', slo: 0.9, windows: [{long: 1h, short: 5m, factor: 14.4}, {long: 60m, short: 5m, factor: 6, on_violation: hold}]}
            """
        #expect {
            try ControllerPolicy(yaml: yaml)
        } throws: { error in
            (error as? PolicyError)?.problems.contains { $0.contains("b[1h/5m] twice") } == true
        }
    }

    @Test func aTypoUnderAnEnvironmentsFeaturesIsRefused() {
        let yaml = safetyYAML.replacingOccurrences(of: "    features:\n      checkout:\n        dwell: 1m", with: "    features:\n      chekout:\n        dwell: 1m")
        #expect(yaml != safetyYAML)
        #expect {
            try ControllerPolicy(yaml: yaml, environmentName: "staging")
        } throws: { error in
            (error as? PolicyError)?.problems.contains { $0.hasPrefix("environments.staging.features.chekout") } == true
        }
    }

    @Test func lastGoodRollsBackToTheRecordedPercentBelowTheCurrentOne() throws {
        var feature = try #require(try ControllerPolicy(yaml: safetyYAML).features.first)
        feature.rollbackTo = .lastGood
        #expect(feature.rollbackTarget(from: percent("100"), lastGood: percent("50")) == percent("50"))
        // The current percent was the good one and fails now: the step below it.
        #expect(feature.rollbackTarget(from: percent("100"), lastGood: percent("100")) == percent("50"))
        #expect(feature.rollbackTarget(from: percent("50"), lastGood: percent("50")) == percent("10"))
        #expect(feature.rollbackTarget(from: percent("50"), lastGood: nil) == .zero)
    }

    /// 2026-11-20 is a Friday. Europe/Paris is UTC+1 in November.
    @Test(arguments: [
        ("2026-11-20T10:59:00Z", false),  // Fri 11:59 Paris
        ("2026-11-20T11:00:00Z", true),  // Fri 12:00 Paris
        ("2026-11-22T12:00:00Z", true),  // Sunday
        ("2026-11-23T06:59:00Z", true),  // Mon 07:59 Paris
        ("2026-11-23T07:00:00Z", false),  // Mon 08:00 Paris
        ("2026-11-25T12:00:00Z", false),  // Wednesday
    ])
    func weeklyFreezeWindowsWrapTheWeekendInTheirTimeZone(time: String, frozen: Bool) throws {
        let policy = try ControllerPolicy(yaml: "prometheus: http://p:9090\nfreeze: [{from: 'Fri 12:00', to: 'Monday 08:00', time_zone: Europe/Paris}]\nfeatures:\n  f: {steps: [10], checks: [{name: e, query: up, max: 1}]}")
        let feature = try #require(policy.features.first)
        let at = try #require(Timestamp(parsing: time))
        #expect((feature.freezeWindow(at: at) != nil) == frozen)
    }

    @Test(arguments: [("2026-11-25T21:59:00Z", false), ("2026-11-25T22:00:00Z", true), ("2026-11-26T05:59:00Z", true), ("2026-11-26T06:00:00Z", false)])
    func dailyFreezeWindowsWrapMidnight(time: String, frozen: Bool) throws {
        let policy = try ControllerPolicy(yaml: "prometheus: http://p:9090\nfeatures:\n  f: {steps: [10], freeze: [{from: '22:00', to: '06:00'}], checks: [{name: e, query: up, max: 1}]}")
        let at = try #require(Timestamp(parsing: time))
        #expect((try #require(policy.features.first).freezeWindow(at: at) != nil) == frozen)
    }
}
