public import RolloutGate
import Foundation
import Yams

/// A cohort check (`type: cohort`): the failure ratio of the feature's own cohort (subjects it
/// is on for) against the rest's, since the feature's last change, judged by an always-valid
/// confidence sequence (``CohortComparison``). Both cohorts share every outside influence, so a
/// database blip moves both and rolls nothing back, while a new code path that doubles its
/// users' failures is caught at 10% although the service-wide rate barely moves.
public struct CohortCheck: Sendable, Hashable {
    /// Its name in output, JSON and telemetry.
    public var name: String
    /// The failures query: PromQL with `$cohort` (`on` or `off`) and `$window` (the seconds
    /// since the last change, `[$window]` becomes `[1800s]`).
    public var failures: String
    /// The requests query, with the same placeholders.
    public var requests: String
    /// max_regression, alpha and min_requests, checked.
    public var comparison: CohortComparison
    /// What a regression does: rollback (the default), hold or alert.
    public var onViolation: FeaturePolicy.Check.Action
    /// A regression acts only after this many consecutive runs that found one.
    public var consecutive: Int

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

    /// The check's verdict from the four answers (nil: Prometheus had no data, read as no
    /// requests: a cohort nobody was recorded in has no series yet).
    public func judge(_ answers: CohortAnswers) -> CohortVerdict {
        comparison.judge(
            on: CohortCounts(requests: answers.onRequests ?? 0, failures: answers.onFailures ?? 0),
            off: CohortCounts(requests: answers.offRequests ?? 0, failures: answers.offFailures ?? 0))
    }

    init?(_ item: Node, at place: String, feature: FeatureName, reader: inout NodeReader) {
        guard
            let check = reader.mapping(
                item, at: place, known: ["name", "type", "failures", "requests", "max_regression", "alpha", "min_requests", "on_violation", "consecutive"])
        else { return nil }
        let problemsBefore = reader.problems.count
        let name = check["name"].flatMap { reader.string($0, at: "\(place).name") }
        if check["name"] == nil { reader.fail("\(place).name", "is required") }
        let defaults = Self.defaultQueries(for: feature)
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
        var maxRegression: MaxRegression?
        if let node = check["max_regression"], let text = reader.string(node, at: "\(place).max_regression") {
            do {
                let parsed = try MaxRegression(parsing: text)
                if case .seconds = parsed {
                    reader.fail("\(place).max_regression", "is \(text), a latency; a cohort check compares failure ratios: write percentage points (0.5pp) or a relative change (20%)")
                } else {
                    maxRegression = parsed
                }
            } catch {
                reader.fail("\(place).max_regression", error.message)
            }
        } else if check["max_regression"] == nil {
            reader.fail("\(place).max_regression", "is required: how much worse the feature's cohort may be, e.g. 0.5pp or 20%")
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
        self.failures = failures
        self.requests = requests
        self.comparison = comparison
    }
}

/// What Prometheus answered to a cohort check's four queries; nil is no data.
public struct CohortAnswers: Sendable, Hashable {
    public var onFailures: Double?
    public var onRequests: Double?
    public var offFailures: Double?
    public var offRequests: Double?

    /// The answers.
    public init(onFailures: Double?, onRequests: Double?, offFailures: Double?, offRequests: Double?) {
        self.onFailures = onFailures
        self.onRequests = onRequests
        self.offFailures = offFailures
        self.offRequests = offRequests
    }

    /// The smallest answer below zero, if any: a counter's increase never is.
    var negative: Double? {
        [onFailures, onRequests, offFailures, offRequests].compactMap { $0 }.filter(isInvalid).min()
    }
}

extension CohortVerdict {
    /// A stable word for scripts: `regression`, `healthy`, `inconclusive` or `no_data`.
    public var code: String {
        switch self {
        case .noData: return "no_data"
        case .regression: return "regression"
        case .healthy: return "healthy"
        case .inconclusive: return "inconclusive"
        }
    }

    /// The interval, nil without enough data.
    public var interval: CohortInterval? {
        switch self {
        case .noData: return nil
        case .regression(let interval), .healthy(let interval), .inconclusive(let interval, _): return interval
        }
    }

    /// One line for people: the interval against max_regression, and what it means.
    public func summary(of check: CohortCheck) -> String {
        let threshold = check.comparison.maxRegression
        func bounds(_ interval: CohortInterval) -> String {
            "[\(format(100 * interval.lower))pp, \(format(100 * interval.upper))pp]"
        }
        let difference = check.comparison.maxRegression.factor == 1 ? "on - off" : "on - \(format(check.comparison.maxRegression.factor)) x off"
        switch self {
        case .noData(let on, let off):
            return "too few requests: on \(format(on.rounded())), off \(format(off.rounded())), min_requests \(check.comparison.minRequests) in each"
        case .regression(let interval):
            return "\(difference) in \(bounds(interval)), above max_regression \(threshold): a regression"
        case .healthy(let interval):
            return "\(difference) in \(bounds(interval)), below max_regression \(threshold)"
        case .inconclusive(let interval, let needs):
            let more = needs.map { "; roughly \($0.on) more requests in the on cohort and \($0.off) in the off cohort would decide it" } ?? ""
            return "\(difference) in \(bounds(interval)) straddles max_regression \(threshold)\(more)"
        }
    }

    /// The estimate the check reports as its value (on − factor·off), nil without enough data.
    var estimate: Double? { interval?.estimate }
}
