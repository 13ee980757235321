public import RolloutGate
import Foundation
import Yams

/// A cohort check (`type: cohort`): the failure ratio (or a latency mean) of the feature's own
/// cohort (subjects it is on for) against the rest's, since the feature's last change, judged by
/// an always-valid confidence sequence (``CohortComparison``). Both cohorts share every outside
/// influence, so a database blip moves both and rolls nothing back, while a new code path that
/// doubles its users' failures is caught at 10% although the service-wide rate barely moves.
public struct CohortCheck: Sendable, Hashable {
    /// Its name in output, JSON and telemetry.
    public var name: String
    /// What is compared, and the queries that count it.
    public var measure: Measure
    /// max_regression, alpha and min_requests, checked.
    public var comparison: CohortComparison
    /// What a regression does: rollback (the default), hold or alert.
    public var onViolation: FeaturePolicy.Check.Action
    /// A regression acts only after this many consecutive runs that found one.
    public var consecutive: Int

    /// What a cohort check compares.
    public enum Measure: Sendable, Hashable {
        /// The failure ratio: the failures and requests queries, PromQL with `$cohort` (`on` or
        /// `off`) and `$window` (the seconds since the last change, `[$window]` becomes `[1800s]`).
        case failureRatio(failures: String, requests: String)
        /// The mean of a histogram's observations (a latency, in seconds): its base name and the
        /// selector (with `$cohort`) its `_count`, `_sum` and `_bucket` series are read with.
        case latency(histogram: String, selector: String)
    }

    /// One of the series a cohort check queries per cohort.
    public enum Series: String, Sendable, Hashable, CaseIterable {
        /// A failure ratio's failures and requests.
        case failures, requests
        /// A histogram's observations, their sum, and its cumulative buckets by `le` (a vector).
        case count, sum, buckets
    }

    /// The query templates, in the order they are sent, with `$cohort` and `$window` unfilled.
    public var templates: [(series: Series, template: String)] {
        switch measure {
        case .failureRatio(let failures, let requests):
            return [(.failures, failures), (.requests, requests)]
        case .latency(let histogram, let selector):
            return [
                (.count, "sum(increase(\(histogram)_count\(selector)[$window]))"),
                (.sum, "sum(increase(\(histogram)_sum\(selector)[$window]))"),
                (.buckets, "sum by (le) (increase(\(histogram)_bucket\(selector)[$window]))"),
            ]
        }
    }

    /// The template of `series`, nil when the check does not query it.
    public func template(_ series: Series) -> String? {
        templates.first { $0.series == series }?.template
    }

    /// Every query for both cohorts over `window`, filled: what a run and `rollout compare` send.
    public func queries(window: Duration) -> [(cohort: Cohort, series: Series, query: String)] {
        Cohort.allCases.flatMap { cohort in
            templates.map { (cohort, $0.series, Self.query($0.template, cohort: cohort, window: window)) }
        }
    }

    /// The answers from each query's result (`value` for a single value, nil no data; `samples`
    /// for the buckets' vector).
    public func answers(
        value: (Cohort, Series) -> Double?, samples: (Cohort) -> [PrometheusSample]
    ) -> CohortAnswers {
        switch measure {
        case .failureRatio:
            return CohortAnswers(
                onFailures: value(.on, .failures), onRequests: value(.on, .requests),
                offFailures: value(.off, .failures), offRequests: value(.off, .requests))
        case .latency:
            func histogram(_ cohort: Cohort) -> HistogramAnswers {
                HistogramAnswers(count: value(cohort, .count), sum: value(cohort, .sum), buckets: HistogramAnswers.buckets(samples(cohort)))
            }
            return CohortAnswers(on: histogram(.on), off: histogram(.off))
        }
    }

    /// The series `FeatureHandle.record(_:failed:duration:)` writes, for `feature`.
    static func defaultQueries(for feature: FeatureName) -> (failures: String, requests: String) {
        let selector = "{feature=\"\(feature.rawValue)\",cohort=\"$cohort\"}[$window]"
        return ("sum(increase(rollout_cohort_failures_total\(selector)))", "sum(increase(rollout_cohort_requests_total\(selector)))")
    }

