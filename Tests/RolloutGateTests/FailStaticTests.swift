import Foundation
import InMemoryLogging
import Logging
import Metrics
import MetricsTestKit
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Synchronization
import Testing

/// What the checking threads of a stress test share.
private final class Tallies: Sendable {
    let stop = Atomic(false)
    let wrong = Atomic(0)
    let checked = Atomic(0)
}

/// How often a gate's change stream yielded.
private final class ChangesHeard: Sendable {
    let count = Atomic(0)
}

/// A gate on a manual clock, polling only (so the only refreshes are the ones the clock allows).
private func manualGate(
    _ server: RedisServer, clock: ManualClock, maxStaleness: Duration? = nil, logs: InMemoryLogHandler = InMemoryLogHandler()
) -> FeatureGate {
    var configuration = FeatureGate.Configuration()
    configuration.pushInvalidation = false
    configuration.refreshInterval = .seconds(5)
    configuration.maxStaleness = maxStaleness
    // Generous: a killed server refuses at once, and a loaded machine must not turn a refresh
    // of a live one into a failure (the recovery below waits for one).
    configuration.connectTimeout = .seconds(2)
    configuration.commandTimeout = .seconds(2)
    return FeatureGate(
        redisURL: server.url(), features: ["google"], configuration: configuration, logger: Logger(label: "test") { _ in logs },
        clock: clock)
}

/// Advances `clock` by `step` at a time until the gate has made `refreshes` more attempts
/// to read Redis, whatever their outcome (the refresher sleeps on the clock between them).
private func advance(_ clock: ManualClock, by total: Duration, step: Duration = .seconds(5)) async {
    var moved = Duration.zero
    while moved < total {
        // The refresher's tick is asleep on the clock before each step, so each step is one tick.
        _ = await eventually(within: .seconds(60)) { clock.sleepers > 0 }
        clock.advance(by: step)
        moved += step
    }
}

/// Whether the gate logs that Redis is reachable again, within 20 refresh ticks of `clock`,
/// each waited for as long as a busy machine makes its read take (up to 30 s).
private func saysReachableAgain(_ logs: InMemoryLogHandler, ticking clock: ManualClock) async -> Bool {
    for _ in 0..<20 {
        await advance(clock, by: .seconds(5))
        if await eventually(within: .seconds(30), { logs.entries.contains { "\($0.message)".contains("reachable again") } }) { return true }
    }
    return false
}

/// A redis-server where `google` is at 100%.
private func serverWithGoogleOn() async throws -> RedisServer {
    let server = try await RedisServer.start()
    let admin = RedisClient(url: server.url())
    defer { admin.close() }
    _ = try await admin.send("SET", "flags:google:rollout_percent", "100")
    return server
}

