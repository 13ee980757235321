import Foundation
import RolloutAdmin
import RolloutAudit
public import RolloutController
import RolloutGate
import RolloutRedis

/// What `GET /v1/features/{feature}/history` draws the checks from: the policy given to
/// `rollout serve --config` and a Prometheus client of its own (the webhook's controller keeps
/// its client to itself, and a dashboard's range queries never take its bulkhead's places).
public struct CheckHistory: Sendable {
    /// The policy: each feature's checks and their queries.
    public let policy: ControllerPolicy
    let prometheus: PrometheusClient

    /// The most points a check's series has: the step is the window over this, in whole seconds.
    static let points = 300

    /// A history read with `policy`'s Prometheus, its `query_timeout` per attempt.
    public init(policy: ControllerPolicy) {
        self.policy = policy
        prometheus = PrometheusClient(
            base: policy.prometheus, timeout: policy.queryTimeout, guards: EndpointGuard(name: "prometheus-history", maxConcurrentCalls: 8))
    }

    /// A history of the checks of `webhook`'s policy.
    init(webhook: AlertWebhook) { self.init(policy: webhook.controller.policy) }

    /// The queries drawn for `feature`: each threshold check's, and each burn-rate check's error
    /// ratio over its shortest window. Cohort checks are left out: their evidence is counted since
    /// the last change, not a value over time.
    static func queries(of feature: FeaturePolicy) -> [(name: String, query: String)] {
        feature.checks.map { ($0.name, $0.query) }
            + feature.burnRateChecks.compactMap { check in check.distinctWindows.min().map { (check.name, check.query(window: $0)) } }
    }

    /// The step of a window: the window over ``points``, rounded up to whole seconds.
    static func step(from since: Timestamp, to until: Timestamp) -> Duration {
        let micros = max(0, until.microsecondsSinceEpoch - since.microsecondsSinceEpoch)
        let perPoint = Int64(points) * 1_000_000
        return .seconds(max(1, (micros + perPoint - 1) / perPoint))
    }

    /// Each check of `feature` (none when the policy does not have it) over the window, at once;
    /// a query that fails carries its error and no points.
    func checks(of feature: FeatureName, since: Timestamp, until: Timestamp) async -> [CheckSeriesJSON] {
        guard let policy = policy.features.first(where: { $0.feature == feature }) else { return [] }
        let queries = Self.queries(of: policy)
        let step = Self.step(from: since, to: until)
        let deadline = ContinuousClock.now.advanced(by: prometheus.longestQuery)
        return await withTaskGroup(of: (Int, CheckSeriesJSON).self) { group in
            for (index, query) in queries.enumerated() {
                group.addTask { [prometheus] in
                    (index, await checkSeries(query.name, query.query, from: prometheus, since: since, until: until, step: step, deadline: deadline))
                }
            }
            var answers: [(Int, CheckSeriesJSON)] = []
            for await answer in group { answers.append(answer) }
            return answers.sorted { $0.0 < $1.0 }.map(\.1)
        }
    }
}

/// One check's series, or its error. Assigned, then returned after the block (no return from
/// inside a typed-throws `do` in async code).
private func checkSeries(
    _ name: String, _ query: String, from prometheus: PrometheusClient, since: Timestamp, until: Timestamp, step: Duration,
    deadline: ContinuousClock.Instant
) async -> CheckSeriesJSON {
    var answer = CheckSeriesJSON(name: name, query: query, points: [], error: nil)
    do throws(PrometheusError) {
        let series = try await prometheus.range(of: query, start: since, end: until, step: step, deadline: deadline)
        if series.count > 1 {
            answer.error = "The query returns \(series.count) series; a check needs one value. Aggregate it, e.g. with sum(...)."
        } else {
            answer.points = series.first?.points.map { [$0.time, $0.value] } ?? []
        }
    } catch {
        // The message names the query and Prometheus's URL, which never carries credentials.
        answer.error = error.message
    }
    return answer
}

/// A feature's percent over a window, built from its audit records: the percent at `since`,
/// each percent change inside the window, and the current percent at `until`.
enum PercentHistory {
    /// The points, oldest first. `records` are the feature's, newest first (as the trail reads
    /// them); only percent changes (`a% -> b%`) made inside the window count. The percent at
    /// `since` is the `from` of the first change inside it, or, without one, `current` (the
    /// percent now; nil when the feature's state is invalid: then the last change's `to`, and
    /// without any, no point at all). A change is a rollback when it lowered the percent.
    static func points(newestFirst records: [AuditRecord], current: RolloutPercent?, since: Timestamp, until: Timestamp) -> [PercentPointJSON] {
        let changes = records.reversed().compactMap { record -> (AuditRecord, RolloutPercent, RolloutPercent)? in
            guard record.time >= since, record.time <= until, let change = record.percentChange else { return nil }
            return (record, change.from, change.to)
        }
        guard let start = changes.first?.1 ?? current else { return [] }
        var points = [PercentPointJSON(time: since, percent: start)]
        for (record, from, to) in changes {
            points.append(PercentPointJSON(time: record.time, percent: to, by: record.by, reason: record.reason, rollback: to < from))
        }
        if let end = current ?? changes.last?.2 { points.append(PercentPointJSON(time: until, percent: end)) }
        return points
    }
}

/// `GET /v1/features/{feature}/history`.
struct HistoryAnswer: Encodable {
    let feature: String
    let since: String
    let until: String
    let percent: [PercentPointJSON]
    let checks: [CheckSeriesJSON]
}

/// One point of the percent: a change (with `by` and `reason`), or the window's edges (without).
struct PercentPointJSON: Encodable, Equatable {
    let time: String
    let percent: Double
    let by: String?
    let reason: String?
    let rollback: Bool

    init(time: Timestamp, percent: RolloutPercent, by: String? = nil, reason: String? = nil, rollback: Bool = false) {
        self.time = time.description
        self.percent = Double(percent.thousandths) / 1000
        self.by = by
        self.reason = reason
        self.rollback = rollback
    }
}

/// One check over the window: `[unix seconds, value]` points, or the error of its query.
struct CheckSeriesJSON: Encodable, Equatable {
    let name: String
    let query: String
    var points: [[Double]]
    var error: String?
}
