import RolloutController
import Testing

@Suite("Retry policy")
struct RetryPolicyTests {
    @Test func exponentialDoublesFromTheBase() {
        let policy = RetryPolicy(baseDelay: .seconds(5), maxAttempts: 5)
        #expect((1...4).map { policy.delay(afterAttempt: $0) } == [.seconds(5), .seconds(10), .seconds(20), .seconds(40)])
    }

    @Test func linearAndFixed() {
        let linear = RetryPolicy(backoff: .linear, baseDelay: .milliseconds(500), maxAttempts: 4)
        #expect((1...3).map { linear.delay(afterAttempt: $0) } == [.milliseconds(500), .seconds(1), .milliseconds(1500)])
        let fixed = RetryPolicy(backoff: .fixed, baseDelay: .seconds(2), maxAttempts: 4)
        #expect((1...3).map { fixed.delay(afterAttempt: $0) } == [.seconds(2), .seconds(2), .seconds(2)])
    }

    @Test func maxDelayCapsEveryDelay() {
        let policy = RetryPolicy(baseDelay: .seconds(1), multiplier: 10, maxDelay: .minutes(5), maxAttempts: 100)
        #expect(policy.delay(afterAttempt: 3) == .seconds(100))
        #expect(policy.delay(afterAttempt: 4) == .seconds(300))
        #expect(policy.delay(afterAttempt: 90) == .seconds(300))  // no overflow, still capped
    }

    @Test func fullJitterDrawsFromZeroToTheDelay() {
        let policy = RetryPolicy(baseDelay: .seconds(4), maxAttempts: 3, jitter: true)
        #expect(policy.delay(afterAttempt: 2, random: { 0 }) == .zero)
        #expect(policy.delay(afterAttempt: 2, random: { 0.5 }) == .seconds(4))
        #expect(policy.delay(afterAttempt: 2, random: { 0.999 }) < .seconds(8))
        for _ in 0..<100 {
            let delay = policy.delay(afterAttempt: 1)
            #expect(delay >= .zero && delay <= .seconds(4))
        }
    }

    @Test func atLeastOneAttempt() {
        #expect(RetryPolicy(baseDelay: .seconds(1), maxAttempts: 0).maxAttempts == 1)
    }
}

extension Duration {
    static func minutes(_ value: Int64) -> Duration { .seconds(value * 60) }
}
