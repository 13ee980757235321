import RolloutGate
import Synchronization

/// A circuit breaker as a pure state machine (closed → open → half-open → closed), with the
/// clock passed in: after `failureThreshold` consecutive failures it opens and refuses calls for
/// `openDuration`; then one trial call is let through (half-open); its success closes it, its
/// failure opens it again.
public struct CircuitBreaker: Sendable, Hashable {
    /// Where the breaker stands.
    public enum State: String, Sendable, Hashable {
        case closed
        case open
        case halfOpen = "half_open"
    }

    /// Consecutive failures that open the breaker.
    public var failureThreshold: Int
    /// How long it stays open before a trial call.
    public var openDuration: Duration
    /// Where it stands.
    public private(set) var state: State = .closed
    private var consecutiveFailures = 0
    private var openedAt: ContinuousClock.Instant?
    private var trialInFlight = false

    /// A closed breaker.
    public init(failureThreshold: Int = 5, openDuration: Duration = .seconds(30)) {
        self.failureThreshold = max(1, failureThreshold)
        self.openDuration = openDuration
    }

    /// Whether a call may go out now. When open and the time is up, lets one trial call through.
    public mutating func allowsCall(at now: ContinuousClock.Instant) -> Bool {
        switch state {
        case .closed:
            return true
        case .open:
            guard let openedAt, openedAt.duration(to: now) >= openDuration else { return false }
            state = .halfOpen
            trialInFlight = true
            return true
        case .halfOpen:
            guard !trialInFlight else { return false }
            trialInFlight = true
            return true
        }
    }

    /// Records a call's outcome.
    public mutating func record(success: Bool, at now: ContinuousClock.Instant) {
        trialInFlight = false
        if success {
            state = .closed
            consecutiveFailures = 0
            openedAt = nil
            return
        }
        consecutiveFailures += 1
        if state == .halfOpen || consecutiveFailures >= failureThreshold {
            state = .open
            openedAt = now
        }
    }
}

/// What the calls to one remote endpoint did since the process started (one run, unless
/// `--every` keeps it running): for the `--json` report.
public struct CallStatistics: Sendable, Hashable {
    /// Calls asked for.
    public var calls = 0
    /// Attempts made on the network (a call may take several).
    public var attempts = 0
    /// Attempts after the first of a call.
    public var retries = 0
    /// Calls refused at once because the breaker was open.
    public var shortCircuited = 0
    /// Calls that failed in the end.
    public var failures = 0
    /// Time spent in calls, waits between retries included.
    public var time: Duration = .zero
    /// The breaker's state at the end.
    public var breaker: CircuitBreaker.State = .closed
}

/// One remote endpoint's guards, shared by every call to it: a circuit breaker, a bound on
/// concurrent calls (bulkhead) and the statistics.
public final class EndpointGuard: Sendable {
    /// The endpoint's name in reports: prometheus, pushgateway...
    public let name: String
    private let breaker: Mutex<CircuitBreaker>
    private let statistics = Mutex(CallStatistics())
    private let lastFailure = Mutex<String?>(nil)
    private let bulkhead: AsyncSemaphore
    /// Time on the guard's clock since the guard was made.
    private let elapsed: @Sendable () -> Duration
    /// Waits `duration` on the guard's clock (returns early when cancelled).
    private let sleepOnClock: @Sendable (Duration) async -> Void
    /// The breaker's timeline: ``elapsed`` after this instant. The breaker only measures
    /// durations between the instants it is given, so any clock mapped onto it works.
    private let breakerOrigin = ContinuousClock.now

    /// Guards for `name`: the breaker's settings, the most calls in flight at once, and the
    /// clock that times the breaker, the waits between retries and the deadlines (tests pass a
    /// manual one and move it).
    public init(
        name: String, breaker: CircuitBreaker = CircuitBreaker(), maxConcurrentCalls: Int = 32,
        clock: some Clock<Duration> = ContinuousClock()
    ) {
        self.name = name
        self.breaker = Mutex(breaker)
        bulkhead = AsyncSemaphore(limit: maxConcurrentCalls)
        let origin = clock.now
        elapsed = { origin.duration(to: clock.now) }
        sleepOnClock = { try? await clock.sleep(for: $0) }
    }

    /// Now on the breaker's timeline.
    private var breakerNow: ContinuousClock.Instant { breakerOrigin.advanced(by: elapsed()) }

    /// The statistics so far, with the breaker's current state.
    public var snapshot: CallStatistics {
        var copy = statistics.withLock { $0 }
        copy.breaker = breaker.withLock { $0.state }
        return copy
    }

    private func enter() async {
        await bulkhead.acquire()
        statistics.withLock { $0.calls += 1 }
    }