    /// A query with its placeholders filled: the cohort, and the window in whole seconds (at
    /// least 1: Prometheus refuses an empty range).
    public static func query(_ template: String, cohort: Cohort, window: Duration) -> String {
        let seconds = max(1, window.components.seconds)
        return template.replacingOccurrences(of: "$cohort", with: cohort.rawValue).replacingOccurrences(of: "$window", with: "\(seconds)s")
    }

    /// The check's verdict from its answers (nil: Prometheus had no data, read as no requests or
    /// observations: a cohort nobody was recorded in has no series yet).
    public func judge(_ answers: CohortAnswers) -> CohortVerdict {
        switch measure {
        case .failureRatio:
            return comparison.judge(
                on: CohortCounts(requests: answers.onRequests ?? 0, failures: answers.onFailures ?? 0),
                off: CohortCounts(requests: answers.offRequests ?? 0, failures: answers.offFailures ?? 0))
        case .latency:
            let on = answers.onHistogram ?? HistogramAnswers()
            let off = answers.offHistogram ?? HistogramAnswers()
            // Observations above the last finite bucket (or in no bucket) leave the variance unbounded.
            guard let onSquares = on.sumOfSquaresBound, let offSquares = off.sumOfSquaresBound else { return .unbounded(on: max(0, on.count ?? 0), off: max(0, off.count ?? 0)) }
            return comparison.judge(
                on: CohortMeans(count: on.count ?? 0, sum: on.sum ?? 0, sumOfSquares: onSquares),
                off: CohortMeans(count: off.count ?? 0, sum: off.sum ?? 0, sumOfSquares: offSquares))
        }
    }

    /// Whether the check compares means in seconds (a latency) rather than ratios.
    public var comparesLatency: Bool {
        if case .latency = measure { true } else { false }
    }

    init?(_ item: Node, at place: String, feature: FeatureName, reader: inout NodeReader) {
        guard
            let check = reader.mapping(
                item, at: place, known: ["name", "type", "failures", "requests", "latency", "max_regression", "alpha", "min_requests", "on_violation", "consecutive"])
        else { return nil }
        let problemsBefore = reader.problems.count
        let name = check["name"].flatMap { reader.string($0, at: "\(place).name") }
        if check["name"] == nil { reader.fail("\(place).name", "is required") }
        let defaults = Self.defaultQueries(for: feature)
        let latency = check["latency"].flatMap { reader.string($0, at: "\(place).latency") }.flatMap {
            Self.histogram($0, feature: feature, at: "\(place).latency", reader: &reader)
        }
        if check["latency"] != nil, check["failures"] != nil || check["requests"] != nil {
            reader.fail(place, "has latency: and failures:/requests:; a cohort check compares either a latency mean or a failure ratio: split it into two checks")
        }
        let failures = check["failures"].map { reader.query($0, at: "\(place).failures") } ?? defaults.failures
        let requests = check["requests"].map { reader.query($0, at: "\(place).requests") } ?? defaults.requests
        if (check["failures"] == nil) != (check["requests"] == nil) {
            reader.fail(place, "has only one of failures: and requests:; write both (a counter pair), or neither for the gate's cohort counters")
        }
        for (key, query) in [("failures", failures), ("requests", requests)] {
            guard let query else { continue }
            for placeholder in ["$cohort", "$window"] where !query.contains(placeholder) {
                reader.fail(
                    "\(place).\(key)",
                    placeholder == "$cohort"
                        ? "has no $cohort: select the cohort with cohort=\"$cohort\" so each cohort can be queried"
                        : "has no $window: count since the last change with increase(...[$window]), the step's own evidence")
            }
        }
        let isLatency = check["latency"] != nil
        var maxRegression: MaxRegression?
        if let node = check["max_regression"], let text = reader.string(node, at: "\(place).max_regression") {
            do {
                let parsed = try MaxRegression(parsing: text)
                switch (parsed, isLatency) {
                case (.seconds, false):
                    reader.fail(
                        "\(place).max_regression",
                        "is \(text), a latency; this cohort check compares failure ratios: write percentage points (0.5pp) or a relative change (20%), or compare a histogram with latency:")
                case (.ratio, true):
                    reader.fail(
                        "\(place).max_regression", "is \(text), percentage points; a latency check compares means: write a duration (50ms, 0.2s) or a relative change (20%)")
                default:
                    maxRegression = parsed
                }
            } catch {
                reader.fail("\(place).max_regression", error.message)
            }
        } else if check["max_regression"] == nil {
            reader.fail("\(place).max_regression", "is required: how much worse the feature's cohort may be, e.g. \(isLatency ? "50ms" : "0.5pp") or 20%")
        }
        let alpha = check["alpha"].flatMap { reader.number($0, at: "\(place).alpha") } ?? CohortComparison.defaultAlpha
        let minRequests = check["min_requests"].flatMap { reader.count($0, at: "\(place).min_requests", minimum: 1) } ?? 1000
        onViolation = check["on_violation"].flatMap { reader.action($0, at: "\(place).on_violation") } ?? .rollback
        consecutive = check["consecutive"].flatMap { reader.count($0, at: "\(place).consecutive", minimum: 1) } ?? 1
        var comparison: CohortComparison?
        if let maxRegression {
            do {
                comparison = try CohortComparison(maxRegression: maxRegression, alpha: alpha, minRequests: minRequests)
            } catch {
                reader.fail(place, error.message)
            }
        }
        guard let name, let failures, let requests, let comparison, reader.problems.count == problemsBefore else { return nil }
        self.name = name
        if isLatency {
            guard let latency else { return nil }
            measure = .latency(histogram: latency.histogram, selector: latency.selector)
        } else {
            measure = .failureRatio(failures: failures, requests: requests)
        }
        self.comparison = comparison
    }

