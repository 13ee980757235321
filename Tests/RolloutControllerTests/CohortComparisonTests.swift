import RolloutController
import Testing

// The vectors below are the output of Fixtures/cohort_vectors.py (standard library Python,
// written from the formulas, not from this code): run it again after changing the method and
// paste its output here.

/// What the script computed for one vector.
struct Expected: Sendable {
    let verdict: String
    let estimate: Double
    let lower: Double
    let upper: Double
    let needs: (on: Int, off: Int)?
}

/// The threshold as the policy would write it: relative when k is not 1, else `absolute`.
private func regressionThreshold(k: Double, threshold: Double, absolute: (Double) -> MaxRegression) -> MaxRegression {
    k == 1 ? absolute(threshold) : .relative(k - 1)
}

struct RatioVector: Sendable, CustomTestStringConvertible {
    let name: String
    let on: CohortCounts
    let off: CohortCounts
    let maxRegression: MaxRegression
    let alpha: Double
    let min: Int
    let expected: Expected

    init(
        _ name: String, on: (Double, Double), off: (Double, Double), k: Double, threshold: Double, alpha: Double, min: Int,
        verdict: String, estimate: Double, lower: Double, upper: Double, needs: (Int, Int)?
    ) {
        self.name = name
        self.on = CohortCounts(requests: on.0, failures: on.1)
        self.off = CohortCounts(requests: off.0, failures: off.1)
        maxRegression = regressionThreshold(k: k, threshold: threshold, absolute: MaxRegression.ratio)
        self.alpha = alpha
        self.min = min
        expected = Expected(verdict: verdict, estimate: estimate, lower: lower, upper: upper, needs: needs)
    }

    var testDescription: String { name }
}

private let ratioVectors: [RatioVector] = [
    .init("twice the failures", on: (20000, 400), off: (180000, 1800), k: 1, threshold: 0.0, alpha: 0.05, min: 1000, verdict: "regression", estimate: 0.01, lower: 0.006882047452145615, upper: 0.013117952547854386, needs: nil),
    .init("same ratio, within 0.5pp", on: (20000, 200), off: (180000, 1800), k: 1, threshold: 0.005, alpha: 0.05, min: 1000, verdict: "healthy", estimate: 0.0, lower: -0.002275359267917397, upper: 0.002275359267917397, needs: nil),
    .init("one check of a small difference", on: (3000, 36), off: (27000, 270), k: 1, threshold: 0.0, alpha: 0.05, min: 1000, verdict: "inconclusive", estimate: 0.002, lower: -0.004729151125239558, upper: 0.00872915112523956, needs: (28940, 260455)),
    .init("too few on-requests", on: (500, 5), off: (180000, 1800), k: 1, threshold: 0.0, alpha: 0.05, min: 1000, verdict: "noData", estimate: 0, lower: 0, upper: 0, needs: nil),
    .init("no requests at all", on: (0, 0), off: (0, 0), k: 1, threshold: 0.0, alpha: 0.05, min: 1, verdict: "noData", estimate: 0, lower: 0, upper: 0, needs: nil),
    .init("no failures anywhere", on: (5000, 0), off: (45000, 0), k: 1, threshold: 0.001, alpha: 0.05, min: 1000, verdict: "healthy", estimate: 0.0, lower: -0.0006202021936471248, upper: 0.0006202021936471248, needs: nil),
    .init("every request failed", on: (1000, 1000), off: (9000, 9000), k: 1, threshold: 0.0, alpha: 0.05, min: 1000, verdict: "inconclusive", estimate: 0.0, lower: -0.003869209018354106, upper: 0.003869209018354106, needs: nil),
    .init("20% relative, 1.5% against 1%", on: (20000, 300), off: (180000, 1800), k: 1.2, threshold: 0.0, alpha: 0.05, min: 1000, verdict: "regression", estimate: 0.002999999999999999, lower: 0.00022725877380034686, upper: 0.0057727412261996515, needs: nil),
    .init("20% relative, 1.1% against 1%", on: (20000, 220), off: (180000, 1800), k: 1.2, threshold: 0.0, alpha: 0.05, min: 1000, verdict: "inconclusive", estimate: -0.0010000000000000009, lower: -0.0034213324276547957, upper: 0.001421332427654794, needs: (114777, 1032989)),
    .init("strict alpha 0.01", on: (3000, 60), off: (27000, 270), k: 1, threshold: 0.0, alpha: 0.01, min: 1000, verdict: "regression", estimate: 0.01, lower: 0.0001722376327956479, upper: 0.019827762367204353, needs: nil),
    .init("loose alpha 0.2", on: (3000, 60), off: (27000, 270), k: 1, threshold: 0.0, alpha: 0.2, min: 1000, verdict: "regression", estimate: 0.01, lower: 0.0029892890222134143, upper: 0.017010710977786586, needs: nil),
    .init("1% rollout", on: (1000, 20), off: (99000, 990), k: 1, threshold: 0.0, alpha: 0.05, min: 1000, verdict: "inconclusive", estimate: 0.01, lower: -0.0037686068525501337, upper: 0.023768606852550132, needs: (926, 91605)),
    .init("99% rollout", on: (99000, 1980), off: (1000, 10), k: 1, threshold: 0.0, alpha: 0.05, min: 1000, verdict: "inconclusive", estimate: 0.01, lower: -8.216046984165122e-05, upper: 0.020082160469841653, needs: (1630, 17)),
]

