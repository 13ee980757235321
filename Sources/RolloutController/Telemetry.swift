import AsyncHTTPClient
public import Logging
import NIOHTTP1
import RolloutGate
import NIOCore

/// Pushes a run's metrics to the Pushgateway, replacing the `job="rollout_controller"` group.
/// A failure only warns: telemetry never changes or fails a run.
public struct Telemetry: Sendable {
    /// The Pushgateway.
    public let pushgateway: HTTPEndpoint
    /// The timeout of each request.
    public let timeout: Duration
    /// How a failed push is retried: connection failures, timeouts and 429/502/503/504.
    public let retry: RetryPolicy
    /// The Pushgateway's circuit breaker, bulkhead and call statistics.
    public let guards = EndpointGuard(name: "pushgateway", maxConcurrentCalls: 1)

    /// Telemetry to `pushgateway`; by default 3 attempts, 500 ms then 1 s apart, with full jitter.
    public init(
        pushgateway: HTTPEndpoint, timeout: Duration = .seconds(5),
        retry: RetryPolicy = RetryPolicy(baseDelay: .milliseconds(500), maxDelay: .seconds(5), maxAttempts: 3, jitter: true)
    ) {
        self.pushgateway = pushgateway
        self.timeout = timeout
        self.retry = retry
    }

    static let job = "rollout_controller"
    static let statuses = ["ok", "prom_unreachable", "redis_error", "corrupt_state", "invalid_policy"]

    /// Pushes `report`; returns the error text when the push failed (already logged).
    @discardableResult
    public func push(_ report: RunReport, logger: Logger) async -> String? {
        let (failure, attempts) = await guards.call(
            retry: retry,
            stopped: { _ in TelemetryError("the Pushgateway failed repeatedly; its circuit breaker is open, so nothing was pushed") }
        ) { _, _ -> AttemptOutcome<TelemetryError> in
            var putSent = false
            do {
                // The Pushgateway stores what it is given: a counter across runs is the last value + 1.
                let previous = try await currentRunCounts()
                putSent = true
                try await put(Self.exposition(report, previousRuns: previous))
                return .succeeded
            } catch {
                // Our HTTP errors carry their status; everything else is the connection or a timeout.
                // A PUT that timed out may have been stored: sending it again would count the run twice.
                let status = (error as? TelemetryError)?.status
                let ambiguous = putSent && status == nil && isTimeout(error)
                return .failed(
                    error as? TelemetryError ?? TelemetryError("\(error)"),
                    retryable: !ambiguous && (status.map(RetryPolicy.transientHTTPStatuses.contains) ?? true),
                    endpointFault: status.map { $0 >= 500 } ?? true)
            }
        }
        guard let failure else { return nil }
        logger.warning(
            "Could not push telemetry to the Pushgateway; the run itself is unaffected",
            metadata: ["pushgateway.url": "\(pushgateway)", "error": "\(failure)", "attempts": "\(attempts)"])
        return failure.description
    }

    /// The text exposition of a run: gauges for the state, a counter of runs by status.
    static func exposition(_ report: RunReport, previousRuns: [String: Double]) -> String {
        var text = """
            # HELP rollout_controller_percent The rollout percent of each feature after the controller's last run.
            # TYPE rollout_controller_percent gauge

            """
        for feature in report.features {
            if let percent = feature.targetPercent {
                text += "rollout_controller_percent{feature=\"\(feature.feature)\"} \(percent)\n"
            }
        }
        text += """
            # HELP rollout_controller_decision The last run's decision per feature: 1 for the result taken (promote, rollback or hold), 0 for the others.
            # TYPE rollout_controller_decision gauge

            """
        for feature in report.features {
            for result in ["promote", "rollback", "hold"] {
                text += "rollout_controller_decision{feature=\"\(feature.feature)\",result=\"\(result)\"} \(feature.result == result ? 1 : 0)\n"
            }
        }
        text += """
            # HELP rollout_controller_hold Why a feature was held in the last run (reason codes of docs/controller.md): 1 for the reason.
            # TYPE rollout_controller_hold gauge

            """
        for feature in report.features where feature.result == "hold" {
            let reason = feature.holdReason?.rawValue ?? "unknown"
            text += "rollout_controller_hold{feature=\"\(feature.feature)\",reason=\"\(reason)\"} 1\n"
        }
        let seconds = Double(report.startedAt.microsecondsSinceEpoch) / 1_000_000
        text += """
            # HELP rollout_controller_last_run_timestamp_seconds When the last run started, in Unix seconds.
            # TYPE rollout_controller_last_run_timestamp_seconds gauge
            rollout_controller_last_run_timestamp_seconds \(seconds)
            # HELP rollout_controller_runs_total Controller runs by status (ok, prom_unreachable, redis_error, corrupt_state, invalid_policy).
            # TYPE rollout_controller_runs_total counter

            """
        for status in statuses {
            let count = (previousRuns[status] ?? 0) + (report.status == status ? 1 : 0)
            text += "rollout_controller_runs_total{status=\"\(status)\"} \(Int64(count))\n"
        }
        return text
    }

    /// The runs_total counts in the Pushgateway now, by status (empty for a new group).
    private func currentRunCounts() async throws -> [String: Double] {
        var request = HTTPClientRequest(url: pushgateway.url + "/metrics")
        request.method = .GET
        let response = try await HTTPClient.shared.execute(request, timeout: .nanoseconds(timeout.wholeNanoseconds))
        let body = try await response.body.collect(upTo: 16 * 1024 * 1024)
        guard response.status == .ok else {
            throw TelemetryError("GET /metrics answered HTTP \(response.status.code)", status: Int(response.status.code))
        }
        return Self.runCounts(in: String(buffer: body))
    }

    static func runCounts(in exposition: String) -> [String: Double] {
        var counts: [String: Double] = [:]
        for line in exposition.split(separator: "\n") where line.hasPrefix("rollout_controller_runs_total{") && line.contains("job=\"\(job)\"") {
            guard let status = statuses.first(where: { line.contains("status=\"\($0)\"") }),
                let value = line.split(separator: " ").last.flatMap({ Double($0) })
            else { continue }
            counts[status] = value
        }
        return counts
    }

    private func put(_ body: String) async throws {
        var request = HTTPClientRequest(url: pushgateway.url + "/metrics/job/\(Self.job)")
        request.method = .PUT
        request.headers.add(name: "Content-Type", value: "text/plain; version=0.0.4")
        request.body = .bytes(ByteBuffer(string: body))
        let response = try await HTTPClient.shared.execute(request, timeout: .nanoseconds(timeout.wholeNanoseconds))
        guard (200..<300).contains(Int(response.status.code)) else {
            let text = String(buffer: try await response.body.collect(upTo: 64 * 1024))
            throw TelemetryError("PUT answered HTTP \(response.status.code): \(text.prefix(200))", status: Int(response.status.code))
        }
    }
}

struct TelemetryError: Error, CustomStringConvertible {
    let description: String
    /// The HTTP status the Pushgateway answered, if it answered.
    let status: Int?
    init(_ description: String, status: Int? = nil) {
        self.description = description
        self.status = status
    }
}