    /// A `latency:` value, `name` or `name{selector with $cohort}`, as the histogram's base name
    /// and selector (by default the gate's: this feature, `$cohort`).
    private static func histogram(
        _ text: String, feature: FeatureName, at place: String, reader: inout NodeReader
    ) -> (histogram: String, selector: String)? {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let name = String(trimmed.prefix { $0 != "{" })
        let selector = String(trimmed.dropFirst(name.count))
        let isName =
            name.first.map { $0.isASCII && ($0.isLetter || $0 == "_" || $0 == ":") } ?? false
            && name.allSatisfy { $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == ":") }
        guard isName else {
            reader.fail(place, "is \"\(text)\"; write a histogram's base name, e.g. rollout_cohort_duration_seconds, optionally with a selector {job=\"api\",cohort=\"$cohort\"}")
            return nil
        }
        if let suffix = ["_bucket", "_count", "_sum"].first(where: name.hasSuffix) {
            reader.fail(place, "is \(name), a histogram's \(suffix) series; write its base name \(name.dropLast(suffix.count)): the check reads _count, _sum and _bucket")
            return nil
        }
        if selector.isEmpty { return (name, "{feature=\"\(feature.rawValue)\",cohort=\"$cohort\"}") }
        guard selector.hasSuffix("}"), selector.count >= 2 else {
            reader.fail(place, "has the selector \(selector), which does not end with }; write e.g. \(name){job=\"api\",cohort=\"$cohort\"}")
            return nil
        }
        guard selector.contains("$cohort") else {
            reader.fail(place, "has no $cohort in its selector: select the cohort with cohort=\"$cohort\" so each cohort can be queried")
            return nil
        }
        return (name, selector)
    }
}

/// What Prometheus answered to a latency cohort check's queries for one cohort: the histogram's
/// observations and their sum since the last change (nil: no data), and its cumulative buckets.
public struct HistogramAnswers: Sendable, Hashable {
    public var count: Double?
    public var sum: Double?
    /// The cumulative count of each bucket by its upper bound (`le`, `+Inf` infinite).
    public var buckets: [Double: Double]

    public init(count: Double? = nil, sum: Double? = nil, buckets: [Double: Double] = [:]) {
        self.count = count
        self.sum = sum
        self.buckets = buckets
    }

    /// The bound on the observations' sum of squares the buckets give
    /// (``CohortMeans/secondMomentBound(buckets:)``); nil when some lie above the last finite
    /// bucket, or without a `+Inf` bucket (no `_bucket` series, as for a summary): never a
    /// zero variance from buckets that are not there. The buckets come from one query, so they
    /// agree with one another; `count` comes from another, evaluated a moment later or earlier
    /// (`increase()` extrapolates each series to its own evaluation time), so the bound is
    /// scaled up to `count` when that is the larger: an upper bound still.
    var sumOfSquaresBound: Double? {
        guard let total = buckets[.infinity], total > 0, let bound = CohortMeans.secondMomentBound(buckets: buckets.map { ($0.key, $0.value) })
        else { return nil }
        return bound * max(1, max(0, count ?? 0) / total)
    }

