import ArgumentParser
import RolloutAdmin
import RolloutAudit
import RolloutController
import RolloutGate
import RolloutRedis

struct CompareCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Print a feature's cohorts as its cohort checks judge them: counts, ratios or latency means, the interval and the verdict.",
        discussion: """
            Reads the feature's type: cohort checks from the policy file and its last change from Redis, \
            and sends each check's queries (failures and requests, or a histogram's count, sum and buckets, \
            of the on and off cohorts since that change), as a controller run would; changes nothing. Exit codes: 0 answered, 1 Prometheus \
            or Redis unreachable or a query refused, 2 the feature or its cohort check is not in the policy, \
            3 the feature's state in Redis is corrupt.
            """
    )
    @OptionGroup var policyOptions: ControllerCommand.PolicyOptions
    @Argument(help: "The feature.") var feature: String
    @Flag(name: .long, help: "Print one JSON document instead of text.") var json = false

    func run() async throws {
        let name = try featureName(feature)
        let (policy, featurePolicy) = try await policyOptions.load(feature: name)
        guard !featurePolicy.cohortChecks.isEmpty else {
            throw ValidationError("\(name) has no check of type: cohort, so it has no cohorts to compare.")
        }
        let redis = RedisClient(url: policy.redis)
        defer { redis.close() }
        // Read as every command reads a feature (a key of the wrong type named with its type).
        let store = FeatureStore(redis: redis, auditLog: AuditLog(path: policy.auditLog))
        let state: FeatureState
        switch try await store.read([name]).first {
        case .success(let read)?: state = read
        case .failure(let invalid)?: throw CorruptStateFound(description: "\(invalid)")
        case nil: throw CorruptStateFound(description: "\(name): Redis answered no state")
        }
        let now = Timestamp.now()
        func nothingToCompare(_ message: String) throws {
            if json { try printJSON(["feature": name.rawValue, "checks": [Any](), "complete": true, "note": message]) } else { print(message) }
        }
        guard state.rolloutPercent > .zero && state.rolloutPercent < .full else {
            return try nothingToCompare(
                "\(name) is at \(state.rolloutPercent)%: one cohort is empty, so its cohort checks do not apply (the other checks decide this step).")
        }
        guard let changed = state.lastChangeTime else {
            return try nothingToCompare(
                "\(name) has no last_change_time: no step to judge yet (the controller records one when it first sees the feature).")
        }
        let window = now.duration(since: changed)
        let prometheus = PrometheusClient(base: policy.prometheus, timeout: policy.queryTimeout)
        var failed = false
        var lines = ["\(name) at \(state.rolloutPercent)%, counting since its last change \(formatDuration(window)) ago (\(changed))"]
        var checks: [[String: Any]] = []
        for check in featurePolicy.cohortChecks {
            var values: [String: Double] = [:]
            var buckets: [Cohort: [PrometheusSample]] = [:]
            for (cohort, series, query) in check.queries(window: window) {
                do {
                    if series == .buckets {
                        buckets[cohort] = try await prometheus.samples(of: query, at: now)
                    } else {
                        values["\(cohort) \(series.rawValue)"] = try await prometheus.value(of: query, at: now)
                    }
                } catch {
                    failed = true
                    lines.append("  \(cohort) \(series.rawValue): \(error)")
                }
            }
            let answers = check.answers(value: { values["\($0) \($1.rawValue)"] }, samples: { buckets[$0] ?? [] })
            let verdict = check.judge(answers)
            lines.append("\(check.name): max_regression \(check.comparison.maxRegression), alpha \(format(check.comparison.alpha)), min_requests \(check.comparison.minRequests)")
            var item: [String: Any] = [
                "check": check.name, "max_regression": "\(check.comparison.maxRegression)", "alpha": check.comparison.alpha,
                "min_requests": check.comparison.minRequests, "window_seconds": window.components.seconds,
                "measure": check.comparesLatency ? "latency" : "failure_ratio",
            ]
            if check.comparesLatency {
                for (cohort, histogram) in [("on", answers.onHistogram), ("off", answers.offHistogram)] {
                    let count = histogram?.count
                    let mean = (count ?? 0) > 0 ? (histogram?.sum ?? 0) / (count ?? 1) : nil
                    lines.append("  \(cohort): \(format(count?.rounded() ?? 0)) observations, mean \(mean.map { format(1000 * $0) + "ms" } ?? "none")")
                    item[cohort] = ["count": count as Any, "sum_seconds": histogram?.sum as Any, "mean_seconds": mean as Any]
                }
            } else {
                for (cohort, failures, requests) in [("on", answers.onFailures, answers.onRequests), ("off", answers.offFailures, answers.offRequests)] {
                    let ratio = (requests ?? 0) > 0 ? (failures ?? 0) / (requests ?? 1) : nil
                    lines.append("  \(cohort): \(format(requests?.rounded() ?? 0)) requests, \(format(failures?.rounded() ?? 0)) failed, ratio \(ratio.map { format(100 * $0) + "%" } ?? "none")")
                    item[cohort] = ["requests": requests as Any, "failures": failures as Any, "ratio": ratio as Any]
                }
            }
            lines.append("  -> \(verdict.code): \(verdict.summary(of: check))")
            item["verdict"] = verdict.code
            item["explanation"] = verdict.summary(of: check)
            if let interval = verdict.interval {
                item["interval"] = [
                    "estimate": interval.estimate, "lower": interval.lower, "upper": interval.upper, "threshold": interval.threshold, "factor": interval.factor,
                    "unit": check.comparesLatency ? "seconds" : "ratio",
                ]
            }
            if case .inconclusive(_, let needs?) = verdict { item["more_requests_needed"] = ["on": needs.on, "off": needs.off] }
            checks.append(item)
        }
        if json {
            try printJSON(["feature": name.rawValue, "rollout_percent": "\(state.rolloutPercent)", "checks": checks, "complete": !failed])
        } else {
            print(lines.joined(separator: "\n"))
        }
        if failed { throw RolloutExit.failure.exit }
    }
}