@Suite("Fail static: the last known answers stand while Redis is away", .tags(.redis), .requiresRedis, .serialized)
struct FailStaticTests {
    @Test func aNinetySecondOutageKeepsEveryAnswerAndSaysItIsStale() async throws {
        let server = try await serverWithGoogleOn()
        let clock = ManualClock()
        let logs = InMemoryLogHandler()
        let gate = manualGate(server, clock: clock, logs: logs)
        let google = gate.feature("google")
        // Going stale and fresh again changes every answer's freshness: a server's clients are told.
        let told = ChangesHeard()
        let changes = gate.changes()
        let listener = Task {
            for await _ in changes { told.count.wrappingAdd(1, ordering: .relaxed) }
        }
        defer { listener.cancel() }
        try await whileRunning(gate) {
            #expect(await eventually(within: .seconds(60)) { gate.isEnabled("google", for: Subject(id: "a")) })
            #expect(gate.decision("google", for: Subject(id: "a")).freshness == .live)
            let beforeOutage = told.count.load(ordering: .relaxed)
            await server.killOffPool()
            await advance(clock, by: .seconds(90))
            #expect(await eventually(within: .seconds(60)) { told.count.load(ordering: .relaxed) > beforeOutage }, "not told of going stale")
            let whileStale = told.count.load(ordering: .relaxed)
            // Still on, by the same rule, and marked stale with the snapshot's age.
            let decision = gate.decision("google", for: Subject(id: "a"))
            #expect(decision.isOn)
            guard case .bucket = decision.reason else {
                Issue.record("expected the bucket rule, got \(decision.reason)")
                return
            }
            guard case .stale(let age) = decision.freshness else {
                Issue.record("expected a stale decision, got \(decision.freshness)")
                return
            }
            #expect(age >= .seconds(90))
            #expect("\(decision)".contains("(stale \(age.components.seconds) s)"))
            #expect(google.decision(for: Subject(id: "a")) == decision)
            #expect(try #require(gate.snapshotAge) >= .seconds(90))
            // Logged when it went stale, once, not per check or per failed refresh.
            #expect(logs.entries.filter { "\($0.message)".contains("snapshot is stale") }.count == 1)
            #expect(await eventually(within: .seconds(60)) { logs.entries.contains { "\($0.message)".contains("Cannot refresh") } })
            #expect(logs.entries.filter { "\($0.message)".contains("Cannot refresh") && $0.level == .warning }.count == 1)
            // Redis back: fresh again at the next refresh, and logged once.
            try await server.restartOffPool()
            // A tick reads Redis again: wait for the gate to say it did (the event, however long
            // a busy machine makes that read), then the snapshot is live.
            let recovered = await saysReachableAgain(logs, ticking: clock)
            // On a failure, the gate's own account of its refreshes says why.
            #expect(recovered, "\(logs.entries.suffix(10).map { "\($0.level) \($0.message) \($0.metadata)" }.joined(separator: "\n"))")
            #expect(gate.decision("google", for: Subject(id: "a")).freshness == .live)
            #expect(logs.entries.filter { "\($0.message)".contains("reachable again") }.count == 1)
            #expect(await eventually(within: .seconds(60)) { told.count.load(ordering: .relaxed) > whileStale }, "not told of being fresh again")
        }
    }

    @Test func aFiniteMaxStalenessStillFailsClosed() async throws {
        let server = try await serverWithGoogleOn()
        let clock = ManualClock()
        let gate = manualGate(server, clock: clock, maxStaleness: .seconds(60))
        #expect(await gate.prepare(["google"]))
        await server.killOffPool()
        clock.advance(by: .seconds(59))
        #expect(gate.isEnabled("google", for: Subject(id: "a")))
        clock.advance(by: .seconds(2))
        #expect(gate.decision("google", for: Subject(id: "a")) == Decision(isOn: false, reason: .staleSnapshot))
    }

    @Test func aRunningGateFailsClosedPastMaxStalenessAndRecovers() async throws {
        let server = try await serverWithGoogleOn()
        let clock = ManualClock()
        let gate = manualGate(server, clock: clock, maxStaleness: .seconds(60))
        try await whileRunning(gate) {
            #expect(await eventually(within: .seconds(60)) { gate.isEnabled("google", for: Subject(id: "a")) })
            await server.killOffPool()
            // Within the staleness bound the last good snapshot still answers...
            await advance(clock, by: .seconds(55))
            #expect(gate.isEnabled("google", for: Subject(id: "a")))
            // ...past it the gate fails closed...
            await advance(clock, by: .seconds(10))
            #expect(gate.decision("google", for: Subject(id: "a")) == Decision(isOn: false, reason: .staleSnapshot))
            // ...and the first good read after Redis is back answers again.
            try await server.restartOffPool()
            let admin = RedisClient(url: server.url())
            defer { admin.close() }
            _ = try await admin.send("SET", "flags:google:rollout_percent", "100")
            var recovered = false
            for _ in 0..<20 where !recovered {
                await advance(clock, by: .seconds(5))
                recovered = await eventually(within: .seconds(5)) { gate.isEnabled("google", for: Subject(id: "a")) }
            }
            #expect(recovered)
            #expect(gate.decision("google", for: Subject(id: "a")).freshness == .live)
        }
    }

