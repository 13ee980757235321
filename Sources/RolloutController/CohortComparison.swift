import Foundation

// The cohort comparison: the feature's own cohort (subjects for whom it is on) against the rest
// (subjects for whom it is off), judged by an always-valid confidence sequence so that a check
// run every few minutes keeps its false-alarm rate at `alpha` however often it looks. Pure: no
// I/O, no clock. The method, its formula and the simulation behind it are in docs/controller.md
// ("Cohort comparison").

/// Requests and failures of one cohort since the feature's last change (Prometheus `increase()`
/// values, so not always whole numbers).
public struct CohortCounts: Sendable, Hashable {
    /// Requests served to the cohort.
    public var requests: Double
    /// Those of them that failed.
    public var failures: Double

    public init(requests: Double, failures: Double) {
        self.requests = requests
        self.failures = failures
    }
}

/// One cohort's observations of a quantity such as latency: count, sum and sum of squares (or an
/// upper bound on it, see ``secondMomentBound(buckets:)``) since the feature's last change.
public struct CohortMeans: Sendable, Hashable {
    /// Observations (a histogram's `_count`).
    public var count: Double
    /// Their sum (the histogram's `_sum`), in the quantity's unit (seconds for a latency).
    public var sum: Double
    /// The sum of their squares, or an upper bound on it: a bound widens the interval, never
    /// narrows it.
    public var sumOfSquares: Double

    public init(count: Double, sum: Double, sumOfSquares: Double) {
        self.count = count
        self.sum = sum
        self.sumOfSquares = sumOfSquares
    }

    /// An upper bound on the sum of squares from a Prometheus histogram's cumulative buckets
    /// (`le` upper bound, cumulative count), each observation counted at its bucket's upper
    /// bound; nil when some observations are above the last finite bound (no bound exists then).
    /// `_sum` and `_count` alone carry no variance, so the mean comparison needs the buckets.
    public static func secondMomentBound(buckets: [(upperBound: Double, cumulativeCount: Double)]) -> Double? {
        var bound = 0.0
        var below = 0.0
        for bucket in buckets.sorted(by: { $0.upperBound < $1.upperBound }) {
            let inBucket = max(0, bucket.cumulativeCount - below)
            below = max(below, bucket.cumulativeCount)
            guard inBucket > 0 else { continue }
            guard bucket.upperBound.isFinite else { return nil }
            bound += inBucket * bucket.upperBound * bucket.upperBound
        }
        return bound
    }
}

/// How much worse the feature's cohort may be than the rest before it counts as a regression.
public enum MaxRegression: Sendable, Hashable, CustomStringConvertible {
    /// An absolute difference of ratios, written in percentage points: `0.5pp` is `.ratio(0.005)`.
    case ratio(Double)
    /// An absolute difference of means in seconds (a latency): `50ms` is 0.05.
    case seconds(Double)
    /// A relative difference: `20%` is 0.2, a regression when on − (1 + 0.2)·off > 0.
    case relative(Double)

    /// Parses `0.5pp`, `20%`, `50ms` or `0.2s`.
    public init(parsing text: String) throws(CohortComparisonError) {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let units: [(suffix: String, make: (Double) -> MaxRegression)] = [
            ("pp", { .ratio($0 / 100) }),
            ("%", { .relative($0 / 100) }),
            ("ms", { .seconds($0 / 1000) }),
            ("s", { .seconds($0) }),
        ]
        guard let unit = units.first(where: { trimmed.hasSuffix($0.suffix) }) else {
            throw CohortComparisonError(
                "max_regression \"\(text)\" needs a unit: \"0.5pp\" (percentage points, for a ratio), \"20%\" (relative to the other cohort) or \"50ms\" (for a latency mean)"
            )
        }
        let number = String(trimmed.dropLast(unit.suffix.count)).trimmingCharacters(in: .whitespaces)
        guard let value = Self.decimal(number) else {
            throw CohortComparisonError("max_regression \"\(text)\": \"\(number)\" is not a number of \(unit.suffix) (a decimal such as 0.5; at least 0)")
        }
        self = unit.make(value)
    }

    /// A plain non-negative decimal (`0`, `12`, `0.5`): no sign, exponent, `inf` or `nan`.
    private static func decimal(_ text: String) -> Double? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard !text.isEmpty, parts.count <= 2, parts.allSatisfy({ $0.allSatisfy(\.isASCIIDigit) }), parts[0].count > 0,
            parts.count == 1 || parts[1].count > 0
        else { return nil }
        return Double(text)
    }

    /// The threshold as a policy writes it: `0.5pp`, `20%`, `50ms`.
    public var description: String {
        switch self {
        case .ratio(let value): "\(Self.format(value * 100))pp"
        case .seconds(let value): value < 1 ? "\(Self.format(value * 1000))ms" : "\(Self.format(value))s"
        case .relative(let value): "\(Self.format(value * 100))%"
        }
    }

    private static func format(_ value: Double) -> String {
        let rounded = (value * 1e9).rounded() / 1e9
        return rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)
    }

    /// The comparison as `on − factor·off` against `threshold`.
    var factor: Double {
        if case .relative(let value) = self { 1 + value } else { 1 }
    }

    var threshold: Double {
        switch self {
        case .ratio(let value), .seconds(let value): value
        case .relative: 0
        }
    }
}

