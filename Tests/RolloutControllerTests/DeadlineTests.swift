import Foundation
@testable import RolloutController
import RolloutRedis
import RolloutTestSupport
import Synchronization
import Testing

/// Time limits on a clock the test moves: nothing here depends on the machine's speed.
@Suite("Deadlines on an injected clock")
struct DeadlineTests {
    @Test func theOperationWinsBeforeTheLimitAndTheTimerIsCancelled() async throws {
        let clock = ManualClock()
        let result = await withTimeLimit(.seconds(1), clock: clock) { 42 }
        #expect(try result?.get() == 42)
        #expect(clock.sleepers == 0)
    }

    @Test func theLimitWinsAndCancelsTheOperation() async throws {
        let clock = ManualClock()
        let cancelled = Mutex(false)
        async let limited = withTimeLimit(.seconds(5), clock: clock) {
            // Waits until cancelled: on the same manual clock, which the test never moves this far.
            do {
                try await clock.sleep(for: .seconds(3600))
            } catch {
                cancelled.withLock { $0 = error is CancellationError }
                throw error
            }
        }
        // Required: moving the clock before both sleeps wait would leave the limit's sleep
        // behind it forever. Generous: on a busy machine the child task may start late.
        try #require(await eventually(within: .seconds(120)) { clock.sleepers == 2 })
        clock.advance(by: .seconds(4))
        #expect(clock.sleepers == 2)
        clock.advance(by: .seconds(1))
        let result = await limited
        #expect(result == nil)
        #expect(cancelled.withLock { $0 })
        #expect(clock.sleepers == 0)
    }

    /// A stand-in that sends headers then stalls: the attempt's timeout, on the injected clock,
    /// covers the body; the query fails with `.timeout` and the client closes the connection.
    @Test(.tags(.webhook), arguments: [WebhookReceiver.Behaviour.stallAfterHead, .trickle(every: .milliseconds(200))])
    func aStalledBodyTimesOutOnTheClock(behaviour: WebhookReceiver.Behaviour) async throws {
        let stand = try WebhookReceiver(otherwise: behaviour)
        defer { stand.stop() }
        let clock = ManualClock()
        let base = try HTTPEndpoint.parse(stand.url("")).get()
        let client = PrometheusClient(
            base: base, timeout: .seconds(3600), retry: RetryPolicy(baseDelay: .zero, maxAttempts: 1), guards: EndpointGuard(name: "stalled"),
            clock: clock)
        async let answer: PrometheusError? = {
            do throws(PrometheusError) {
                _ = try await client.value(of: "up")
                return nil
            } catch {
                return error
            }
        }()
        try #require(await eventually(within: .seconds(120)) { stand.requests.count == 1 && clock.sleepers == 1 })
        clock.advance(by: .seconds(3600))
        let failure = try #require(await answer)
        #expect(failure.code == .timeout)
        #expect(failure.message.contains("did not answer within query_timeout 1h"), "\(failure)")
        #expect(failure.message.contains("headers to last byte"), "\(failure)")
        #expect(await eventually(within: .seconds(60)) { stand.closedByClient >= 1 }, "closed by the client: \(stand.closedByClient)")
    }

    /// The same on the continuous clock, as a run uses it: the query fails with `.timeout` and
    /// the connection is closed. No bound on how long it took: only that the limit, not the
    /// stand-in, ended it.
    @Test(.tags(.webhook), arguments: [WebhookReceiver.Behaviour.stallAfterHead, .trickle(every: .milliseconds(200))])
    func aStalledBodyTimesOutOnTheContinuousClock(behaviour: WebhookReceiver.Behaviour) async throws {
        let stand = try WebhookReceiver(otherwise: behaviour)
        defer { stand.stop() }
        let base = try HTTPEndpoint.parse(stand.url("")).get()
        let client = PrometheusClient(
            base: base, timeout: .seconds(1), retry: RetryPolicy(baseDelay: .zero, maxAttempts: 1), guards: EndpointGuard(name: "stalled"))
        do throws(PrometheusError) {
            _ = try await client.value(of: "up")
            Issue.record("a stalled body gave a value")
        } catch {
            #expect(error.code == .timeout, "\(error)")
            #expect(error.message.contains("did not answer within query_timeout 1s"), "\(error)")
            #expect(error.message.contains("headers to last byte"), "\(error)")
        }
        #expect(await eventually(within: .seconds(60)) { stand.closedByClient >= 1 }, "closed by the client: \(stand.closedByClient)")
    }

    @Test func theLockOutlastsEverythingTheRunMayDoWhileHoldingIt() {
        let redis = RedisClient(url: .localDefault)  // never connects: only its timeouts are read
        defer { redis.close() }
        // query_timeout 1s, 3 attempts, backoff at most 200 ms then 400 ms.
        let budget = EvaluationBudget(prometheus: PrometheusClient(base: HTTPEndpoint.placeholder, timeout: .seconds(1)), redis: redis, replicaTimeout: ReplicaAcknowledgement.defaultTimeout)
        #expect(budget.prometheus == .milliseconds(3600))
        // Each round trip: the 1 s connect timeout and a write's deadline (RedisServerTime.writeBudget);
        // the two writes followed by WAIT, each its 500 ms and the 1 s command timeout more.
        #expect(budget.redis == .milliseconds(4000) * 6 + .milliseconds(1500) * 2)
        #expect(budget.lockTTL == (budget.prometheus + budget.redis) * 3 / 2)
        let start = ContinuousClock.now
        #expect(start.duration(to: budget.prometheusDeadline(from: start)) + budget.redis < budget.lockTTL)
        // A slow Prometheus setting lengthens the lock with it, keeping the margin.
        let slow = EvaluationBudget(prometheus: PrometheusClient(base: HTTPEndpoint.placeholder, timeout: .seconds(60)), redis: redis, replicaTimeout: ReplicaAcknowledgement.defaultTimeout)
        #expect(slow.prometheus == .seconds(180) + .milliseconds(600))
        #expect(slow.lockTTL == (slow.prometheus + slow.redis) * 3 / 2)
    }
}