    /// The buckets of a `sum by (le) (...)` answer; a sample without a readable `le` is left out.
    public static func buckets(_ samples: [PrometheusSample]) -> [Double: Double] {
        let bounds = samples.compactMap { sample -> (Double, Double)? in
            guard let text = sample.labels["le"] else { return nil }
            return (text == "+Inf" ? Double.infinity : Double(text)).map { ($0, sample.value) }
        }
        return Dictionary(bounds, uniquingKeysWith: +)
    }
}

/// What Prometheus answered to a cohort check's queries: a failure-ratio check's four counts,
/// or a latency check's histogram of each cohort; nil is no data.
public struct CohortAnswers: Sendable, Hashable {
    public var onFailures: Double?
    public var onRequests: Double?
    public var offFailures: Double?
    public var offRequests: Double?
    /// A latency check's answers: each cohort's histogram.
    public var onHistogram: HistogramAnswers?
    public var offHistogram: HistogramAnswers?

    /// The answers.
    public init(onFailures: Double?, onRequests: Double?, offFailures: Double?, offRequests: Double?) {
        self.onFailures = onFailures
        self.onRequests = onRequests
        self.offFailures = offFailures
        self.offRequests = offRequests
    }

    /// A latency check's answers.
    public init(on: HistogramAnswers, off: HistogramAnswers) {
        onHistogram = on
        offHistogram = off
    }

    /// The smallest answer below zero, if any: a counter's increase never is (nor a latency
    /// histogram's count, sum or bucket).
    var negative: Double? {
        let histograms: [Double?] = [onHistogram, offHistogram].compactMap { $0 }.flatMap { histogram -> [Double?] in
            [histogram.count, histogram.sum] + histogram.buckets.values.map { $0 }
        }
        return ([onFailures, onRequests, offFailures, offRequests] + histograms).compactMap { $0 }.filter(isInvalid).min()
    }
}

extension CohortVerdict {
    /// A stable word for scripts: `regression`, `healthy`, `inconclusive` or `no_data`.
    public var code: String {
        switch self {
        case .noData, .unbounded: return "no_data"
        case .regression: return "regression"
        case .healthy: return "healthy"
        case .inconclusive: return "inconclusive"
        }
    }

    /// The interval, nil without enough data.
    public var interval: CohortInterval? {
        switch self {
        case .noData, .unbounded: return nil
        case .regression(let interval), .healthy(let interval), .inconclusive(let interval, _): return interval
        }
    }

    /// One line for people: the interval against max_regression, and what it means; a latency
    /// check's in milliseconds.
    public func summary(of check: CohortCheck) -> String {
        let threshold = check.comparison.maxRegression
        let latency = check.comparesLatency
        let unit = latency ? "ms" : "pp"
        let scale = latency ? 1000.0 : 100.0
        let counted = latency ? "observations" : "requests"
        func bounds(_ interval: CohortInterval) -> String {
            "[\(format(scale * interval.lower))\(unit), \(format(scale * interval.upper))\(unit)]"
        }
        let factor = check.comparison.maxRegression.factor
        let difference = (latency ? "mean " : "") + (factor == 1 ? "on - off" : "on - \(format(factor)) x off")
        switch self {
        case .noData(let on, let off):
            return "too few \(counted): on \(format(on.rounded())), off \(format(off.rounded())), min_requests \(check.comparison.minRequests) in each"
        case .unbounded(let on, let off):
            return "observations lie above the histogram's last finite bucket, or in none of its buckets (on \(format(on.rounded())), off \(format(off.rounded())) observations), "
                + "so nothing bounds their variance and the means cannot be compared; add a larger bucket (or compare a histogram with _bucket series)"
        case .regression(let interval):
            return "\(difference) in \(bounds(interval)), above max_regression \(threshold): a regression"
        case .healthy(let interval):
            return "\(difference) in \(bounds(interval)), below max_regression \(threshold)"
        case .inconclusive(let interval, let needs):
            let more = needs.map { "; roughly \($0.on) more \(counted) in the on cohort and \($0.off) in the off cohort would decide it" } ?? ""
            return "\(difference) in \(bounds(interval)) straddles max_regression \(threshold)\(more)"
        }
    }

    /// The estimate the check reports as its value (on − factor·off), nil without enough data.
    var estimate: Double? { interval?.estimate }
}
