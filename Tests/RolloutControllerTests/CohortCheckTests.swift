import RolloutAdmin
import RolloutController
import RolloutGate
import Testing

private func percent(_ text: String) -> RolloutPercent { RolloutPercent(parsing: text) ?? .zero }
private let now = Timestamp(parsing: "2026-11-25T12:00:00Z") ?? Timestamp(microsecondsSinceEpoch: 0)

/// checkout: steps 10/50/100, dwell 15m, one cohort check (`settings` added to it), after the
/// checks in `before` (YAML flow mappings, one per line).
private func policy(
    _ settings: String = "max_regression: 0.5pp, min_requests: 1000", name: String = "cohort_errors", before: [String] = []
) throws -> FeaturePolicy {
    let yaml = """
        prometheus: http://p:9090
        features:
          checkout:
            steps: [10, 50, 100]
            dwell: 15m
            checks:
        \(before.map { "      - \($0)\n" }.joined())      - {name: \(name), type: cohort, \(settings)}
        """
    return try #require(try ControllerPolicy(yaml: yaml).features.first)
}

private func problems(_ settings: String, name: String = "cohort_errors") -> [String] {
    do {
        _ = try policy(settings, name: name)
        return []
    } catch {
        return (error as? PolicyError)?.problems ?? ["\(error)"]
    }
}

/// checkout at `current`, changed an hour ago, with the cohorts' counts since (nil: not queried).
private func observation(at current: String = "10", _ answers: CohortAnswers?, check: String = "cohort_errors") -> Observation {
    var state = FeatureState.absent("checkout")
    state.rolloutPercent = percent(current)
    state.lastPercent = .zero
    state.lastChangeTime = now.advanced(by: .seconds(-3600))
    var observation = Observation(state: state, controllerPercent: state.rolloutPercent, checkValues: [:])
    if let answers { observation.cohortAnswers[check] = answers }
    return observation
}

/// On cohort: `on` failures of `onRequests`; off cohort: `off` of `offRequests`.
private func counts(_ on: Double, of onRequests: Double, _ off: Double, of offRequests: Double) -> CohortAnswers {
    CohortAnswers(onFailures: on, onRequests: onRequests, offFailures: off, offRequests: offRequests)
}

@Suite("The cohort check: its policy and its verdicts")
struct CohortCheckTests {
    @Test func defaultsReadTheGatesCohortCountersSinceTheLastChange() throws {
        let check = try #require(try policy().cohortChecks.first)
        #expect(check.comparison.maxRegression == .ratio(0.005))
        #expect(check.comparison.alpha == 0.05)
        #expect(check.comparison.minRequests == 1000)
        #expect(check.onViolation == .rollback)
        let queries = try policy().queries(cohortWindow: .seconds(1800))
        #expect(queries.count == 4)
        #expect(queries.map(\.query).contains("sum(increase(rollout_cohort_failures_total{feature=\"checkout\",cohort=\"on\"}[1800s]))"))
        #expect(queries.map(\.query).contains("sum(increase(rollout_cohort_requests_total{feature=\"checkout\",cohort=\"off\"}[1800s]))"))
        #expect(queries.map(\.label).contains("cohort_errors[off failures]"))
        // No change recorded yet: nothing to count since, no query.
        #expect(try policy().queries(cohortWindow: nil).isEmpty)
        // A window under a second is still a range Prometheus accepts.
        #expect(CohortCheck.query("x[$window]", cohort: .on, window: .milliseconds(10)) == "x[1s]")
    }

