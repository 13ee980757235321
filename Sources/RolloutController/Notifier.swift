import AsyncHTTPClient
public import Logging
import NIOCore
import NIOHTTP1
import RolloutAdmin
import RolloutAudit
import RolloutGate

/// Sends events to the policy's channels. Every (event, channel) pair is delivered
/// concurrently, each attempt bounded by the policy's timeout and retried by its
/// ``RetryPolicy`` when the failure is transient; whatever is not delivered goes to the JSONL
/// fallback file. Nothing throws and ``deliver(_:)`` returns by the policy's deadline, so a
/// notification can never change or hold up a decision.
public struct Notifier: Sendable {
    /// Channels, timeouts, retries and the fallback file.
    public let policy: NotificationPolicy
    private let logger: Logger
    private let sleep: (@Sendable (Duration) async -> Void)?
    private let clock: any Clock<Duration>
    private var http: HTTPClient { .shared }
    /// Each channel's circuit breaker, bulkhead (4 requests at once, across overlapping
    /// deliveries) and statistics, by name.
    public let guards: [String: EndpointGuard]

    /// A notifier over AsyncHTTPClient's shared client. `clock` times the deadline, the waits
    /// between retries and the channels' breakers; `sleep`, when given, waits between retries
    /// instead (tests inject both).
    public init(
        policy: NotificationPolicy, logger: Logger = Logger(label: "rollout-notifications"),
        clock: any Clock<Duration> = ContinuousClock(),
        sleep: (@Sendable (Duration) async -> Void)? = nil
    ) {
        self.policy = policy
        self.logger = logger
        self.sleep = sleep
        self.clock = clock
        var guards: [String: EndpointGuard] = [:]
        for channel in policy.channels where guards[channel.name] == nil {
            guards[channel.name] = EndpointGuard(name: channel.name, maxConcurrentCalls: 4, clock: clock)
        }
        self.guards = guards
    }

    /// Sends every event to every channel that accepts its kind: the channels at once, each
    /// channel's events one after the other in the order given (a rollback arrives before the
    /// guard it set, and chat services' rate limits are respected). Returns when all are
    /// delivered or written to the fallback file, at the latest by the policy's deadline (plus
    /// the time to append to the fallback file).
    public func deliver(_ events: [NotificationEvent]) async -> DeliveryReport {
        await deliver(events, on: clock)
    }

    private func deliver<C: Clock<Duration>>(_ events: [NotificationEvent], on clock: C) async -> DeliveryReport {
        let started = clock.now
        let deadline = started.advanced(by: policy.deadline)
        let outcomes = await withTaskGroup(of: [(Int, Outcome)].self) { group in
            for (index, channel) in policy.channels.enumerated() {
                let accepted = events.filter { channel.accepts($0.kind) }
                guard !accepted.isEmpty else { continue }
                group.addTask {
                    var outcomes: [(Int, Outcome)] = []
                    for event in accepted { outcomes.append((index, await send(event, to: channel, clock: clock, deadline: deadline))) }
                    return outcomes
                }
            }
            var outcomes: [(Int, Outcome)] = []
            for await channelOutcomes in group { outcomes += channelOutcomes }
            return outcomes
        }
        var report = DeliveryReport(
            channels: policy.channels.map { DeliveryReport.ChannelReport(channel: $0.name, format: $0.format) }, elapsed: .zero)
        for (index, outcome) in outcomes {
            report.channels[index].record(outcome)
            if case .written = outcome.fallback { report.writtenToFallback += 1 }
            if case .failed = outcome.fallback { report.lost += 1 }
        }
        report.elapsed = started.duration(to: clock.now)
        return report
    }