extension Character {
    fileprivate var isASCIIDigit: Bool { isASCII && isNumber }
}

/// A setting of the cohort comparison that cannot be used, with what to write instead.
public struct CohortComparisonError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong and what to write instead.
    public let message: String

    init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}

/// The confidence sequence at one run, for the quantity `on − factor·off` (the difference of
/// the cohorts' ratios or means; with a relative `max_regression` of r, factor is 1 + r).
public struct CohortInterval: Sendable, Hashable {
    /// The estimate of on − factor·off.
    public let estimate: Double
    /// The interval's lower bound. The interval holds the true value at every run at once with
    /// probability at least 1 − alpha (asymptotically).
    public let lower: Double
    /// The interval's upper bound.
    public let upper: Double
    /// What the interval is compared with: max_regression for an absolute one, 0 for a
    /// relative one.
    public let threshold: Double
    /// The factor in on − factor·off: 1, or 1 + r for a relative max_regression of r.
    public let factor: Double
}

/// More requests that each cohort roughly needs before the interval can leave the threshold,
/// if the estimate and the variance stay where they are.
public struct CohortShortfall: Sendable, Hashable {
    /// More requests in the feature's cohort.
    public let on: Int
    /// More requests in the rest.
    public let off: Int
}

/// The outcome of one cohort comparison.
public enum CohortVerdict: Sendable, Hashable {
    /// Fewer than min_requests in a cohort: never a promotion, never a rollback.
    case noData(on: Double, off: Double)
    /// A latency check whose histogram has observations above its last finite bucket (counts
    /// of observations in each cohort): nothing bounds the variance, so nothing is concluded, as
    /// with no data. ``CohortCheck/judge(_:)`` finds it before the comparison.
    case unbounded(on: Double, off: Double)
    /// The whole interval lies above max_regression: the feature's cohort is worse.
    case regression(CohortInterval)
    /// The whole interval lies below max_regression: what a promotion requires.
    case healthy(CohortInterval)
    /// The interval straddles max_regression; nil when no amount of data would decide it at the
    /// current estimate (it sits on the threshold).
    case inconclusive(CohortInterval, needs: CohortShortfall?)
}

/// The settings of a cohort comparison, checked once; its two `judge(on:off:)` methods, for
/// ratios and for means, apply them.
public struct CohortComparison: Sendable, Hashable {
    /// How much worse the feature's cohort may be.
    public let maxRegression: MaxRegression
    /// The false-alarm rate over all runs together, in (0, 1).
    public let alpha: Double
    /// At least this many requests in each cohort before anything is concluded.
    public let minRequests: Int
    /// The total number of requests (both cohorts) at which the confidence sequence is tightest:
    /// its tuning parameter (GrowthBook's "sequential tuning parameter").
    public let plannedRequests: Double

    /// 100,000 requests in both cohorts: about half an hour at 50 requests per second.
    public static let defaultPlannedRequests = 100_000.0
    /// A 5% false-alarm rate.
    public static let defaultAlpha = 0.05

    public init(
        maxRegression: MaxRegression, alpha: Double = Self.defaultAlpha, minRequests: Int,
        plannedRequests: Double = Self.defaultPlannedRequests
    ) throws(CohortComparisonError) {
        guard alpha > 0, alpha < 1 else {
            throw CohortComparisonError("alpha \(alpha) must lie strictly between 0 and 1, e.g. 0.05 for a 5% false-alarm rate")
        }
        guard minRequests >= 1 else {
            throw CohortComparisonError("min_requests \(minRequests) must be at least 1 (requests per cohort, e.g. 1000)")
        }
        guard plannedRequests.isFinite, plannedRequests >= 1 else {
            throw CohortComparisonError("the planned number of requests \(plannedRequests) must be at least 1")
        }
        let value: Double
        switch maxRegression {
        case .ratio(let v), .seconds(let v), .relative(let v): value = v
        }
        guard value.isFinite, value >= 0 else {
            throw CohortComparisonError("max_regression \(maxRegression) must not be negative")
        }
        self.maxRegression = maxRegression
        self.alpha = alpha
        self.minRequests = minRequests
        self.plannedRequests = plannedRequests
    }

    /// The comparison of two failure ratios, failures / requests.
    public func judge(on: CohortCounts, off: CohortCounts) -> CohortVerdict {
        let onRequests = Self.clean(on.requests)
        let offRequests = Self.clean(off.requests)
        guard onRequests >= Double(minRequests), offRequests >= Double(minRequests) else {
            return .noData(on: onRequests, off: offRequests)
        }
        let onFailures = min(Self.clean(on.failures), onRequests)
        let offFailures = min(Self.clean(off.failures), offRequests)
        // The variance after Agresti and Caffo: one failure and one success more in each cohort,
        // so that a cohort without failures (or with nothing else) still has a width. The
        // estimate itself is the observed ratios'.
        let onAdjusted = (onFailures + 1) / (onRequests + 2)
        let offAdjusted = (offFailures + 1) / (offRequests + 2)
        return decide(
            onMean: onFailures / onRequests, onVariance: onAdjusted * (1 - onAdjusted) / (onRequests + 2),
            offMean: offFailures / offRequests, offVariance: offAdjusted * (1 - offAdjusted) / (offRequests + 2),
            onRequests: onRequests, offRequests: offRequests)
    }

