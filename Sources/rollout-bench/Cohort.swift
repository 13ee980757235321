// The cohort comparison keeps its promises (issue 13 §3), `BENCH_ONLY=cohort scripts/bench.sh`:
//   rollout-bench --cohort ROLLOUTS SEED
// A seeded, reproducible simulation of ROLLOUTS rollouts per scenario, each checked every 10
// minutes for a day (144 checks), with 50 requests per second in all: each request lands in the
// feature's cohort with the rollout's share and fails with its cohort's probability (binomial
// draws). The scenarios: A/A (both cohorts fail 1% of requests) at 10% and 1%, the feature's
// cohort failing at twice that at 10%, 1%, 50% and 99%, at 1.25 times that at 10%, and an
// outside incident raising both cohorts' failures tenfold for 30 minutes at 10%.
// Four checks watch each rollout and roll it back at their first alarm: the cohort comparison
// (CohortComparison, counts since the rollout began) at max_regression 0pp and 20%, a plain
// two-proportion z-test on the same counts at each check, and a service-wide fixed threshold
// (failure ratio over the last 10 minutes above 2%). The draws come from RolloutTestSupport's
// SplitMix64, seeded per scenario and rollout, so that a rollout's draws depend only on the seed
// and its index; its binomial draws are exact (SplitMix64.binomial).
import Foundation
import RolloutController
import RolloutTestSupport

private struct CohortScenario {
    /// The share of requests in the feature's cohort.
    var rolloutShare: Double
    /// The feature's cohort fails this many times as often as the rest.
    var onFactor: Double
    /// Both cohorts fail ten times as often during checks 37 to 39 (minutes 360 to 390).
    var incident: Bool

    static let all = [
        CohortScenario(rolloutShare: 0.1, onFactor: 1, incident: false),
        CohortScenario(rolloutShare: 0.01, onFactor: 1, incident: false),
        CohortScenario(rolloutShare: 0.1, onFactor: 2, incident: false),
        CohortScenario(rolloutShare: 0.01, onFactor: 2, incident: false),
        CohortScenario(rolloutShare: 0.5, onFactor: 2, incident: false),
        CohortScenario(rolloutShare: 0.99, onFactor: 2, incident: false),
        CohortScenario(rolloutShare: 0.1, onFactor: 1.25, incident: false),
        CohortScenario(rolloutShare: 0.1, onFactor: 1, incident: true),
    ]

    var label: String {
        let share = "\(String(format: "%g", rolloutShare * 100))%"
        if incident { return "\(share), both cohorts 10x for 30 min at 6 h" }
        if onFactor == 1 { return "\(share), A/A" }
        return "\(share), feature's cohort \(String(format: "%g", onFactor))x"
    }

    /// The failure probabilities of the on and off cohorts during check `index` (0-based; check
    /// `index` covers minutes 10·index to 10·index + 10).
    func failureProbabilities(check index: Int, base: Double) -> (on: Double, off: Double) {
        let outside = incident && (36..<39).contains(index) ? 10.0 : 1.0
        return (outside * onFactor * base, outside * base)
    }
}

/// The first check (1-based) at which each watcher raised an alarm in one rollout.
private struct Alarms {
    var cohortStrict: Int?
    var cohortRelative: Int?
    var zTest: Int?
    var serviceWide: Int?
    var relativeHealthy: Int?
}

private func simulateRollout(
    _ scenario: CohortScenario, seed: UInt64, checks: Int, requestsPerCheck: Int, base: Double,
    strict: CohortComparison, relative: CohortComparison
) -> Alarms {
    var random = SplitMix64(state: seed)
    var alarms = Alarms()
    var on = CohortCounts(requests: 0, failures: 0)
    var off = CohortCounts(requests: 0, failures: 0)
    for index in 0..<checks {
        let probabilities = scenario.failureProbabilities(check: index, base: base)
        let onRequests = random.binomial(requestsPerCheck, scenario.rolloutShare)
        let onFailures = random.binomial(onRequests, probabilities.on)
        let offFailures = random.binomial(requestsPerCheck - onRequests, probabilities.off)
        on.requests += Double(onRequests)
        on.failures += Double(onFailures)
        off.requests += Double(requestsPerCheck - onRequests)
        off.failures += Double(offFailures)
        let check = index + 1
        if alarms.cohortStrict == nil, case .regression = strict.judge(on: on, off: off) { alarms.cohortStrict = check }
        if alarms.cohortRelative == nil || alarms.relativeHealthy == nil {
            switch relative.judge(on: on, off: off) {
            case .regression: if alarms.cohortRelative == nil { alarms.cohortRelative = check }
            case .healthy: if alarms.relativeHealthy == nil { alarms.relativeHealthy = check }
            default: break
            }
        }
        if alarms.zTest == nil, fixedHorizonLowerBound(on: on, off: off) > 0 { alarms.zTest = check }
        if alarms.serviceWide == nil, Double(onFailures + offFailures) / Double(requestsPerCheck) > 2 * base {
            alarms.serviceWide = check
        }
    }
    return alarms
}