    private func leave(failed: Bool, took time: Duration) async {
        statistics.withLock {
            if failed { $0.failures += 1 }
            $0.time += time
        }
        await bulkhead.release()
    }

    /// Asks the breaker for one attempt; false (and counted) when it is open.
    private func allowAttempt(retry: Bool) -> Bool {
        let now = breakerNow
        let allowed = breaker.withLock { $0.allowsCall(at: now) }
        statistics.withLock {
            if allowed {
                $0.attempts += 1
                if retry { $0.retries += 1 }
            } else {
                $0.shortCircuited += 1
            }
        }
        return allowed
    }

    private func record(success: Bool, failure: String? = nil) {
        let now = breakerNow
        breaker.withLock { $0.record(success: success, at: now) }
        if let failure { lastFailure.withLock { $0 = failure } }
    }

    /// The last failure seen, for the message of a call the open breaker refused.
    private var lastFailureDescription: String? { lastFailure.withLock { $0 } }
}

/// How one attempt of a guarded call ended.
enum AttemptOutcome<Failure: Error> {
    case succeeded
    /// `retryable`: worth another attempt (connection failures, timeouts, 429/502/503/504);
    /// `endpointFault`: it says the endpoint is unwell, so it counts against the breaker (a
    /// refused query or payload is the caller's fault, not the endpoint's).
    case failed(Failure, retryable: Bool, endpointFault: Bool)
}

/// Why a guarded call stopped before an attempt it would otherwise have made.
enum CallStop<Failure: Error> {
    /// The breaker is open; the last failure it saw, if any.
    case circuitOpen(lastFailure: String?)
    /// The deadline passed before the next attempt.
    case deadlinePassed
    /// The wait before the retry would cross the deadline; the failure it would have retried.
    case retryWouldCrossDeadline(Failure)
}

extension EndpointGuard {
    /// One call to the endpoint: inside its bulkhead, each attempt asked of its breaker and
    /// recorded there, retried by `retry` while the attempt fails retryably (and, with a
    /// `deadline`, while the wait leaves time). `attempt` gets its number (from 1) and the time
    /// left before the deadline; `stopped` makes the failure for a call cut short. Returns the
    /// last failure (nil when an attempt succeeded) and the attempts made. This is the one
    /// place every network call of the controller gets its retries, breaker and bulkhead.
    /// `deadline` is on the continuous clock; `sleep` (by default the guard's clock) waits
    /// between attempts.
    func call<Failure: Error>(
        retry: RetryPolicy, deadline: ContinuousClock.Instant? = nil,
        sleep: ((Duration) async -> Void)? = nil,
        stopped: (CallStop<Failure>) -> Failure,
        _ attempt: (_ number: Int, _ remaining: Duration?) async -> AttemptOutcome<Failure>
    ) async -> (failure: Failure?, attempts: Int) {
        await call(
            retry: retry, remaining: deadline.map { deadline in { ContinuousClock.now.duration(to: deadline) } }, sleep: sleep,
            stopped: stopped, attempt)
    }

    /// ``call(retry:deadline:sleep:stopped:_:)`` with the deadline as the time `remaining`
    /// tells is left (nil: none), measured on whatever clock the caller keeps its deadline on.
    func call<Failure: Error>(
        retry: RetryPolicy, remaining: (() -> Duration)?,
        sleep: ((Duration) async -> Void)? = nil,
        stopped: (CallStop<Failure>) -> Failure,
        _ attempt: (_ number: Int, _ remaining: Duration?) async -> AttemptOutcome<Failure>
    ) async -> (failure: Failure?, attempts: Int) {
        await enter()
        let started = elapsed()
        var attempts = 0
        var failure: Failure?
        attempting: while true {
            let left = remaining?()
            if let left, left <= .zero {
                failure = stopped(.deadlinePassed)
                break
            }
            guard allowAttempt(retry: attempts > 0) else {
                failure = stopped(.circuitOpen(lastFailure: lastFailureDescription))
                break
            }
            attempts += 1
            switch await attempt(attempts, left) {
            case .succeeded:
                record(success: true)
                failure = nil
                break attempting
            case .failed(let error, let retryable, let endpointFault):
                record(success: !endpointFault, failure: endpointFault ? "\(error)" : nil)
                failure = error
                guard retryable, attempts < retry.maxAttempts, !Task.isCancelled else { break attempting }
                let wait = retry.delay(afterAttempt: attempts)
                if let left = remaining?(), wait >= left {
                    failure = stopped(.retryWouldCrossDeadline(error))
                    break attempting
                }
                if let sleep { await sleep(wait) } else { await sleepOnClock(wait) }
            }
        }
        await leave(failed: failure != nil, took: elapsed() - started)
        return (failure, attempts)
    }
}
