@testable import RolloutController
import RolloutTestSupport
import Synchronization
import Testing

/// The endpoint guard's breaker and retry waits, and `rollout retry`'s loop, on a clock the test
/// moves: nothing here depends on how busy the machine is.
@Suite("Guards and retries on an injected clock")
struct InjectedClockTests {
    struct Failure: Error {}

    @Test func theBreakerLetsATrialThroughOnlyWhenItsClockReachesTheOpenDuration() async {
        let clock = ManualClock()
        let guards = EndpointGuard(name: "test", breaker: CircuitBreaker(failureThreshold: 1, openDuration: .seconds(30)), clock: clock)
        let once = RetryPolicy(baseDelay: .zero, maxAttempts: 1)
        let failing = await guards.call(retry: once, stopped: { _ in Failure() }) { _, _ in
            .failed(Failure(), retryable: false, endpointFault: true)
        }
        #expect(failing.attempts == 1 && failing.failure != nil)
        clock.advance(by: .seconds(29))
        let refused = await guards.call(retry: once, stopped: { _ in Failure() }) { _, _ in .succeeded }
        #expect(refused.attempts == 0 && refused.failure != nil)
        #expect(guards.snapshot.breaker == .open)
        clock.advance(by: .seconds(1))
        let trial = await guards.call(retry: once, stopped: { _ in Failure() }) { _, _ in .succeeded }
        #expect(trial.attempts == 1 && trial.failure == nil)
        #expect(guards.snapshot.breaker == .closed)
    }

    @Test func retriesWaitOnTheGuardsClock() async throws {
        let clock = ManualClock()
        let guards = EndpointGuard(name: "test", clock: clock)
        let made = Mutex(0)
        async let result = guards.call(
            retry: RetryPolicy(backoff: .fixed, baseDelay: .seconds(10), maxAttempts: 3), remaining: nil, stopped: { _ in Failure() }
        ) { number, _ -> AttemptOutcome<Failure> in
            made.withLock { $0 = number }
            return number < 3 ? .failed(Failure(), retryable: true, endpointFault: false) : .succeeded
        }
        try #require(await eventually(within: .seconds(120)) { clock.sleepers == 1 })
        #expect(made.withLock { $0 } == 1)
        clock.advance(by: .seconds(9))
        #expect(clock.sleepers == 1 && made.withLock { $0 } == 1)
        clock.advance(by: .seconds(1))
        try #require(await eventually(within: .seconds(120)) { clock.sleepers == 1 && made.withLock { $0 } == 2 })
        clock.advance(by: .seconds(10))
        let (failure, attempts) = await result
        #expect(failure == nil && attempts == 3)
        // Time in calls is measured on the guard's clock too: the two waits, nothing else.
        #expect(guards.snapshot.time == .seconds(20))
    }

    @Test func aRetryThatWouldCrossTheDeadlineIsNotWaitedFor() async {
        let clock = ManualClock()
        let guards = EndpointGuard(name: "test", clock: clock)
        let deadline = clock.now.advanced(by: .seconds(15))
        let (failure, attempts) = await guards.call(
            retry: RetryPolicy(backoff: .fixed, baseDelay: .seconds(20), maxAttempts: 5),
            remaining: { clock.now.duration(to: deadline) },
            stopped: { stop -> Failure in
                if case .retryWouldCrossDeadline = stop { return Failure() }
                Issue.record("stopped for \(stop), not for the deadline")
                return Failure()
            }
        ) { _, _ in .failed(Failure(), retryable: true, endpointFault: false) }
        // No clock moves here: had the guard waited for the retry, this call would never return.
        #expect(failure != nil && attempts == 1)
        #expect(clock.sleepers == 0)
    }

    @Test func retryRunWaitsOnTheClockBetweenAttempts() async throws {
        let clock = ManualClock()
        let made = Mutex(0)
        let heard = Mutex<[String]>([])
        async let result = RetryPolicy(baseDelay: .seconds(5), maxAttempts: 3).run(on: clock) { number -> Int32 in
            made.withLock { $0 = number }
            return number < 3 ? 1 : 0
        } failed: { number, status, delay in
            heard.withLock { $0.append("\(number) \(status) \(delay.map { "\($0)" } ?? "-")") }
        }
        try #require(await eventually(within: .seconds(120)) { clock.sleepers == 1 })
        #expect(made.withLock { $0 } == 1)
        clock.advance(by: .seconds(4))
        #expect(clock.sleepers == 1 && made.withLock { $0 } == 1)
        clock.advance(by: .seconds(1))
        // Exponential: 10 s after the second failure.
        try #require(await eventually(within: .seconds(120)) { clock.sleepers == 1 && made.withLock { $0 } == 2 })
        clock.advance(by: .seconds(10))
        let (status, attempts) = try await result
        #expect(status == 0 && attempts == 3)
        #expect(heard.withLock { $0 } == ["1 1 5.0 seconds", "2 1 10.0 seconds"])
    }

    @Test func retryRunGivesUpWithTheLastStatus() async throws {
        let clock = ManualClock()
        let heard = Mutex<[String]>([])
        let (status, attempts) = try await RetryPolicy(baseDelay: .zero, maxAttempts: 2).run(on: clock) { number -> Int32 in
            number == 1 ? 3 : 7
        } failed: { number, status, delay in
            heard.withLock { $0.append("\(number) \(status) \(delay == nil ? "last" : "retry")") }
        }
        #expect(status == 7 && attempts == 2)
        #expect(heard.withLock { $0 } == ["1 3 retry", "2 7 last"])
    }

    @Test func retryRunStopsWhenCancelledWhileWaiting() async throws {
        let clock = ManualClock()
        let run = Task {
            try await RetryPolicy(baseDelay: .seconds(60), maxAttempts: 3).run(on: clock) { _ in 1 }
        }
        try #require(await eventually(within: .seconds(120)) { clock.sleepers == 1 })
        run.cancel()
        await #expect(throws: CancellationError.self) { try await run.value }
    }
}