    @Test func customCounterPairsAndSettings() throws {
        let check = try #require(
            try policy(
                "failures: 'sum(increase(http_errors_total{cohort=\"$cohort\"}[$window]))', requests: 'sum(increase(http_total{cohort=\"$cohort\"}[$window]))', max_regression: 20%, alpha: 0.01, min_requests: 500, on_violation: alert, consecutive: 2"
            ).cohortChecks.first)
        #expect(check.comparison.maxRegression == .relative(0.2))
        #expect(check.comparison.alpha == 0.01)
        #expect(check.comparison.minRequests == 500)
        #expect(check.onViolation == .alert && check.consecutive == 2)
        #expect(CohortCheck.query(check.template(.failures) ?? "", cohort: .off, window: .seconds(90)) == "sum(increase(http_errors_total{cohort=\"off\"}[90s]))")
    }

    @Test(arguments: [
        ("min_requests: 10", "max_regression"),
        ("max_regression: 0.5", "needs a unit"),
        ("max_regression: 50ms", "a latency"),
        ("max_regression: 0.5pp, alpha: 1.5", "alpha"),
        ("max_regression: 0.5pp, min_requests: 0", "min_requests"),
        ("max_regression: 0.5pp, failures: 'sum(x{cohort=\"$cohort\"}[$window])'", "only one of failures: and requests:"),
        ("max_regression: 0.5pp, failures: 'sum(x[$window])', requests: 'sum(y{cohort=\"$cohort\"}[$window])'", "has no $cohort"),
        ("max_regression: 0.5pp, failures: 'sum(x{cohort=\"$cohort\"})', requests: 'sum(y{cohort=\"$cohort\"}[$window])'", "has no $window"),
        ("max_regression: 0.5pp, on_violation: explode", "on_violation"),
        ("max_regression: 0.5pp, maximum: 3", "maximum"),
    ])
    func aBadSettingIsAProblemNamingIt(settings: String, expected: String) {
        let found = problems(settings)
        #expect(found.contains { $0.contains(expected) }, "\(found)")
    }

    @Test func aRegressionInTheFeaturesCohortRollsBack() throws {
        // At 10%: the on cohort fails 2% of 20,000, the off cohort 1% of 180,000.
        let verdict = decide(policy: try policy(), observation: observation(at: "50", counts(400, of: 20_000, 1_800, of: 180_000)), now: now)
        #expect(verdict.action == .rollback(to: percent("10")))
        #expect(verdict.checks.first?.status == .violated)
        #expect(abs((verdict.checks.first?.value ?? 0) - 0.01) < 1e-9)  // on - off
        #expect(verdict.explanation.contains("cohort_errors=0.01 (on - off in ["), "\(verdict.explanation)")
        #expect(verdict.explanation.contains("above max_regression 0.5pp: a regression"))
    }

    @Test func theSameRiseInBothCohortsIsNoRegression() throws {
        // An outside incident: both cohorts fail 10%. Healthy (the interval lies below 0.5pp)
        // with enough traffic; never a rollback.
        let verdict = decide(policy: try policy(), observation: observation(counts(5_000, of: 50_000, 45_000, of: 450_000)), now: now)
        #expect(verdict.action == .promote(to: percent("50")), "\(verdict.explanation)")
        #expect(verdict.checks.first?.status == .ok)
        #expect(verdict.healthy)
    }

    @Test func tooFewRequestsInEitherCohortIsNoData() throws {
        let verdict = decide(policy: try policy(), observation: observation(counts(0, of: 300, 10, of: 50_000)), now: now)
        #expect(verdict.action == .hold && verdict.holdReason == .noData)
        #expect(verdict.checks.first?.status == .noData && verdict.checks.first?.value == nil)
        #expect(verdict.explanation.contains("no data for cohort_errors (too few requests: on 300, off 50000, min_requests 1000 in each): no promotion"), "\(verdict.explanation)")
        // A cohort with no series at all (nobody recorded in it yet): the same.
        let none = decide(policy: try policy(), observation: observation(CohortAnswers(onFailures: nil, onRequests: nil, offFailures: 5, offRequests: 9_000)), now: now)
        #expect(none.holdReason == .noData)
        // Not queried (no change recorded): no data too, never a promotion.
        #expect(decide(policy: try policy(), observation: observation(nil), now: now).holdReason == .noData)
    }

    @Test func anIntervalAcrossTheThresholdHoldsWithInsufficientEvidence() throws {
        // 1.4% against 1.0% with 2,000 and 18,000 requests: the interval spans 0.5pp.
        let verdict = decide(policy: try policy(), observation: observation(counts(28, of: 2_000, 180, of: 18_000)), now: now)
        #expect(verdict.action == .hold && verdict.holdReason == .insufficientEvidence, "\(verdict.explanation)")
        #expect(verdict.checks.first?.status == .inconclusive)
        #expect(!verdict.healthy)
        #expect(verdict.explanation.contains("straddles max_regression 0.5pp; roughly"), "\(verdict.explanation)")
        #expect(verdict.explanation.contains("more requests in the on cohort"))
    }

    @Test func atZeroAndAtFullTheCohortCheckDoesNotApply() throws {
        // Only a cohort check: at 0% nobody is in the feature's cohort, so nothing can be
        // judged and nothing promotes.
        let zero = decide(policy: try policy(), observation: observation(at: "0", counts(0, of: 0, 10, of: 50_000)), now: now)
        #expect(zero.action == .hold && zero.holdReason == .noData)
        #expect(zero.checks.isEmpty)
        #expect(zero.explanation.contains("no check applies at 0%"), "\(zero.explanation)")
        // Beside a threshold check, that one decides the step from 0%.
        let both = try policy("max_regression: 0.5pp", before: ["{name: error_rate, query: max(errors), max: 0.05}"])
        var state = observation(at: "0", counts(0, of: 0, 10, of: 50_000))
        state.checkValues["error_rate"] = 0.001
        let promoted = decide(policy: both, observation: state, now: now)
        #expect(promoted.action == .promote(to: percent("10")), "\(promoted.explanation)")
        #expect(promoted.checks.map(\.name) == ["error_rate"])
        // At 100% the off cohort is empty: not judged either (at the last step, nothing to do).
        let full = decide(policy: try policy(), observation: observation(at: "100", counts(10, of: 50_000, 0, of: 0)), now: now)
        #expect(full.holdReason == .noData && full.checks.isEmpty)
    }

    @Test func aNegativeCountIsInvalidDataNeverARollback() throws {
        let verdict = decide(policy: try policy(), observation: observation(at: "50", counts(-5, of: 20_000, 1_800, of: 180_000)), now: now)
        #expect(verdict.action == .hold && verdict.holdReason == .invalidData)
        #expect(verdict.checks.first?.status == .invalidData)
    }

    @Test func anAlertOnlyRegressionReportsAndHolds() throws {
        let verdict = decide(
            policy: try policy("max_regression: 0.5pp, on_violation: alert"), observation: observation(at: "50", counts(400, of: 20_000, 1_800, of: 180_000)),
            now: now)
        #expect(verdict.alerts == ["cohort_errors"])
        #expect(!verdict.healthy)
        // Reported, never a rollback; and no promotion either: a promotion needs healthy.
        #expect(verdict.action == .hold && verdict.holdReason == .checkViolated, "\(verdict.explanation)")
    }
}

