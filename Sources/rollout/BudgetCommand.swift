import ArgumentParser
import RolloutController
import RolloutGate

struct BudgetCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "budget",
        abstract: "Print a feature's error budget left over its SLO period, and the burn rate of each window.",
        discussion: """
            Reads the feature's burn_rate checks from the policy file and asks Prometheus. Burn rate 1 \
            spends the budget exactly over the period; 14.4 spends 2% of a 30-day budget in an hour. Exit \
            codes: 0 answered, 1 Prometheus unreachable or refused a query, 2 the feature or its burn_rate \
            check is not in the policy.
            """
    )
    @OptionGroup var policyOptions: ControllerCommand.PolicyOptions
    @Argument(help: "The feature.") var feature: String
    @Flag(name: .long, help: "Print one JSON document instead of text.") var json = false

    func run() async throws {
        let name = try featureName(feature)
        let (policy, featurePolicy) = try await policyOptions.load(feature: name)
        guard !featurePolicy.burnRateChecks.isEmpty else {
            throw ValidationError("\(name) has no check of type: burn_rate, so it has no error budget to report.")
        }
        let prometheus = PrometheusClient(base: policy.prometheus, timeout: policy.queryTimeout)
        var failed = false
        var lines: [String] = []
        var checks: [[String: Any]] = []
        for check in featurePolicy.burnRateChecks {
            func ratio(_ window: Duration) async -> Double?? {
                do {
                    return .some(try await prometheus.value(of: check.query(window: window)))
                } catch {
                    failed = true
                    lines.append("  \(formatDuration(window)): \(error)")
                    return .none
                }
            }
            lines.append("\(name) \(check.name): SLO \(format(check.slo * 100))% over \(formatDuration(check.period)), budget \(format(check.budget * 100))%")
            var item: [String: Any] = ["check": check.name, "slo": check.slo, "period": formatDuration(check.period)]
            if case .some(let periodRatio) = await ratio(check.period) {
                if let periodRatio {
                    let spent = check.burnRate(errorRatio: periodRatio)
                    lines.append("  budget left: \(format((1 - spent) * 100))% (spent \(format(spent * 100))%; error ratio \(format(periodRatio)) over \(formatDuration(check.period)))")
                    item["budget_left"] = 1 - spent
                    item["error_ratio"] = periodRatio
                } else {
                    lines.append("  budget left: unknown (no data over \(formatDuration(check.period)))")
                }
            }
            var errorRatios: [Duration: Double?] = [:]
            var windows: [[String: Any]] = []
            for window in check.distinctWindows {
                guard case .some(let value) = await ratio(window) else { continue }
                let burn = value.map(check.burnRate)
                errorRatios[window] = value
                lines.append("  burn rate over \(formatDuration(window)): \(burn.map { format($0) + "x" } ?? "no data")")
                windows.append(["window": formatDuration(window), "burn_rate": burn as Any, "error_ratio": value as Any])
            }
            var pairs: [[String: Any]] = []
            for pair in check.windows {
                let status = check.burnRate(of: pair, errorRatios: errorRatios).map { $0 > pair.factor ? "violated" : "ok" } ?? "no_data"
                lines.append("  pair \(pair.label) above \(format(pair.factor))x -> \(status) (on_violation: \(pair.onViolation.rawValue))")
                pairs.append(["pair": pair.label, "factor": pair.factor, "status": status, "on_violation": pair.onViolation.rawValue])
            }
            item["windows"] = windows
            item["pairs"] = pairs
            checks.append(item)
        }
        if json {
            try printJSON(["feature": name.rawValue, "checks": checks, "complete": !failed])
        } else {
            print(lines.joined(separator: "\n"))
        }
        if failed { throw RolloutExit.failure.exit }
    }
}
