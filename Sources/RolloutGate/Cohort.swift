import Metrics
import Synchronization

/// The two groups a rollout splits subjects into: those the feature is on for, and the rest.
/// Comparing them (the same traffic, the same outside influences) is how the controller's
/// `cohort` check judges a feature by its own users (docs/controller.md).
public enum Cohort: String, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    /// The feature is on for the subject.
    case on
    /// The feature is off for the subject.
    case off

    public var description: String { rawValue }
}

extension Decision {
    /// The subject's cohort, `on` or `off`: a label for the service's own request metrics.
    public var cohort: Cohort { isOn ? .on : .off }

    /// Whether the bucket rule placed the subject in its cohort: the only decisions a cohort
    /// comparison may count. Allow and deny lists, internal-only, the kill switch and
    /// anonymous subjects choose who is on by something other than chance, so their requests
    /// would make the cohorts differ in more than the feature. (Under v1 an anonymous subject
    /// is bucketed as `anon`, but all of them share that one bucket: ``isAnonymous``.)
    public var isBucketed: Bool {
        if case .bucket = reason { return !isAnonymous }
        return false
    }
}

extension FeatureHandle {
    /// Counts one request made under `decision` (this feature's), whether it failed and how
    /// long it took, in `rollout_cohort_requests_total{feature,cohort}`,
    /// `rollout_cohort_failures_total{feature,cohort}` and the
    /// `rollout_cohort_duration_seconds{feature,cohort}` histogram: what the controller's
    /// `cohort` check compares. Only decisions of the bucket rule count (``Decision/isBucketed``).
    /// Lock-free, like the check itself: the counts go to per-thread cells and reach
    /// swift-metrics within the gate's refresh interval (or at `refresh()`).
    public func record(_ decision: Decision, failed: Bool, duration: Duration) {
        guard decision.isBucketed else { return }
        gate.readSide.read { stripe in
            _ = slot.entry.withCurrent { $0.tally.record(decision.cohort, failed: failed, duration: duration, stripe: stripe) }
        }
    }
}

extension FeatureGate {
    /// Counts one request made under `decision` for `feature`: ``FeatureHandle/record(_:failed:duration:)``
    /// with a lookup by name.
    public func record(_ decision: Decision, of feature: FeatureName, failed: Bool, duration: Duration) {
        guard decision.isBucketed else { return }
        readSide.read { stripe in
            guard let entry = published.withCurrent({ $0.entry(named: feature) }) ?? nil else { return }
            entry._withUnsafeGuaranteedRef { $0.tally.record(decision.cohort, failed: failed, duration: duration, stripe: stripe) }
        }
    }
}

