import RolloutController
import RolloutGate
import RolloutRedis
import Testing

let sampleYAML = """
    prometheus: http://127.0.0.1:9090
    redis: redis://127.0.0.1:6379
    pushgateway: http://127.0.0.1:9091        # optional
    audit_log: ./rollout_log.md
    query_timeout: 10s
    features:
      google:
        steps: [10, 50, 100]                  # percents, ascending; 0 is the implicit start
        dwell: 15m                            # minimum time between promotions
        cooldown_after_rollback: 1h
        rollback_to: 10                       # a percent, or "previous_step", or "zero"
        min_requests:                         # optional: no promotion on too little traffic
          query: sum(increase(action_exec_total{provider="google"}[5m]))
          at_least: 100
        checks:
          - name: error_rate
            query: sum(increase(action_error_total{provider="google"}[5m])) / sum(increase(action_exec_total{provider="google"}[5m]))
            max: 0.01                         # violated when the value is above max (or below min:)
            on_violation: rollback            # rollback | hold | alert
          - name: latency_p95
            query: histogram_quantile(0.95, sum(rate(action_latency_seconds_bucket{provider="google"}[5m])) by (le))
            max: 0.5
            on_violation: rollback
    """

@Suite("Policy file")
struct PolicyTests {
    @Test func parsesTheContractSchema() throws {
        let policy = try ControllerPolicy(yaml: sampleYAML)
        #expect(policy.prometheus.url == "http://127.0.0.1:9090")
        #expect(policy.pushgateway?.url == "http://127.0.0.1:9091")
        #expect(policy.queryTimeout == .seconds(10))
        #expect(policy.dryRun == false)
        let google = try #require(policy.features.first)
        #expect(google.feature == "google")
        #expect(google.steps.map(\.description) == ["10", "50", "100"])
        #expect(google.dwell == .seconds(900))
        #expect(google.cooldownAfterRollback == .seconds(3600))
        #expect(google.rollbackTo == .percent(try #require(RolloutPercent(parsing: "10"))))
        #expect(google.minRequests?.atLeast == 100)
        #expect(google.checks.map(\.name) == ["error_rate", "latency_p95"])
        #expect(google.checks[0].max == 0.01 && google.checks[0].onViolation == .rollback)
    }

    @Test func environmentOverridesTheFile() throws {
        let policy = try ControllerPolicy(
            yaml: sampleYAML,
            environment: [
                "PROMETHEUS_BASE_URL": "http://prom:9090/", "REDIS_URL": "redis://:pw@cache:6380/2",
                "PUSHGATEWAY_URL": "http://push:9091", "ROLLOUT_DRY_RUN": "true", "ROLLOUT_AUDIT_LOG": "/var/log/rollout.md",
            ])
        #expect(policy.prometheus.url == "http://prom:9090")
        #expect(policy.redis.endpoint == .tcp(host: "cache", port: 6380))
        #expect(policy.pushgateway?.url == "http://push:9091")
        #expect(policy.dryRun)
        #expect(policy.auditLog == "/var/log/rollout.md")
    }

    @Test(arguments: [
        ("30s", 30_000), ("15m", 900_000), ("1h", 3_600_000), ("1h30m", 5_400_000), ("2d", 172_800_000), ("500ms", 500), ("0s", 0),
        ("1m30s", 90_000),
    ])
    func durations(text: String, milliseconds: Int64) {
        #expect(parsePolicyDuration(text) == .milliseconds(milliseconds))
    }