/// Prometheus's default buckets, as `FeatureHandle.record` uses them.
private let bounds = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]

/// One cohort's histogram after `observations` (seconds, how many).
private func histogram(_ observations: [(seconds: Double, count: Double)]) -> HistogramAnswers {
    let total = observations.map(\.count).reduce(0, +)
    var buckets: [Double: Double] = [:]
    for bound in bounds + [.infinity] { buckets[bound] = observations.filter { $0.seconds <= bound }.map(\.count).reduce(0, +) }
    return HistogramAnswers(count: total, sum: observations.map { $0.seconds * $0.count }.reduce(0, +), buckets: buckets)
}

/// checkout at `current` with the cohorts' histograms, for the latency check.
private func observation(at current: String = "10", on: HistogramAnswers, off: HistogramAnswers) -> Observation {
    observation(at: current, CohortAnswers(on: on, off: off), check: "cohort_latency")
}

/// The latency check: its histogram, max_regression 20ms unless `settings` says otherwise.
private func latencyPolicy(_ settings: String = "latency: rollout_cohort_duration_seconds, max_regression: 20ms, min_requests: 1000") throws -> FeaturePolicy {
    try policy(settings, name: "cohort_latency")
}

/// The off cohort: half at 40 ms, half at 80 ms (a 60 ms mean), 18,000 observations.
private let usual = histogram([(0.04, 9_000), (0.08, 9_000)])

