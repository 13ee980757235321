import ArgumentParser
import RolloutController
import RolloutGate
import RolloutRedis

struct CompareCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "compare",
        abstract: "Print a feature's cohorts as its cohort checks judge them: counts, ratios, the interval and the verdict.",
        discussion: """
            Reads the feature's type: cohort checks from the policy file and its last change from Redis, \
            and sends each check's four queries (failures and requests of the on and off cohorts since \
            that change), as a controller run would; changes nothing. Exit codes: 0 answered, 1 Prometheus \
            or Redis unreachable or a query refused, 2 the feature or its cohort check is not in the policy, \
            3 the feature's state in Redis is corrupt.
            """
    )
    @OptionGroup var policyOptions: ControllerCommand.PolicyOptions
    @Argument(help: "The feature.") var feature: String
    @Flag(name: .long, help: "Print one JSON document instead of text.") var json = false

    func run() async throws {
        let name = try featureName(feature)
        let policy = try await policyOptions.load()
        guard let featurePolicy = policy.features.first(where: { $0.feature == name }) else {
            throw ValidationError("\(name) is not a feature of the policy file; its features: \(policy.features.map(\.feature.rawValue).joined(separator: ", ")).")
        }
        guard !featurePolicy.cohortChecks.isEmpty else {
            throw ValidationError("\(name) has no check of type: cohort, so it has no cohorts to compare.")
        }
        let redis = RedisClient(url: policy.redis)
        defer { redis.close() }
        let keys = FeatureKeys(name)
        let state: FeatureState
        switch FeatureState.read(name, from: try await redis.pipeline(keys.readCommands)) {
        case .success(let read): state = read
        case .failure(let invalid): throw CorruptStateFound(description: "\(invalid)")
        }
        let now = Timestamp.now()
        guard let changed = state.lastChangeTime else {
            let message = "\(name) has no last_change_time: no step to judge yet (the controller records one when it first sees the feature)."
            if json { try printJSON(["feature": name.rawValue, "checks": [Any](), "complete": true, "note": message]) } else { print(message) }
            return
        }
        let window = now.duration(since: changed)
        let prometheus = PrometheusClient(base: policy.prometheus, timeout: policy.queryTimeout)
        var failed = false
        var lines = ["\(name) at \(state.rolloutPercent)%, counting since its last change \(formatDuration(window)) ago (\(changed))"]
        var checks: [[String: Any]] = []
        for check in featurePolicy.cohortChecks {
            func count(_ cohort: Cohort, failures: Bool) async -> Double? {
                let query = CohortCheck.query(failures ? check.failures : check.requests, cohort: cohort, window: window)
                do {
                    return try await prometheus.value(of: query)
                } catch {
                    failed = true
                    lines.append("  \(cohort) \(failures ? "failures" : "requests"): \(error)")
                    return nil
                }
            }
            let answers = CohortAnswers(
                onFailures: await count(.on, failures: true), onRequests: await count(.on, failures: false),
                offFailures: await count(.off, failures: true), offRequests: await count(.off, failures: false))
            let verdict = check.judge(answers)
            lines.append("\(check.name): max_regression \(check.comparison.maxRegression), alpha \(format(check.comparison.alpha)), min_requests \(check.comparison.minRequests)")
            var item: [String: Any] = [
                "check": check.name, "max_regression": "\(check.comparison.maxRegression)", "alpha": check.comparison.alpha,
                "min_requests": check.comparison.minRequests, "window_seconds": window.components.seconds,
            ]
            for (cohort, failures, requests) in [("on", answers.onFailures, answers.onRequests), ("off", answers.offFailures, answers.offRequests)] {
                let ratio = (requests ?? 0) > 0 ? (failures ?? 0) / (requests ?? 1) : nil
                lines.append("  \(cohort): \(format(requests?.rounded() ?? 0)) requests, \(format(failures?.rounded() ?? 0)) failed, ratio \(ratio.map { format(100 * $0) + "%" } ?? "none")")
                item[cohort] = ["requests": requests as Any, "failures": failures as Any, "ratio": ratio as Any]
            }
            lines.append("  -> \(verdict.code): \(verdict.summary(of: check))")
            item["verdict"] = verdict.code
            item["explanation"] = verdict.summary(of: check)
            if let interval = verdict.interval {
                item["interval"] = ["estimate": interval.estimate, "lower": interval.lower, "upper": interval.upper, "threshold": interval.threshold, "factor": interval.factor]
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