    @Test(arguments: [
        (Duration.milliseconds(300), "300ms"), (.milliseconds(1250), "1s250ms"), (.seconds(90), "1m30s"), (.seconds(3600), "1h"),
        (.zero, "0s"), (.milliseconds(90_500), "1m30s"),
    ])
    func durationsAreWrittenAsPeopleWriteThem(duration: Duration, text: String) {
        #expect(formatDuration(duration) == text)
        // What is written below a minute reads back as the same duration.
        if duration < .seconds(60) { #expect(parsePolicyDuration(text) == duration) }
    }

    @Test(arguments: ["", "15", "15 minutes", "1m1h", "1h1h", "-5m", "1.5h", "m", "10x"])
    func invalidDurations(text: String) {
        #expect(parsePolicyDuration(text) == nil)
    }

    @Test(arguments: [
        ("features:\n  google:\n    steps: [50, 10]\n    checks: [{name: e, query: up, max: 1}]", "features.google.steps[1]"),
        ("features:\n  google:\n    steps: [10, 150]\n    checks: [{name: e, query: up, max: 1}]", "features.google.steps[1]"),
        ("features:\n  google:\n    steps: [0, 10]\n    checks: [{name: e, query: up, max: 1}]", "features.google.steps[0]"),
        ("features:\n  google:\n    steps: [10]\n    dwell: 15 minutes\n    checks: [{name: e, query: up, max: 1}]", "features.google.dwell"),
        ("features:\n  google:\n    steps: [10]\n    rollback_to: half\n    checks: [{name: e, query: up, max: 1}]", "features.google.rollback_to"),
        ("features:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up}]", "features.google.checks[0]"),
        ("features:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1, on_violation: panic}]", "features.google.checks[0].on_violation"),
        ("features:\n  google:\n    steps: [10]\n    checks: []", "features.google.checks"),
        ("features:\n  google:\n    steps: [10]", "features.google.checks"),
        ("features:\n  google:\n    steps: [10]\n    dwel: 5m\n    checks: [{name: e, query: up, max: 1}]", "features.google.dwel"),
        ("features:\n  Google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1}]", "features.Google"),
        ("features:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1}, {name: e, query: up, max: 2}]", "features.google.checks[1].name"),
        ("prometheus: ftp://x\nfeatures:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1}]", "prometheus"),
        ("features: {}", "features"),
        ("features:\n  google:\n    steps: [10]\n    checks: [{name: b, type: burn_rate, query: up, slo: 0.99}]", "features.google.checks[0].query"),
        ("features:\n  google:\n    steps: [10]\n    checks: [{name: b, type: burn_rate, query: 'e[$window]', slo: 99}]", "features.google.checks[0].slo"),
        ("features:\n  google:\n    steps: [10]\n    checks: [{name: b, type: burn_rate, query: 'e[$window]'}]", "features.google.checks[0].slo"),
        (
            "features:\n  google:\n    steps: [10]\n    checks: [{name: b, type: burn_rate, query: 'e[$window]', slo: 0.9, windows: [{long: 5m, short: 1h, factor: 2}]}]",
            "features.google.checks[0].windows[0]"
        ),
        ("features:\n  google:\n    steps: [10]\n    checks: [{name: b, type: ratio, query: up, max: 1}]", "features.google.checks[0].type"),
        ("features:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1, consecutive: 0}]", "features.google.checks[0].consecutive"),
        ("features:\n  google:\n    steps: [10]\n    max_rollbacks_per_hour: -1\n    checks: [{name: e, query: up, max: 1}]", "features.google.max_rollbacks_per_hour"),
        ("freeze: [{from: 'Fri 12:00', to: '08:00'}]\nfeatures:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1}]", "freeze[0]"),
        ("freeze: [{from: 'Fri 12:00', to: 'Mon 08:00', time_zone: Mars/Olympus}]\nfeatures:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1}]", "freeze[0].time_zone"),
        ("freeze: [{from: 'Fri 25:00', to: 'Mon 08:00'}]\nfeatures:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1}]", "freeze[0]"),
        ("query_timeout: 0s\nfeatures:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1}]", "query_timeout"),
        ("redis: http://x\nfeatures:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1}]", "redis"),
        ("- just\n- a list", "the file"),
        ("features: [unclosed", "not valid YAML"),
    ])
    func invalidFilesNameTheField(yaml: String, field: String) {
        let text = yaml.hasPrefix("prometheus") || yaml.hasPrefix("- ") || yaml.hasPrefix("features: [") ? yaml : "prometheus: http://127.0.0.1:9090\n" + yaml
        #expect {
            try ControllerPolicy(yaml: text, path: "test.yaml")
        } throws: { error in
            guard let error = error as? PolicyError else { return false }
            return error.problems.contains { $0.hasPrefix(field) || $0.contains(field) } && "\(error)".contains("test.yaml")
        }
    }

    @Test func aV1FeatureRefusesFractionalStepsAndRollbackTarget() throws {
        let yaml = "prometheus: http://p:9090\nfeatures:\n  f: {steps: [0.5, 10, 37.5, 100], rollback_to: 2.5, checks: [{name: e, query: up, max: 1}]}"
        let feature = try #require(try ControllerPolicy(yaml: yaml).features.first)
        #expect(feature.unwritablePercents(under: .v2).isEmpty)
        let refused = feature.unwritablePercents(under: .v1)
        #expect(refused.count == 3, "\(refused)")
        #expect(refused.first?.hasPrefix("features.f.steps[0] 0.5 cannot be written for f") == true)
        #expect(refused.contains { $0.hasPrefix("features.f.steps[2] 37.5") })
        #expect(refused.last?.hasPrefix("features.f.rollback_to 2.5") == true)
        let wholeYAML = "prometheus: http://p:9090\nfeatures:\n  f: {steps: [1, 10, 37, 100], rollback_to: zero, checks: [{name: e, query: up, max: 1}]}"
        let whole = try #require(try ControllerPolicy(yaml: wholeYAML).features.first)
        #expect(whole.unwritablePercents(under: .v1).isEmpty)
    }