struct MeanVector: Sendable, CustomTestStringConvertible {
    let name: String
    let on: CohortMeans
    let off: CohortMeans
    let maxRegression: MaxRegression
    let expected: Expected

    init(
        _ name: String, on: (Double, Double, Double), off: (Double, Double, Double), k: Double, threshold: Double, alpha: Double,
        min: Int, verdict: String, estimate: Double, lower: Double, upper: Double, needs: (Int, Int)?
    ) {
        self.name = name
        self.on = CohortMeans(count: on.0, sum: on.1, sumOfSquares: on.2)
        self.off = CohortMeans(count: off.0, sum: off.1, sumOfSquares: off.2)
        maxRegression = regressionThreshold(k: k, threshold: threshold, absolute: MaxRegression.seconds)
        expected = Expected(verdict: verdict, estimate: estimate, lower: lower, upper: upper, needs: needs)
    }

    var testDescription: String { name }
}

// Every mean vector uses alpha 0.05 and min_requests 1000.
private let meanVectors: [MeanVector] = [
    .init("latency 250ms against 200ms, 20ms allowed", on: (10000.0, 2500.0, 700.0), off: (90000.0, 18000.0, 4000.0), k: 1, threshold: 0.02, alpha: 0.05, min: 1000, verdict: "regression", estimate: 0.04999999999999999, lower: 0.04728627411705698, upper: 0.052713725882943, needs: nil),
    .init("latency 205ms against 200ms, 20ms allowed", on: (10000.0, 2050.0, 480.0), off: (90000.0, 18000.0, 4000.0), k: 1, threshold: 0.02, alpha: 0.05, min: 1000, verdict: "healthy", estimate: 0.004999999999999977, lower: 0.0025588111725170365, upper: 0.007441188827482917, needs: nil),
    .init("latency 215ms against 200ms, 10% allowed", on: (2000.0, 430.0, 110.0), off: (18000.0, 3600.0, 800.0), k: 1.1, threshold: 0.0, alpha: 0.05, min: 1000, verdict: "inconclusive", estimate: -0.005000000000000032, lower: -0.012282071419644323, upper: 0.0022820714196442587, needs: (1700, 15300)),
]

private func close(_ actual: Double, _ expected: Double) -> Bool {
    abs(actual - expected) <= 1e-9 * max(1e-3, abs(expected))
}

/// The Swift search stops within 0.01% of the total; the script searches to one request.
private func closeCount(_ actual: Int, _ expected: Int) -> Bool {
    abs(actual - expected) <= max(2, expected / 500)
}