@Suite("The cohort check on a latency mean: its policy and its verdicts")
struct CohortLatencyTests {
    @Test func aHistogramsBaseNameReadsItsCountSumAndBucketsPerCohort() throws {
        let feature = try latencyPolicy()
        let check = try #require(feature.cohortChecks.first)
        #expect(check.comparesLatency)
        #expect(check.comparison.maxRegression == .seconds(0.02))
        let queries = feature.queries(cohortWindow: .seconds(1800))
        #expect(queries.count == 6)
        let selector = #"{feature="checkout",cohort="on"}[1800s]"#
        #expect(queries.map(\.query).contains("sum(increase(rollout_cohort_duration_seconds_count\(selector)))"))
        #expect(queries.map(\.query).contains("sum(increase(rollout_cohort_duration_seconds_sum\(selector)))"))
        #expect(queries.map(\.query).contains("sum by (le) (increase(rollout_cohort_duration_seconds_bucket\(selector)))"))
        #expect(queries.filter(\.isVector).map(\.label) == ["cohort_latency[on buckets]", "cohort_latency[off buckets]"])
        #expect(queries.map(\.label).contains("cohort_latency[off count]"))
    }

    @Test func aSelectorOfItsOwnAndARelativeThreshold() throws {
        let check = try #require(
            try latencyPolicy(#"latency: 'http_duration_seconds{job="api",cohort="$cohort"}', max_regression: 20%, min_requests: 200"#).cohortChecks.first)
        #expect(check.measure == .latency(histogram: "http_duration_seconds", selector: #"{job="api",cohort="$cohort"}"#))
        #expect(check.comparison.maxRegression == .relative(0.2))
        #expect(
            CohortCheck.query(check.template(.buckets) ?? "", cohort: .off, window: .seconds(90))
                == #"sum by (le) (increase(http_duration_seconds_bucket{job="api",cohort="off"}[90s]))"#)
        #expect(check.template(.failures) == nil)
    }

    @Test(arguments: [
        ("latency: rollout_cohort_duration_seconds, max_regression: 0.5pp", "percentage points"),
        ("latency: rollout_cohort_duration_seconds", "is required: how much worse the feature's cohort may be, e.g. 50ms"),
        ("latency: x, failures: 'sum(a{cohort=\"$cohort\"}[$window])', requests: 'sum(b{cohort=\"$cohort\"}[$window])', max_regression: 50ms", "has latency: and failures:/requests:"),
        ("latency: x, requests: 'sum(b{cohort=\"$cohort\"}[$window])', max_regression: 50ms", "has latency: and failures:/requests:"),
        ("latency: 'x{job=\"api\"}', max_regression: 50ms", "has no $cohort in its selector"),
        ("latency: rollout_cohort_duration_seconds_bucket, max_regression: 50ms", "write its base name rollout_cohort_duration_seconds"),
        ("latency: 'histogram_quantile(0.95, x)', max_regression: 50ms", "a histogram's base name"),
        ("latency: 'x{cohort=\"$cohort\"', max_regression: 50ms", "does not end with }"),
    ])
    func aBadSettingIsAProblemNamingIt(settings: String, expected: String) {
        let found = problems(settings, name: "cohort_latency")
        #expect(found.contains { $0.contains(expected) }, "\(found)")
    }

    @Test func aSlowerOwnCohortRollsBackWithTheMeansInMilliseconds() throws {
        // The on cohort: half at 40 ms, half at 200 ms (120 ms mean) against the usual 60 ms.
        let slow = histogram([(0.04, 1_000), (0.2, 1_000)])
        let verdict = decide(policy: try latencyPolicy(), observation: observation(at: "50", on: slow, off: usual), now: now)
        #expect(verdict.action == .rollback(to: percent("10")), "\(verdict.explanation)")
        #expect(verdict.checks.first?.status == .violated)
        #expect(abs((verdict.checks.first?.value ?? 0) - 0.06) < 1e-9)  // mean on - off, seconds
        #expect(verdict.checks.first?.limit == "max_regression 20ms")
        #expect(verdict.explanation.contains("cohort_latency=0.06 (mean on - off in ["), "\(verdict.explanation)")
        #expect(verdict.explanation.contains("ms], above max_regression 20ms: a regression"))
        // Relative: 120 ms against 1.2 x 60 ms is still a regression.
        let relative = try latencyPolicy("latency: rollout_cohort_duration_seconds, max_regression: 20%")
        let judged = decide(policy: relative, observation: observation(at: "50", on: slow, off: usual), now: now)
        #expect(judged.action == .rollback(to: percent("10")), "\(judged.explanation)")
        #expect(judged.explanation.contains("mean on - 1.2 x off in ["))
    }

    @Test func equalLatenciesPromote() throws {
        let verdict = decide(policy: try latencyPolicy(), observation: observation(on: histogram([(0.04, 1_000), (0.08, 1_000)]), off: usual), now: now)
        #expect(verdict.action == .promote(to: percent("50")), "\(verdict.explanation)")
        #expect(verdict.checks.first?.status == .ok)
        let check = try #require(try latencyPolicy().cohortChecks.first)
        let judged = check.judge(CohortAnswers(on: histogram([(0.04, 1_000), (0.08, 1_000)]), off: usual))
        #expect(judged.code == "healthy")
        #expect(judged.summary(of: check).hasPrefix("mean on - off in [-"), "\(judged.summary(of: check))")
        #expect(judged.summary(of: check).hasSuffix("ms], below max_regression 20ms"))
    }

    @Test func observationsAboveTheLastFiniteBucketAreNoData() throws {
        // Five requests took 12 s: nothing bounds the variance, so nothing is concluded.
        let verdict = decide(
            policy: try latencyPolicy(), observation: observation(on: histogram([(0.04, 1_000), (0.08, 1_000), (12, 5)]), off: usual), now: now)
        #expect(verdict.action == .hold && verdict.holdReason == .noData, "\(verdict.explanation)")
        #expect(verdict.checks.first?.status == .noData && verdict.checks.first?.value == nil)
        #expect(
            verdict.explanation.contains("observations lie above the histogram's last finite bucket, or in none of its buckets (on 2005, off 18000 observations)"),
            "\(verdict.explanation)")
        let check = try #require(try latencyPolicy().cohortChecks.first)
        #expect(check.judge(CohortAnswers(on: histogram([(12, 2_000)]), off: usual)).code == "no_data")
        // A _count and _sum without _bucket series (a summary): no bound either, never a zero
        // variance; nor finite buckets without their +Inf one.
        let alike = histogram([(0.04, 1_000), (0.2, 1_000)])
        #expect(check.judge(CohortAnswers(on: HistogramAnswers(count: alike.count, sum: alike.sum), off: usual)) == .unbounded(on: 2_000, off: 18_000))
        var noInfinity = alike
        noInfinity.buckets[.infinity] = nil
        #expect(check.judge(CohortAnswers(on: noInfinity, off: usual)).code == "no_data")
        #expect(check.judge(CohortAnswers(on: alike, off: usual)).code == "regression")
        // A count a little above the buckets' total (its query evaluated a moment later, as
        // Prometheus extrapolates young series): the bound is scaled up to it, still judged.
        var later = alike
        later.count = 2_100
        #expect(check.judge(CohortAnswers(on: later, off: usual)).code == "regression")

    }