/// One feature's cohort counts: per cohort, requests, failures, the sum of durations and a
/// histogram of them, in striped cells (``StripedCounts``) written by the requests' threads and
/// moved into swift-metrics by the refresher.
///
/// swift-metrics has no way to add many observations to a histogram at once, and one call per
/// request would take the backend's lock on the hot path; so the histogram reaches the backend
/// as what Prometheus stores for one: cumulative `_bucket{le}` counters, `_sum` and `_count`.
package final class CohortTally: Sendable {
    /// Upper bounds of the duration buckets, in nanoseconds: Prometheus's default buckets,
    /// 5 ms to 10 s (anything slower counts only in `+Inf`).
    package static let bucketBounds: [Int64] = [
        5_000_000, 10_000_000, 25_000_000, 50_000_000, 100_000_000, 250_000_000, 500_000_000,
        1_000_000_000, 2_500_000_000, 5_000_000_000, 10_000_000_000,
    ]
    // Per cohort: requests, failures, duration sum (ns), then one count per bucket (not cumulative).
    private static let requests = 0, failures = 1, durationSum = 2, firstBucket = 3
    private static let perCohort = firstBucket + bucketBounds.count

    private let counts = StripedCounts(width: 2 * perCohort)
    private let feature: FeatureName
    // Made by the first flush that has something to report, on the refresher: a cohort
    // nobody recorded has no series, and no metrics backend is called on the hot path.
    private let metrics = Mutex<[Cohort: CohortMetrics]>([:])

    init(feature: FeatureName) { self.feature = feature }

    @inline(__always)
    func record(_ cohort: Cohort, failed: Bool, duration: Duration, stripe: Int) {
        let base = cohort == .on ? 0 : Self.perCohort
        let nanoseconds = max(0, duration.wholeNanoseconds)
        counts.add(to: base + Self.requests, stripe: stripe)
        if failed { counts.add(to: base + Self.failures, stripe: stripe) }
        counts.add(UInt64(nanoseconds), to: base + Self.durationSum, stripe: stripe)
        if let bucket = Self.bucket(ofNanoseconds: nanoseconds) {
            counts.add(to: base + Self.firstBucket + bucket, stripe: stripe)
        }
    }

    /// The index in ``bucketBounds`` of the first bound at or above `nanoseconds`; nil above
    /// the last. The bounds as literals: an array read here would be retained and released by
    /// every request, a write to one cache line all threads share (a test holds the two equal).
    @inline(__always)
    package static func bucket(ofNanoseconds nanoseconds: Int64) -> Int? {
        if nanoseconds <= 50_000_000 {
            if nanoseconds <= 5_000_000 { return 0 }
            if nanoseconds <= 10_000_000 { return 1 }
            return nanoseconds <= 25_000_000 ? 2 : 3
        }
        if nanoseconds <= 1_000_000_000 {
            if nanoseconds <= 100_000_000 { return 4 }
            if nanoseconds <= 250_000_000 { return 5 }
            return nanoseconds <= 500_000_000 ? 6 : 7
        }
        if nanoseconds <= 2_500_000_000 { return 8 }
        if nanoseconds <= 5_000_000_000 { return 9 }
        return nanoseconds <= 10_000_000_000 ? 10 : nil
    }

    /// Moves what was counted since the last flush into swift-metrics.
    func flush() {
        let grown = counts.take()
        for cohort in Cohort.allCases {
            let base = cohort == .on ? 0 : Self.perCohort
            let requests = grown[base + Self.requests]
            guard requests > 0 else { continue }
            let metrics = self.metrics.withLock { made in
                if let metrics = made[cohort] { return metrics }
                let metrics = CohortMetrics(feature: feature, cohort: cohort)
                made[cohort] = metrics
                return metrics
            }
            metrics.requests.increment(by: Int(truncatingIfNeeded: requests))
            metrics.count.increment(by: Int(truncatingIfNeeded: requests))
            metrics.infinityBucket.increment(by: Int(truncatingIfNeeded: requests))
            let failures = grown[base + Self.failures]
            if failures > 0 { metrics.failures.increment(by: Int(truncatingIfNeeded: failures)) }
            metrics.sum.increment(by: Double(grown[base + Self.durationSum]) / 1e9)
            var cumulative: UInt64 = 0
            for (index, bucket) in metrics.buckets.enumerated() {
                cumulative &+= grown[base + Self.firstBucket + index]
                if cumulative > 0 { bucket.increment(by: Int(truncatingIfNeeded: cumulative)) }
            }
        }
    }
}

/// The swift-metrics series of one feature's cohort.
private struct CohortMetrics: Sendable {
    let requests: Counter
    let failures: Counter
    let buckets: [Counter]
    let infinityBucket: Counter
    let sum: FloatingPointCounter
    let count: Counter

    init(feature: FeatureName, cohort: Cohort) {
        let labels = [("feature", feature.rawValue), ("cohort", cohort.rawValue)]
        requests = Counter(label: "rollout_cohort_requests_total", dimensions: labels)
        failures = Counter(label: "rollout_cohort_failures_total", dimensions: labels)
        buckets = CohortTally.bucketBounds.map { bound in
            Counter(label: "rollout_cohort_duration_seconds_bucket", dimensions: labels + [("le", Self.seconds(bound))])
        }
        infinityBucket = Counter(label: "rollout_cohort_duration_seconds_bucket", dimensions: labels + [("le", "+Inf")])
        sum = FloatingPointCounter(label: "rollout_cohort_duration_seconds_sum", dimensions: labels)
        count = Counter(label: "rollout_cohort_duration_seconds_count", dimensions: labels)
    }

    /// A bucket bound as Prometheus writes `le`: seconds, shortest form (`0.005`, `1`, `2.5`).
    private static func seconds(_ nanoseconds: Int64) -> String {
        let seconds = Double(nanoseconds) / 1e9
        return seconds == seconds.rounded() ? String(Int64(seconds)) : String(seconds)
    }
}