private func check(_ verdict: CohortVerdict, _ expected: Expected) {
    let interval: CohortInterval
    switch verdict {
    case .noData:
        #expect(expected.verdict == "noData")
        return
    case .unbounded:
        Issue.record("the comparison itself never finds an unbounded histogram")
        return
    case .regression(let found):
        #expect(expected.verdict == "regression")
        interval = found
    case .healthy(let found):
        #expect(expected.verdict == "healthy")
        interval = found
    case .inconclusive(let found, let shortfall):
        #expect(expected.verdict == "inconclusive")
        interval = found
        if let needs = expected.needs, let shortfall {
            #expect(closeCount(shortfall.on, needs.on), "on needs \(shortfall.on), expected \(needs.on)")
            #expect(closeCount(shortfall.off, needs.off), "off needs \(shortfall.off), expected \(needs.off)")
        } else {
            #expect(expected.needs == nil && shortfall == nil)
        }
    }
    #expect(close(interval.estimate, expected.estimate), "estimate \(interval.estimate), expected \(expected.estimate)")
    #expect(close(interval.lower, expected.lower), "lower \(interval.lower), expected \(expected.lower)")
    #expect(close(interval.upper, expected.upper), "upper \(interval.upper), expected \(expected.upper)")
}

@Suite("Cohort comparison: the confidence sequence and its verdicts, as a pure function")
struct CohortComparisonTests {
    @Test(arguments: [(0.01, 0.01073952575336324), (0.05, 0.00890850975289221), (0.2, 0.0068252798662150746)])
    func rhoIsTunedForThePlannedRequests(alpha: Double, expected: Double) {
        #expect(close(CohortComparison.rho(alpha: alpha, plannedRequests: 100_000), expected))
    }

    @Test(arguments: [
        (0.09, 30000.0, 0.05, 0.005541954577819678), (0.09, 1000000.0, 0.05, 0.0009725169436216312),
        (1.0, 100.0, 0.01, 2.843892157768074), (0.5, 100000.0, 0.2, 0.005484088788660287),
    ])
    func halfWidthMatchesTheReference(variance: Double, requests: Double, alpha: Double, expected: Double) {
        let rho = CohortComparison.rho(alpha: alpha, plannedRequests: 100_000)
        #expect(close(CohortComparison.halfWidth(perRequestVariance: variance, requests: requests, rho: rho, alpha: alpha), expected))
    }

    @Test(arguments: ratioVectors)
    func ratioVerdictsMatchTheReference(vector: RatioVector) throws {
        let comparison = try CohortComparison(maxRegression: vector.maxRegression, alpha: vector.alpha, minRequests: vector.min)
        check(comparison.judge(on: vector.on, off: vector.off), vector.expected)
    }

    @Test(arguments: meanVectors)
    func meanVerdictsMatchTheReference(vector: MeanVector) throws {
        let comparison = try CohortComparison(maxRegression: vector.maxRegression, alpha: 0.05, minRequests: 1000)
        check(comparison.judge(on: vector.on, off: vector.off), vector.expected)
    }