    @Test func prometheusIsRequired() {
        #expect(throws: PolicyError.self) {
            try ControllerPolicy(yaml: "features:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1}]")
        }
    }

    @Test(arguments: [
        ("prometheus:9090", EndpointError.Code.notHTTP),
        ("ftp://prometheus:9090", .notHTTP),
        ("http://user:secret@prometheus:9090", .carriesCredentials),
        ("https://prometheus/api?token=x@secret", .carriesCredentials),
        ("http://:9090", .noHost),
        ("http:///metrics", .noHost),
    ])
    func anInvalidEndpointSaysWhatToWriteWithoutRepeatingTheURL(text: String, code: EndpointError.Code) throws {
        guard case .failure(let error) = HTTPEndpoint.parse(text) else {
            Issue.record("\(text) was accepted")
            return
        }
        #expect(error.code == code)
        #expect(error.message.contains("e.g. http") || error.message.contains("environment"), "\(error.message)")
        #expect(!error.message.contains("secret"))
    }

    @Test func anInvalidPrometheusURLIsAProblemOfItsField() {
        #expect {
            try ControllerPolicy(
                yaml: "prometheus: http://p:9090\nfeatures:\n  google:\n    steps: [10]\n    checks: [{name: e, query: up, max: 1}]",
                environment: ["PROMETHEUS_BASE_URL": "http://admin:hunter2@prom:9090"])
        } throws: { error in
            guard let error = error as? PolicyError else { return false }
            return error.problems == ["PROMETHEUS_BASE_URL: carries credentials (user:password@); remove them from the URL and put them in the environment"]
        }
    }

    @Test func everyProblemIsReportedAtOnce() {
        let yaml = "prometheus: http://p:9090\nfeatures:\n  google:\n    steps: [10, 5]\n    dwell: soon\n    checks: [{name: e, query: up}]"
        #expect {
            try ControllerPolicy(yaml: yaml)
        } throws: { error in
            (error as? PolicyError)?.problems.count == 3
        }
    }

    @Test func rollbackTargetsNeverGoAboveTheCurrentPercent() throws {
        var policy = try #require(try ControllerPolicy(yaml: sampleYAML).features.first)
        let p = { (text: String) in RolloutPercent(parsing: text) ?? .zero }
        #expect(policy.rollbackTarget(from: p("50")) == p("10"))
        #expect(policy.rollbackTarget(from: p("5")) == p("5"))
        policy.rollbackTo = .previousStep
        #expect(policy.rollbackTarget(from: p("100")) == p("50"))
        #expect(policy.rollbackTarget(from: p("50")) == p("10"))
        #expect(policy.rollbackTarget(from: p("10")) == .zero)
        #expect(policy.rollbackTarget(from: p("25")) == p("10"))
        policy.rollbackTo = .zero
        #expect(policy.rollbackTarget(from: p("50")) == .zero)
        #expect(policy.nextStep(after: .zero) == p("10"))
        #expect(policy.nextStep(after: p("25")) == p("50"))
        #expect(policy.nextStep(after: .full) == nil)
    }
}

@Suite("Policy durations are bounded")
struct PolicyDurationBoundsTests {
    static let checks = "    checks: [{name: e, query: up, max: 1}]"

    @Test(arguments: [
        ("query_timeout: 106752d\nfeatures:\n  google:\n    steps: [10]\n" + checks, "query_timeout", "100ms to 5m"),
        ("query_timeout: 50ms\nfeatures:\n  google:\n    steps: [10]\n" + checks, "query_timeout", "100ms to 5m"),
        ("features:\n  google:\n    steps: [10]\n    dwell: 31d\n" + checks, "features.google.dwell", "0s to 30d"),
        ("features:\n  google:\n    steps: [10]\n    cooldown_after_rollback: 999999999d\n" + checks, "features.google.cooldown_after_rollback", "0s to 30d"),
        ("features:\n  google:\n    steps: [10]\n    guard_window: 91d\n" + checks, "features.google.guard_window", "0s to 90d"),
        ("features:\n  google:\n    steps: [10]\n    stability_window: 106752d\n" + checks, "features.google.stability_window", "0s to 90d"),
        (
            "features:\n  google:\n    steps: [10]\n    checks: [{name: b, type: burn_rate, query: 'e[$window]', slo: 0.9, period: 365d}]",
            "features.google.checks[0].period", "1s to 90d"
        ),
        (
            "notifications:\n  timeout: 1h\n  channels: [{type: generic, url: 'http://127.0.0.1:1/x'}]\nfeatures:\n  google:\n    steps: [10]\n" + checks,
            "notifications.timeout", "100ms to 5m"
        ),
    ])
    func absurdDurationIsRefusedNamingItsFieldAndRange(yaml: String, field: String, range: String) {
        #expect {
            try ControllerPolicy(yaml: "prometheus: http://127.0.0.1:9090\n" + yaml, path: "test.yaml")
        } throws: { error in
            guard let error = error as? PolicyError else { return false }
            return error.problems.contains { $0.hasPrefix(field) && $0.contains("outside the allowed \(range)") }
        }
    }

    @Test func boundsThemselvesAreAccepted() throws {
        let policy = try ControllerPolicy(
            yaml: "prometheus: http://127.0.0.1:9090\nquery_timeout: 5m\nfeatures:\n  google:\n    steps: [10]\n    dwell: 30d\n    guard_window: 90d\n"
                + Self.checks)
        #expect(policy.queryTimeout == .seconds(300))
    }
}