    /// One event to one channel, with retries, then the fallback file if it was not delivered.
    private func send<C: Clock<Duration>>(
        _ event: NotificationEvent, to channel: NotificationChannel, clock: C, deadline: C.Instant
    ) async -> Outcome {
        let started = clock.now
        let body = channel.format.payload(for: event)
        let guards = self.guards[channel.name] ?? EndpointGuard(name: channel.name, clock: clock)
        let (failed, attempts) = await guards.call(
            retry: policy.retry, remaining: { clock.now.duration(to: deadline) }, sleep: sleep,
            stopped: { stop in
                switch stop {
                case .deadlinePassed:
                    return NotificationError(.deadline, "The notification deadline (\(shown(policy.deadline))) passed before an attempt to \(channel.name)")
                case .circuitOpen(let last):
                    return NotificationError(
                        .circuitOpen, "\(channel.name) failed repeatedly; its circuit breaker is open, so nothing was sent" + (last.map { ". Last failure: \($0)" } ?? ""))
                case .retryWouldCrossDeadline(let error):
                    return NotificationError(
                        error.code, error.message + "; no retry: the notification deadline (\(shown(policy.deadline))) comes first", httpStatus: error.httpStatus)
                }
            }
        ) { _, remaining -> AttemptOutcome<NotificationError> in
            var outcome = AttemptOutcome<NotificationError>.succeeded
            do throws(NotificationError) {
                try await post(body, to: channel, timeout: min(policy.attemptTimeout, remaining ?? policy.attemptTimeout))
            } catch {
                // A refused payload is our fault, not a sign of the receiver's health.
                let endpointFault = error.isTransient || error.code == .timeout || error.code == .unreachable || (error.httpStatus ?? 0) >= 500
                outcome = .failed(error, retryable: error.isTransient, endpointFault: endpointFault)
            }
            return outcome
        }
        guard let failure = failed else {
            return Outcome(delivered: true, attempts: attempts, elapsed: started.duration(to: clock.now), error: nil, fallback: .notNeeded)
        }
        let fallback = await writeFallback(event, channel: channel, error: failure, attempts: attempts)
        return Outcome(delivered: false, attempts: attempts, elapsed: started.duration(to: clock.now), error: failure.message, fallback: fallback)
    }

    private func post(_ body: String, to channel: NotificationChannel, timeout: Duration) async throws(NotificationError) {
        var request = HTTPClientRequest(url: channel.url.secret)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "rollout-gate")
        request.body = .bytes(ByteBuffer(string: body))
        let status: Int
        let answer: String
        do {
            let response = try await http.execute(request, timeout: .nanoseconds(timeout.wholeNanoseconds))
            status = Int(response.status.code)
            // Read (and bound) the body so the connection can be reused; its text explains refusals.
            answer = (try? await response.body.collect(upTo: 64 * 1024)).map { String(buffer: $0) } ?? ""
        } catch where isTimeout(error) {
            throw NotificationError(.timeout, "\(channel.name) (\(channel.url)) did not answer within \(shown(timeout))")
        } catch {
            throw NotificationError(.unreachable, "Cannot reach \(channel.name) (\(channel.url)): " + channel.url.redacting("\(error)"))
        }
        guard !(200..<300).contains(status) else { return }
        var message = "\(channel.name) (\(channel.url)) answered HTTP \(status)"
        switch status {
        case 401, 403: message += ": the webhook refused the request; check that its environment variable holds a current webhook URL"
        case 404, 410: message += ": the webhook does not exist (deleted or revoked); create one and update its environment variable"
        case 400, 413, 422: message += ": the service refused the payload; check that type: matches the service"
        default: break
        }
        let shown = AuditLog.singleLine(channel.url.redacting(answer))
        if !shown.isEmpty { message += " (answer: \(truncated(shown, toUTF16: 200)))" }
        throw NotificationError(.httpStatus, message, httpStatus: status)
    }

    /// Appends the event, the channel and the error as one JSON line.
    private func writeFallback(_ event: NotificationEvent, channel: NotificationChannel, error: NotificationError, attempts: Int) async -> Outcome.Fallback {
        let line = compactJSON([
            "failed_at": Timestamp.now().description, "channel": channel.name, "type": channel.format.rawValue, "error": error.message,
            "error_code": error.code.rawValue, "attempts": attempts, "event": event.jsonObject,
        ])
        var metadata: Logger.Metadata = [
            "notification.channel": "\(channel.name)", "notification.kind": "\(event.kind.rawValue)", "notification.attempts": "\(attempts)",
            "error": "\(error.message)", "notification.fallback_file": "\(policy.fallbackFile)",
        ]
        if let feature = event.feature { metadata["feature.name"] = "\(feature)" }
        let path = policy.fallbackFile
        let failure = await onFileQueue { () -> AppendFailure? in
            do throws(AppendFailure) {
                try appendUnderLock(line + "\n", to: path)
                return nil
            } catch {
                return error
            }
        }
        if let failure {
            // The last place the event can go is the log itself.
            metadata["notification.event"] = "\(compactJSON(event.jsonObject))"
            metadata["fallback.error"] = "\(failure.reason)"
            logger.error("Notification not delivered and the fallback file cannot be written: the event is only in this log", metadata: metadata)
            return .failed
        }
        logger.warning("Notification not delivered; written to the fallback file", metadata: metadata)
        return .written
    }
}