    @Test func ageIsMeasuredFromTheReadEvenWithoutARefresher() async throws {
        let server = try await serverWithGoogleOn()
        let clock = ManualClock()
        let gate = manualGate(server, clock: clock)
        #expect(await gate.prepare(["google"]))
        // Within the refresh interval plus the time a read may take: live.
        clock.advance(by: .seconds(5))
        #expect(gate.decision("google", for: Subject(id: "a")).freshness == .live)
        // No run(), no failed refresh: the answer still says how old it is.
        clock.advance(by: .seconds(95))
        #expect(gate.decision("google", for: Subject(id: "a")).freshness == .stale(age: .seconds(100)))
        #expect(gate.snapshotAge == .seconds(100))
    }
}

@Suite("A check never hurts its service", .tags(.redis), .requiresRedis)
struct CheckSafetyTests {
    @Test func anInvalidNameAnswersOffLogsOnceAndCounts() async throws {
        let server = try await RedisServer.start()
        let logs = InMemoryLogHandler()
        let metrics = TestMetrics()
        await withMetricsFactory(metrics) {
            let gate = FeatureGate(redisURL: server.url(), logger: Logger(label: "test") { _ in logs })
            for _ in 0..<3 {
                #expect(gate.decision("Google", for: Subject(id: "a")) == Decision(isOn: false, reason: .invalidName))
            }
            #expect(!gate.feature("has space").isEnabled(for: Subject(id: "a")))
            #expect(gate.state(of: "Google") == nil)
            #expect(await gate.prepare(["Google"]))  // nothing to read, nothing refused
            let errors = logs.entries.filter { $0.level == .error }
            #expect(errors.count == 2)
            #expect(errors.first?.metadata["feature.name"] == "Google")
        }
        #expect(try metrics.expectCounter("rollout_gate_invalid_name_total").totalValue == 4)
        let literal: FeatureName = "Google"
        #expect(!literal.isValid)
        let text = "Google"
        #expect(throws: KeyspaceError.self) { try FeatureName(text) }
    }

    @Test func loadSaysWhyRedisCouldNotBeRead() async throws {
        let server = try await RedisServer.start(arguments: ["--requirepass", "s3cret"])
        let wrong = FeatureGate(redisURL: server.url(password: "not-it"))
        let error = await #expect(throws: RedisError.self) { try await wrong.load(["google"]) }
        #expect(error?.code == .authenticationFailed)
        #expect(!(await wrong.prepare(["google"])))
        let right = FeatureGate(redisURL: server.url(password: "s3cret"))
        try await right.load(["google"])
        #expect(right.state(of: "google") != nil)
    }

