import Metrics
import MetricsTestKit
import RolloutGate
import RolloutGateTesting
import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("The cohort recorder: requests, failures and durations per feature and cohort", .serialized)
struct CohortRecorderTests {
    @Test func aDecisionNamesItsCohortAndWhetherChancePlacedIt() {
        let flags = TestFlags()
        flags.set("google", percent: 50)
        flags.set("google", .allow("vip"))
        let gate = flags.gate
        // user_123 is in bucket 30079 (on at 50%), user-1 in bucket 83092 (off).
        let on = gate.decision("google", for: Subject(id: "user_123"))
        let off = gate.decision("google", for: Subject(id: "user-1"))
        #expect(on.cohort == .on && on.isBucketed)
        #expect(off.cohort == .off && off.isBucketed)
        #expect(Cohort.on.description == "on" && Cohort.off.rawValue == "off")
        // Chosen by a list, not by chance: a cohort label still, but never counted.
        let allowed = gate.decision("google", for: Subject(id: "vip"))
        #expect(allowed.cohort == .on && !allowed.isBucketed)
        #expect(!gate.decision("google", for: Subject(id: "")).isBucketed)  // anonymous
        #expect(!gate.decision("unknown", for: Subject(id: "user-1")).isBucketed)  // no_data
        #expect(!gate.decision("Google", for: Subject(id: "user-1")).isBucketed)  // invalid name
        flags.set("google", .kill)
        let killed = gate.decision("google", for: Subject(id: "user_123"))
        #expect(killed.cohort == .off && !killed.isBucketed)
    }

    @Test func theHotPathsBucketsAreTheExportedBounds() {
        for (index, bound) in CohortTally.bucketBounds.enumerated() {
            #expect(CohortTally.bucket(ofNanoseconds: bound) == index)
            #expect(CohortTally.bucket(ofNanoseconds: bound + 1) == (index + 1 < CohortTally.bucketBounds.count ? index + 1 : nil))
        }
        #expect(CohortTally.bucket(ofNanoseconds: 0) == 0)
    }

    @Test func requestsFailuresAndDurationsAreCountedPerCohort() async throws {
        let metrics = TestMetrics()
        try await withMetricsFactory(metrics) {
            let flags = TestFlags()
            flags.set("google", percent: 50)
            flags.set("google", .allow("vip"))
            let gate = flags.gate
            let google = gate.feature("google")
            var expected: [Cohort: (requests: Int, failures: Int)] = [.on: (0, 0), .off: (0, 0)]
            for index in 0..<1_000 {
                let decision = google.decision(for: Subject(id: "user-\(index)"))
                let failed = index % 10 == 0
                // The on cohort takes 30 ms, the off cohort 200 ms; by handle and by name in turns.
                let duration: Duration = decision.isOn ? .milliseconds(30) : .milliseconds(200)
                if index % 2 == 0 {
                    google.record(decision, failed: failed, duration: duration)
                } else {
                    gate.record(decision, of: "google", failed: failed, duration: duration)
                }
                expected[decision.cohort, default: (0, 0)].requests += 1
                if failed { expected[decision.cohort, default: (0, 0)].failures += 1 }
            }
            // Not placed by chance: not counted.
            google.record(google.decision(for: Subject(id: "vip")), failed: true, duration: .seconds(1))
            gate.record(gate.decision("google", for: Subject(id: "")), of: "google", failed: true, duration: .seconds(1))
            let on = try #require(expected[.on]), off = try #require(expected[.off])
            #expect(on.requests > 400 && off.requests > 400)

            await gate.refresh()  // recorded requests reach swift-metrics at each refresh
            func counter(_ label: String, _ cohort: Cohort, le: String? = nil) throws -> Int64 {
                var labels = [("feature", "google"), ("cohort", cohort.rawValue)]
                if let le { labels.append(("le", le)) }
                return try metrics.expectCounter(label, labels).totalValue
            }
            for (cohort, counts) in [(Cohort.on, on), (.off, off)] {
                #expect(try counter("rollout_cohort_requests_total", cohort) == Int64(counts.requests))
                #expect(try counter("rollout_cohort_failures_total", cohort) == Int64(counts.failures))
                #expect(try counter("rollout_cohort_duration_seconds_count", cohort) == Int64(counts.requests))
                #expect(try counter("rollout_cohort_duration_seconds_bucket", cohort, le: "+Inf") == Int64(counts.requests))
            }
            // Cumulative buckets: 30 ms is in le=0.05 and above, 200 ms in le=0.25 and above.
            #expect(try counter("rollout_cohort_duration_seconds_bucket", .on, le: "0.025") == 0)
            #expect(try counter("rollout_cohort_duration_seconds_bucket", .on, le: "0.05") == Int64(on.requests))
            #expect(try counter("rollout_cohort_duration_seconds_bucket", .on, le: "10") == Int64(on.requests))
            #expect(try counter("rollout_cohort_duration_seconds_bucket", .off, le: "0.1") == 0)
            #expect(try counter("rollout_cohort_duration_seconds_bucket", .off, le: "0.25") == Int64(off.requests))
            // The sum in seconds (TestMetrics rounds a floating-point counter down to whole units).
            let onSum = try counter("rollout_cohort_duration_seconds_sum", .on)
            #expect(abs(Double(onSum) - 0.030 * Double(on.requests)) <= 1)
            let offSum = try counter("rollout_cohort_duration_seconds_sum", .off)
            #expect(abs(Double(offSum) - 0.200 * Double(off.requests)) <= 1)

            // Counted once: the next refresh adds only what was recorded since.
            let one = google.decision(for: Subject(id: "user_123"))
            google.record(one, failed: false, duration: .milliseconds(1))
            await gate.refresh()
            #expect(try counter("rollout_cohort_requests_total", .on) == Int64(on.requests + 1))
            #expect(try counter("rollout_cohort_duration_seconds_bucket", .on, le: "0.005") == 1)
            #expect(try counter("rollout_cohort_requests_total", .off) == Int64(off.requests))
        }
    }