/// The lower bound of the fixed-sample 95% interval for on − off, with the same adjusted ratios
/// and variance as the cohort comparison: what a plain two-proportion z-test run at every
/// check looks at.
private func fixedHorizonLowerBound(on: CohortCounts, off: CohortCounts) -> Double {
    let onRatio = (on.failures + 1) / (on.requests + 2)
    let offRatio = (off.failures + 1) / (off.requests + 2)
    let variance = onRatio * (1 - onRatio) / (on.requests + 2) + offRatio * (1 - offRatio) / (off.requests + 2)
    return onRatio - offRatio - 1.959_963_984_540_054 * variance.squareRoot()
}

/// "12.3%, median 2h10m" for the checks at which a watcher fired (nil: never).
private func summary(_ checks: [Int?], rollouts: Int, minutesPerCheck: Int) -> String {
    let fired = checks.compactMap { $0 }.sorted()
    let share = String(format: "%.1f%%", 100 * Double(fired.count) / Double(rollouts))
    guard !fired.isEmpty else { return share }
    let median = fired[(fired.count - 1) / 2] * minutesPerCheck
    return "\(share), median \(median / 60)h\(String(format: "%02d", median % 60))m"
}

func runCohortBench(rollouts: Int, seed: UInt64) throws {
    let checks = 144
    let minutesPerCheck = 10
    let requestsPerSecond = 50
    let requestsPerCheck = requestsPerSecond * minutesPerCheck * 60
    let base = 0.01
    let strict = try CohortComparison(maxRegression: .ratio(0), alpha: 0.05, minRequests: 1000)
    let relative = try CohortComparison(maxRegression: .relative(0.2), alpha: 0.05, minRequests: 1000)
    print(
        "cohort: \(rollouts) rollouts per scenario, \(checks) checks each (every \(minutesPerCheck) min for 24 h), \(requestsPerSecond) requests/s in all, "
            + "base failure ratio 1%, alpha 0.05, min_requests 1000, planned requests (N*) \(Int(CohortComparison.defaultPlannedRequests)), seed \(seed)"
    )
    print("share of rollouts rolled back (median time to the rollback among them):")
    let columns = ["cohort, max_regression 0pp", "cohort, max_regression 20%", "z-test at each check, 0pp", "service-wide ratio > 2%"]
    print("| scenario | " + columns.joined(separator: " | ") + " |")
    print("|---|" + String(repeating: "---|", count: columns.count))
    let start = ContinuousClock.now
    var healthyLines: [String] = []
    for (scenarioIndex, scenario) in CohortScenario.all.enumerated() {
        var results: [Alarms] = []
        results.reserveCapacity(rollouts)
        for rollout in 0..<rollouts {
            // One stream per (scenario, rollout): the same rollout index draws the same numbers
            // however many rollouts run.
            let streamSeed = seed &* 0x1_0000_0001 &+ UInt64(scenarioIndex) << 40 &+ UInt64(rollout)
            results.append(
                simulateRollout(
                    scenario, seed: streamSeed, checks: checks, requestsPerCheck: requestsPerCheck, base: base, strict: strict,
                    relative: relative))
        }
        let cells = [
            results.map(\.cohortStrict), results.map(\.cohortRelative), results.map(\.zTest), results.map(\.serviceWide),
        ].map { summary($0, rollouts: rollouts, minutesPerCheck: minutesPerCheck) }
        print("| \(scenario.label) | " + cells.joined(separator: " | ") + " |")
        healthyLines.append(
            "| \(scenario.label) | \(summary(results.map(\.relativeHealthy), rollouts: rollouts, minutesPerCheck: minutesPerCheck)) |")
    }
    print("share of rollouts found healthy at some check (what a promotion needs; median time to it):")
    print("| scenario | cohort, max_regression 20% |")
    print("|---|---|")
    for line in healthyLines { print(line) }
    let elapsed = ContinuousClock.now - start
    print(String(format: "cohort: simulated in %.1f s", Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18))
}