    @Test func tooFewObservationsNoSeriesAndNegativeIncreases() throws {
        let few = decide(policy: try latencyPolicy(), observation: observation(on: histogram([(0.04, 300)]), off: usual), now: now)
        #expect(few.holdReason == .noData)
        #expect(few.explanation.contains("too few observations: on 300, off 18000, min_requests 1000 in each"), "\(few.explanation)")
        // A cohort nobody was recorded in has no series: no data, never a promotion.
        let none = decide(policy: try latencyPolicy(), observation: observation(on: HistogramAnswers(), off: usual), now: now)
        #expect(none.holdReason == .noData, "\(none.explanation)")
        var negative = usual
        negative.sum = -3
        let invalid = decide(policy: try latencyPolicy(), observation: observation(on: usual, off: negative), now: now)
        #expect(invalid.action == .hold && invalid.holdReason == .invalidData)
    }

    @Test func theBucketsOfAVectorAnswer() {
        let check = try? latencyPolicy().cohortChecks.first
        let answers = check?.answers(
            value: { cohort, series in series == .count ? (cohort == .on ? 10 : 20) : 1.5 },
            samples: { _ in [PrometheusSample(labels: ["le": "+Inf"], value: 10), PrometheusSample(labels: ["le": "0.5"], value: 10), PrometheusSample(labels: [:], value: 1)] })
        #expect(answers?.onHistogram == HistogramAnswers(count: 10, sum: 1.5, buckets: [0.5: 10, .infinity: 10]))
        #expect(answers?.offHistogram?.count == 20)
        #expect(answers?.onRequests == nil)
    }
}