/// What one ``Notifier/deliver(_:)`` did, per channel (in policy order).
public struct DeliveryReport: Sendable {
    /// One channel's share.
    public struct ChannelReport: Sendable, Hashable {
        /// The channel's name.
        public var channel: String
        /// Its payload format.
        public var format: NotificationChannel.Format
        /// Events it took.
        public var delivered = 0
        /// Events it did not take (each written to the fallback file, or lost if that failed too).
        public var failed = 0
        /// Attempts in all.
        public var attempts = 0
        /// Attempts after the first, in all.
        public var retries = 0
        /// The longest delivery to it (they run concurrently, so this is its share of the wait).
        public var elapsed = Duration.zero
        /// Why each failed event failed; the URL is never in them.
        public var errors: [String] = []

        init(channel: String, format: NotificationChannel.Format) {
            self.channel = channel
            self.format = format
        }

        mutating func record(_ outcome: Outcome) {
            if outcome.delivered { delivered += 1 } else { failed += 1 }
            attempts += outcome.attempts
            retries += max(0, outcome.attempts - 1)
            elapsed = max(elapsed, outcome.elapsed)
            if let error = outcome.error { errors.append(error) }
        }
    }

    /// Each channel, in policy order.
    public var channels: [ChannelReport]
    /// Failed deliveries written to the fallback file.
    public var writtenToFallback = 0
    /// Failed deliveries that could not be written to the fallback file either (they are logged).
    public var lost = 0
    /// The time ``Notifier/deliver(_:)`` took.
    public var elapsed: Duration

    /// Deliveries that succeeded, across channels.
    public var delivered: Int { channels.reduce(0) { $0 + $1.delivered } }
    /// Deliveries that failed, across channels.
    public var failed: Int { channels.reduce(0) { $0 + $1.failed } }
}

/// One (event, channel) delivery.
struct Outcome: Sendable {
    enum Fallback: Sendable {
        case notNeeded, written, failed
    }

    var delivered: Bool
    var attempts: Int
    var elapsed: Duration
    var error: String?
    var fallback: Fallback
}

/// Why a notification attempt failed. Classified like every network call: connection failures,
/// timeouts and 429/502/503/504 are retried; other statuses (500 included) are not.
struct NotificationError: Error, Sendable, CustomStringConvertible {
    enum Code: String, Sendable {
        /// Connection refused, reset or closed without an answer.
        case unreachable
        /// No answer within the attempt's timeout.
        case timeout
        /// A status other than 2xx.
        case httpStatus = "http_status"
        /// No time was left for an attempt.
        case deadline
        /// The channel's circuit breaker is open: it failed repeatedly, nothing was sent.
        case circuitOpen = "circuit_open"
    }

    let code: Code
    let message: String
    let httpStatus: Int?

    init(_ code: Code, _ message: String, httpStatus: Int? = nil) {
        self.code = code
        self.message = message
        self.httpStatus = httpStatus
    }

    var isTransient: Bool {
        switch code {
        case .unreachable, .timeout: return true
        case .httpStatus: return httpStatus.map(RetryPolicy.transientHTTPStatuses.contains) ?? false
        case .deadline, .circuitOpen: return false
        }
    }

    var description: String { message }
}

/// `text` without the webhook's secret: the full URL becomes its scheme and host, and its path
/// and query (where services put the token) become "…".
/// `1m30s` for whole seconds, `250ms` otherwise: as durations are written in the policy file.
private func shown(_ duration: Duration) -> String {
    duration.components.attoseconds == 0 ? formatDuration(duration) : "\(duration.wholeNanoseconds / 1_000_000)ms"
}

/// Whether an AsyncHTTPClient failure is a timeout (rather than a refused or broken connection).
func isTimeout(_ error: any Error) -> Bool {
    guard let error = error as? HTTPClientError else { return false }
    return error == .deadlineExceeded || error == .readTimeout || error == .connectTimeout
}
