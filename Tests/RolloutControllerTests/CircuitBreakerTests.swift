import RolloutController
import Testing

@Suite("Circuit breaker, with the clock passed in")
struct CircuitBreakerTests {
    let t0 = ContinuousClock.now

    /// Asks `breaker` for a call at `time` (a mutating call cannot stand inside #expect).
    func allows(_ breaker: inout CircuitBreaker, at time: ContinuousClock.Instant) -> Bool {
        breaker.allowsCall(at: time)
    }

    @Test func opensAfterConsecutiveFailuresAndRefusesCalls() {
        var breaker = CircuitBreaker(failureThreshold: 3, openDuration: .seconds(30))
        for _ in 0..<2 {
            let allowed = allows(&breaker, at: t0)
            #expect(allowed)
            breaker.record(success: false, at: t0)
        }
        #expect(breaker.state == .closed)
        let third = allows(&breaker, at: t0)
        #expect(third)
        breaker.record(success: false, at: t0)
        #expect(breaker.state == .open)
        let whileOpen = allows(&breaker, at: t0.advanced(by: .seconds(29)))
        #expect(!whileOpen)
    }

    @Test func aSuccessResetsTheCount() {
        var breaker = CircuitBreaker(failureThreshold: 3)
        breaker.record(success: false, at: t0)
        breaker.record(success: false, at: t0)
        breaker.record(success: true, at: t0)
        breaker.record(success: false, at: t0)
        breaker.record(success: false, at: t0)
        #expect(breaker.state == .closed)
    }

    @Test func halfOpenLetsOneTrialThroughThenClosesOrReopens() {
        var breaker = CircuitBreaker(failureThreshold: 1, openDuration: .seconds(30))
        breaker.record(success: false, at: t0)
        let later = t0.advanced(by: .seconds(30))
        let trial = allows(&breaker, at: later)
        #expect(trial)
        #expect(breaker.state == .halfOpen)
        let second = allows(&breaker, at: later)
        #expect(!second)  // one trial at a time
        breaker.record(success: false, at: later)
        #expect(breaker.state == .open)
        let reopened = allows(&breaker, at: later.advanced(by: .seconds(10)))
        #expect(!reopened)
        let evenLater = later.advanced(by: .seconds(31))
        let nextTrial = allows(&breaker, at: evenLater)
        #expect(nextTrial)
        breaker.record(success: true, at: evenLater)
        #expect(breaker.state == .closed)
        let closed = allows(&breaker, at: evenLater)
        #expect(closed)
    }
}