    @Test func runCanBeStartedAgainAndNotTwiceAtOnce() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        var configuration = FeatureGate.Configuration()
        configuration.refreshInterval = .seconds(3600)
        let gate = FeatureGate(redisURL: server.url(), features: ["google"], configuration: configuration)
        #expect(gate.decision("google", for: Subject(id: "a")).reason == .noData)  // before run()
        let first = Task { try await gate.run() }
        #expect(await eventually(within: .seconds(60)) { gate.state(of: "google") != nil })
        // A second run() while the first one runs returns at once instead of racing it.
        try await gate.run()
        first.cancel()
        try await first.value
        _ = try await admin.send("SET", "flags:google:rollout_percent", "100")
        #expect(!gate.isEnabled("google", for: Subject(id: "a")))  // after run(): the last snapshot
        try await whileRunning(gate) {
            // The second run reads everything again at start.
            #expect(await eventually(within: .seconds(60)) { gate.isEnabled("google", for: Subject(id: "a")) })
        }
    }

    @Test func checksFromManyThreadsWhileTheSnapshotChangesUnderThem() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.pipeline([
            RedisCommand("SET", "flags:google:rollout_percent", "50"), RedisCommand("SADD", "flags:google:allow", "vip"),
        ])
        let gate = FeatureGate(redisURL: server.url(), features: ["google"])
        #expect(await gate.prepare(["google"]))
        let google = gate.feature("google")
        let tallies = Tallies()
        let threads = 4
        let done = DispatchSemaphore(value: 0)
        for thread in 0..<threads {
            Thread {
                var index = thread
                while !tallies.stop.load(ordering: .relaxed) {
                    let subject = Subject(id: index % 10 == 0 ? "vip" : "user-\(index % 1000)")
                    let byName = gate.decision("google", for: subject)
                    let byHandle = google.decision(for: subject)
                    // Every answer comes from a whole entry: the allow list or a bucket, never garbage.
                    for decision in [byName, byHandle] {
                        switch decision.reason {
                        case .allowed: if subject.id != "vip" { tallies.wrong.add(1, ordering: .relaxed) }
                        case .bucket: if subject.id == "vip" { tallies.wrong.add(1, ordering: .relaxed) }
                        default: tallies.wrong.add(1, ordering: .relaxed)
                        }
                    }
                    tallies.checked.add(1, ordering: .relaxed)
                    index += threads
                }
                done.signal()
            }.start()
        }
        // 200 changes, each published while the threads check.
        for round in 0..<200 {
            _ = try await admin.send("SET", "flags:google:rollout_percent", round % 2 == 0 ? "10" : "90")
            #expect(await gate.refresh())
        }
        tallies.stop.store(true, ordering: .relaxed)
        for _ in 0..<threads { await withCheckedContinuation { continuation in DispatchQueue.global().async { done.wait(); continuation.resume() } } }
        #expect(tallies.wrong.load(ordering: .relaxed) == 0)
        #expect(tallies.checked.load(ordering: .relaxed) > 0)
        #expect(google.decision(for: Subject(id: "user-1")).reason == gate.decision("google", for: Subject(id: "user-1")).reason)
    }

    @Test func everyDecisionIsCountedFromMoreThreadsThanHaveStripesOfTheirOwn() async throws {
        let server = try await RedisServer.start()
        let admin = RedisClient(url: server.url())
        defer { admin.close() }
        _ = try await admin.send("SET", "flags:google:rollout_percent", "100")
        let metrics = TestMetrics()
        try await withMetricsFactory(metrics) {
            var configuration = FeatureGate.Configuration()
            configuration.pushInvalidation = false
            let gate = FeatureGate(redisURL: server.url(), features: ["google"], configuration: configuration)
            #expect(await gate.prepare(["google"]))
            let google = gate.feature("google")
            // Up to 64 threads count in stripes of their own (plain stores); the rest share one
            // (atomic adds). 80 threads at once use both kinds, on any machine.
            let threads = 80
            let checksPerThread = 2_000
            try await onThreadsAtOnce(threads) { thread in
                for index in 0..<checksPerThread {
                    let subject = Subject(id: "user-\(thread)-\(index)")
                    _ = index % 2 == 0 ? gate.isEnabled("google", for: subject) : google.isEnabled(for: subject)
                }
                _ = gate.isEnabled("google", for: Subject(id: ""))  // anonymous: on at 100%
                _ = google.decision(for: Subject(id: "x"), atPercent: .zero)  // a preview: not counted
            }
            #expect(await gate.refresh())  // counts reach swift-metrics at each refresh
            let on = try metrics.expectCounter("rollout_gate_decisions_total", [("feature", "google"), ("result", "on")])
            #expect(on.totalValue == threads * (checksPerThread + 1))
            // Counted once: the next refresh adds only what was checked since.
            _ = gate.decision("google", for: Subject(id: "one-more"))
            #expect(await gate.refresh())
            #expect(on.totalValue == threads * (checksPerThread + 1) + 1)
        }
    }

}