    @Test func everyRequestIsCountedFromMoreThreadsThanHaveStripesOfTheirOwn() async throws {
        let metrics = TestMetrics()
        try await withMetricsFactory(metrics) {
            let flags = TestFlags()
            flags.set("google", percent: 100)
            let gate = flags.gate
            let google = gate.feature("google")
            // Up to 64 threads count in stripes of their own (plain stores); the rest share one
            // (atomic adds), and the first records race to make the feature's recorder.
            let threads = 80
            let perThread = 2_000
            try await onThreadsAtOnce(threads) { thread in
                for index in 0..<perThread {
                    let decision = google.decision(for: Subject(id: "user-\(thread)-\(index)"))
                    if index % 2 == 0 {
                        google.record(decision, failed: index % 4 == 0, duration: .milliseconds(20))
                    } else {
                        gate.record(decision, of: "google", failed: false, duration: .milliseconds(20))
                    }
                }
            }
            await gate.refresh()
            let labels = [("feature", "google"), ("cohort", "on")]
            let requests = try metrics.expectCounter("rollout_cohort_requests_total", labels)
            #expect(requests.totalValue == Int64(threads * perThread))
            #expect(try metrics.expectCounter("rollout_cohort_failures_total", labels).totalValue == Int64(threads * perThread / 4))
            #expect(try metrics.expectCounter("rollout_cohort_duration_seconds_bucket", labels + [("le", "0.025")]).totalValue
                == Int64(threads * perThread))
        }
    }

    @Test func aRunningGateWithPushInvalidationFlushesEveryRefreshInterval() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:google:rollout_percent", "100")
        let metrics = TestMetrics()
        let clock = ManualClock()
        try await withMetricsFactory(metrics) {
            // Push connected: full refreshes only every 60 s; the counts must not wait for one.
            let gate = FeatureGate(redisURL: server.url(), features: ["google"], clock: clock)
            let running = Task { try await gate.run() }
            defer { running.cancel() }
            #expect(await eventually(within: .seconds(60)) { gate.isEnabled("google", for: Subject(id: "a")) })
            let google = gate.feature("google")
            for index in 0..<10 {
                google.record(google.decision(for: Subject(id: "user-\(index)")), failed: index < 3, duration: .milliseconds(7))
            }
            let labels = [("feature", "google"), ("cohort", "on")]
            // One refresh interval, well before the next full refresh.
            _ = await eventually(within: .seconds(60)) { clock.sleepers > 0 }
            clock.advance(by: .seconds(5))
            let flushed = await eventually(within: .seconds(60)) {
                (try? metrics.expectCounter("rollout_cohort_requests_total", labels).totalValue) == 10
            }
            #expect(flushed)
            let failures = try metrics.expectCounter("rollout_cohort_failures_total", labels)
            #expect(failures.totalValue == 3)
            #expect(try metrics.expectCounter("rollout_cohort_duration_seconds_bucket", labels + [("le", "0.01")]).totalValue == 10)
            // Nothing of the off cohort was recorded: it has no series at all.
            let offLabels = [("feature", "google"), ("cohort", "off")]
            #expect(throws: (any Error).self) { try metrics.expectCounter("rollout_cohort_requests_total", offLabels) }
        }
    }
}