    /// The comparison of two means, sum / count (a latency from a histogram).
    public func judge(on: CohortMeans, off: CohortMeans) -> CohortVerdict {
        // A sum that is not finite leaves nothing to compare: as no data.
        let sums = [on.sum, on.sumOfSquares, off.sum, off.sumOfSquares]
        let onCount = sums.allSatisfy(\.isFinite) ? Self.clean(on.count) : 0
        let offCount = sums.allSatisfy(\.isFinite) ? Self.clean(off.count) : 0
        guard onCount >= Double(minRequests), offCount >= Double(minRequests) else {
            return .noData(on: onCount, off: offCount)
        }
        let onMean = on.sum / onCount
        let offMean = off.sum / offCount
        return decide(
            onMean: onMean, onVariance: max(0, on.sumOfSquares / onCount - onMean * onMean) / onCount,
            offMean: offMean, offVariance: max(0, off.sumOfSquares / offCount - offMean * offMean) / offCount,
            onRequests: onCount, offRequests: offCount)
    }

    /// A counter's increase as a count: negative or not finite counts as nothing.
    private static func clean(_ value: Double) -> Double {
        value.isFinite && value > 0 ? value : 0
    }

    private func decide(
        onMean: Double, onVariance: Double, offMean: Double, offVariance: Double, onRequests: Double, offRequests: Double
    ) -> CohortVerdict {
        let factor = maxRegression.factor
        let threshold = maxRegression.threshold
        let total = onRequests + offRequests
        let estimate = onMean - factor * offMean
        // N times the variance of the estimate: the per-request variance the sequence scales.
        let perRequestVariance = total * (onVariance + factor * factor * offVariance)
        let rho = Self.rho(alpha: alpha, plannedRequests: plannedRequests)
        let halfWidth = Self.halfWidth(perRequestVariance: perRequestVariance, requests: total, rho: rho, alpha: alpha)
        let interval = CohortInterval(
            estimate: estimate, lower: estimate - halfWidth, upper: estimate + halfWidth, threshold: threshold, factor: factor)
        if interval.lower > threshold { return .regression(interval) }
        if interval.upper < threshold { return .healthy(interval) }
        let gap = abs(estimate - threshold)
        guard gap > 0, perRequestVariance > 0 else { return .inconclusive(interval, needs: nil) }
        // The smallest total N' whose half-width, at the same per-request variance, is below the
        // gap: doubling, then halving the bracket (the half-width falls as N grows).
        var low = total
        var high = total
        while Self.halfWidth(perRequestVariance: perRequestVariance, requests: high, rho: rho, alpha: alpha) >= gap {
            low = high
            high *= 2
            if high > 1e15 { return .inconclusive(interval, needs: nil) }
        }
        while high - low > max(1, high * 1e-4) {
            let middle = (low + high) / 2
            if Self.halfWidth(perRequestVariance: perRequestVariance, requests: middle, rho: rho, alpha: alpha) >= gap {
                low = middle
            } else {
                high = middle
            }
        }
        let more = high - total
        let needs = CohortShortfall(
            on: Int((more * onRequests / total).rounded(.up)), off: Int((more * offRequests / total).rounded(.up)))
        return .inconclusive(interval, needs: needs)
    }

    /// The mixture parameter ρ for which the sequence is tightest at `plannedRequests`
    /// (Waudby-Smith et al., the two-sided form GrowthBook uses):
    /// ρ = sqrt((−2 ln α + ln(−2 ln α + 1)) / N*).
    public static func rho(alpha: Double, plannedRequests: Double) -> Double {
        let logAlpha = log(alpha)
        return ((-2 * logAlpha + log(-2 * logAlpha + 1)) / plannedRequests).squareRoot()
    }

    /// The half-width of the asymptotic confidence sequence after `requests` requests (both
    /// cohorts), with σ² the per-request variance (N times the variance of the estimate):
    /// σ · sqrt( 2 (N ρ² + 1) / (N² ρ²) · ln( sqrt(N ρ² + 1) / α ) ).
    public static func halfWidth(perRequestVariance: Double, requests: Double, rho: Double, alpha: Double) -> Double {
        let nRho2 = requests * rho * rho
        let boundary = 2 * (nRho2 + 1) / (requests * requests * rho * rho) * log((nRho2 + 1).squareRoot() / alpha)
        return (perRequestVariance * boundary).squareRoot()
    }

    /// The same ratio comparison with the settings checked first.
    public static func judge(
        on: CohortCounts, off: CohortCounts, maxRegression: MaxRegression, alpha: Double, minRequests: Int
    ) throws(CohortComparisonError) -> CohortVerdict {
        try CohortComparison(maxRegression: maxRegression, alpha: alpha, minRequests: minRequests).judge(on: on, off: off)
    }
}