    @Test func staticJudgeChecksItsSettings() throws {
        let on = CohortCounts(requests: 20000, failures: 400)
        let off = CohortCounts(requests: 180_000, failures: 1800)
        let verdict = try CohortComparison.judge(on: on, off: off, maxRegression: .ratio(0), alpha: 0.05, minRequests: 1000)
        guard case .regression = verdict else {
            Issue.record("expected a regression, got \(verdict)")
            return
        }
        #expect(throws: CohortComparisonError.self) {
            try CohortComparison.judge(on: on, off: off, maxRegression: .ratio(0), alpha: 1, minRequests: 1000)
        }
    }

    @Test(arguments: [0.0, 1.0, -0.05, 1.5, Double.nan])
    func alphaOutsideZeroToOneIsRefused(alpha: Double) {
        #expect(throws: CohortComparisonError.self) {
            try CohortComparison(maxRegression: .ratio(0.005), alpha: alpha, minRequests: 100)
        }
    }

    @Test func alphaJustInsideTheBoundsIsAccepted() throws {
        for alpha in [1e-9, 0.999] {
            let comparison = try CohortComparison(maxRegression: .ratio(0), alpha: alpha, minRequests: 1)
            let verdict = comparison.judge(on: CohortCounts(requests: 100, failures: 1), off: CohortCounts(requests: 100, failures: 1))
            guard case .inconclusive(let interval, _) = verdict else {
                Issue.record("alpha \(alpha): equal cohorts gave \(verdict)")
                continue
            }
            #expect(interval.lower < 0 && interval.upper > 0 && interval.lower.isFinite && interval.upper.isFinite)
        }
    }

    @Test func otherSettingsAreChecked() {
        #expect(throws: CohortComparisonError.self) { try CohortComparison(maxRegression: .relative(0.2), minRequests: 0) }
        #expect(throws: CohortComparisonError.self) { try CohortComparison(maxRegression: .ratio(-0.01), minRequests: 10) }
        #expect(throws: CohortComparisonError.self) {
            try CohortComparison(maxRegression: .relative(0.2), minRequests: 10, plannedRequests: 0)
        }
    }

    @Test func minRequestsAppliesToEachCohort() throws {
        let comparison = try CohortComparison(maxRegression: .ratio(0), minRequests: 1000)
        let big = CohortCounts(requests: 1_000_000, failures: 500_000)
        #expect(comparison.judge(on: CohortCounts(requests: 999, failures: 999), off: big) == .noData(on: 999, off: 1_000_000))
        #expect(comparison.judge(on: big, off: CohortCounts(requests: 999, failures: 0)) == .noData(on: 1_000_000, off: 999))
        guard case .regression = comparison.judge(on: CohortCounts(requests: 1000, failures: 1000), off: CohortCounts(requests: 1000, failures: 0))
        else {
            Issue.record("1,000 failures of 1,000 against none of 1,000 is a regression")
            return
        }
    }

    @Test func countsFromPrometheusThatAreNotCountsAreCleaned() throws {
        let comparison = try CohortComparison(maxRegression: .ratio(0), minRequests: 1)
        // A negative or NaN increase counts as nothing; more failures than requests as all failed.
        #expect(comparison.judge(on: CohortCounts(requests: -5, failures: 0), off: CohortCounts(requests: 10, failures: 0)) == .noData(on: 0, off: 10))
        #expect(comparison.judge(on: CohortCounts(requests: .nan, failures: 0), off: CohortCounts(requests: 10, failures: 0)) == .noData(on: 0, off: 10))
        let skewed = comparison.judge(on: CohortCounts(requests: 100, failures: 130), off: CohortCounts(requests: 100, failures: 0))
        let allFailed = comparison.judge(on: CohortCounts(requests: 100, failures: 100), off: CohortCounts(requests: 100, failures: 0))
        #expect(skewed == allFailed)
    }

    @Test func aMeanWithoutAFiniteSumIsNoData() throws {
        let comparison = try CohortComparison(maxRegression: .seconds(0.02), minRequests: 10)
        let fine = CohortMeans(count: 100, sum: 20, sumOfSquares: 5)
        #expect(comparison.judge(on: CohortMeans(count: 100, sum: .nan, sumOfSquares: 5), off: fine) == .noData(on: 0, off: 0))
        #expect(comparison.judge(on: fine, off: CohortMeans(count: 100, sum: 20, sumOfSquares: .infinity)) == .noData(on: 0, off: 0))
    }

    @Test func aZeroFailureCohortStillHasAWidth() throws {
        let comparison = try CohortComparison(maxRegression: .ratio(0), minRequests: 1)
        guard case .inconclusive(let interval, let needs) = comparison.judge(
            on: CohortCounts(requests: 10, failures: 0), off: CohortCounts(requests: 10, failures: 0))
        else {
            Issue.record("two empty cohorts of 10 requests decide nothing")
            return
        }
        #expect(interval.upper - interval.lower > 0.1)
        // Equal adjusted ratios: the estimate sits on the threshold, no amount of data decides it.
        #expect(interval.estimate == 0)
        #expect(needs == nil)
    }

    @Test func inconclusiveNeedsAreEnoughToDecide() throws {
        let comparison = try CohortComparison(maxRegression: .ratio(0), minRequests: 1000)
        let on = CohortCounts(requests: 3000, failures: 36)
        let off = CohortCounts(requests: 27000, failures: 270)
        guard case .inconclusive(_, let needs?) = comparison.judge(on: on, off: off) else {
            Issue.record("expected an inconclusive verdict with a shortfall")
            return
        }
        // The same ratios with 5% more than that many more requests: a regression. (The estimate
        // is rough: the adjusted variance moves a little as the counts grow.)
        let scale = { (counts: CohortCounts, more: Int) in
            CohortCounts(requests: counts.requests + Double(more), failures: counts.failures * (counts.requests + Double(more)) / counts.requests)
        }
        let grown = (on: needs.on + needs.on / 20, off: needs.off + needs.off / 20)
        guard case .regression = comparison.judge(on: scale(on, grown.on), off: scale(off, grown.off)) else {
            Issue.record("the shortfall \(needs) did not decide it")
            return
        }
    }

    @Test(arguments: [
        ("0.5pp", MaxRegression.ratio(0.005)), ("20%", .relative(0.2)), ("0pp", .ratio(0)),
        (" 1.25pp ", .ratio(0.0125)), ("50ms", .seconds(0.05)), ("0.2s", .seconds(0.2)), ("150%", .relative(1.5)),
    ])
    func maxRegressionParses(text: String, expected: MaxRegression) throws {
        let parsed = try MaxRegression(parsing: text)
        #expect(parsed.description == expected.description)
        switch (parsed, expected) {
        case (.ratio(let a), .ratio(let b)), (.seconds(let a), .seconds(let b)), (.relative(let a), .relative(let b)):
            #expect(close(a, b))
        default:
            Issue.record("\(text) parsed as \(parsed), expected \(expected)")
        }
    }

    @Test(arguments: [
        ("0.005", "needs a unit"), ("", "needs a unit"), ("-1pp", "is not a number"), ("abc%", "is not a number"),
        ("1e2%", "is not a number"), ("infpp", "is not a number"), ("1.pp", "is not a number"), (".5pp", "is not a number"),
        ("nan%", "is not a number"), ("pp", "is not a number"),
    ])
    func maxRegressionRefusesWithAClearError(text: String, message: String) {
        let error = #expect(throws: CohortComparisonError.self) { try MaxRegression(parsing: text) }
        #expect(error?.description.contains(message) == true, "\(error?.description ?? "no error")")
    }

    @Test func maxRegressionPrintsWhatItParsed() throws {
        #expect(try MaxRegression(parsing: "0.5pp").description == "0.5pp")
        #expect(try MaxRegression(parsing: "20%").description == "20%")
        #expect(try MaxRegression(parsing: "50ms").description == "50ms")
        #expect(try MaxRegression(parsing: "2s").description == "2s")
    }

    @Test func secondMomentBoundCountsEachObservationAtItsUpperBound() {
        let bound = CohortMeans.secondMomentBound(buckets: [
            (upperBound: 0.1, cumulativeCount: 10), (upperBound: 0.5, cumulativeCount: 30), (upperBound: .infinity, cumulativeCount: 30),
        ])
        #expect(bound.map { close($0, 10 * 0.01 + 20 * 0.25) } == true)
        #expect(CohortMeans.secondMomentBound(buckets: [(upperBound: 0.1, cumulativeCount: 10), (upperBound: .infinity, cumulativeCount: 11)]) == nil)
    }
}
