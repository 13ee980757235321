// Benchmarks behind docs/performance.md. Run through scripts/bench.sh, which starts a
// redis-server and builds in release mode:
//   rollout-bench REDIS_URL [iterations]
//   rollout-bench --checks N REDIS_URL   (N checks after one load; for valgrind's allocation count)
//   rollout-bench --failover ROUNDS THREADS   (starts its own Sentinel topology: Failover.swift)
//   rollout-bench --cohort ROLLOUTS SEED   (the cohort comparison's simulation: Cohort.swift)
import CRolloutCrypto
import Foundation
import RolloutGate
import RolloutRedis

func nanoseconds(_ duration: Duration) -> Double {
    Double(duration.components.seconds) * 1e9 + Double(duration.components.attoseconds) / 1e9
}

/// The best of `rounds` timings of `body` run `iterations` times: ns per iteration.
@inline(never)
func measure(_ label: String, iterations: Int, rounds: Int = 5, _ body: (Int) -> Void) -> Double {
    var best = Double.infinity
    for _ in 0..<rounds {
        let start = ContinuousClock.now
        for index in 0..<iterations { body(index) }
        best = min(best, nanoseconds(ContinuousClock.now - start) / Double(iterations))
    }
    print(String(format: "%-58@ %9.1f ns/op", label as NSString, best))
    return best
}

func percentile(_ values: [Double], _ p: Double) -> Double {
    let sorted = values.sorted()
    return sorted[min(sorted.count - 1, Int(Double(sorted.count) * p))]
}

/// Several bodies timed in turns: each of `rounds` rounds runs every body `iterations` times,
/// back to back, so a change in the machine's load between rounds hits them all alike. Prints
/// each body's best round, and for each after the first the median over rounds of its time
/// over the first body's time in the same round: the ratio a budget is judged by.
@inline(never)
func measureInTurns(iterations: Int, rounds: Int = 21, _ cases: [(label: String, body: (Int) -> Void)]) -> [Double] {
    var times = [[Double]](repeating: [], count: cases.count)
    for _ in 0..<rounds {
        for (index, item) in cases.enumerated() {
            let start = ContinuousClock.now
            for iteration in 0..<iterations { item.body(iteration) }
            times[index].append(nanoseconds(ContinuousClock.now - start) / Double(iterations))
        }
    }
    var ratios: [Double] = [1]
    for (index, item) in cases.enumerated() {
        let best = times[index].min() ?? .nan
        if index == 0 {
            print(String(format: "%-58@ %9.1f ns/op (the reference)", item.label as NSString, best))
        } else {
            let ratio = percentile(zip(times[index], times[0]).map { $0 / $1 }, 0.5)
            ratios.append(ratio)
            print(String(format: "%-58@ %9.1f ns/op  x%.2f", item.label as NSString, best, ratio))
        }
    }
    return ratios
}

// 24-byte keys, as REFERENCE.md measures: "google:" + a 17-character actor id.
let actors = (0..<1024).map { String(format: "user-%012d", $0 * 7919) }
let keys = actors.map { Array("google:\($0)".utf8) }
var sink: UInt64 = 0

let arguments = CommandLine.arguments
if arguments.count == 4, arguments[1] == "--failover", let rounds = Int(arguments[2]), let threads = Int(arguments[3]), rounds > 0, threads > 0 {
    do {
        try await runFailoverBench(rounds: rounds, threads: threads)
    } catch {
        print("FAILED: \(error)")
        exit(1)
    }
    exit(0)
}
if arguments.count == 4, arguments[1] == "--cohort", let rollouts = Int(arguments[2]), let seed = UInt64(arguments[3]), rollouts > 0 {
    do {
        try runCohortBench(rollouts: rollouts, seed: seed)
    } catch {
        print("FAILED: \(error)")
        exit(1)
    }
    exit(0)
}
if arguments.count == 4, arguments[1] == "--checks", let count = Int(arguments[2]), let url = try? RedisURL(parsing: arguments[3]) {
    // N gate checks after one load, counted by scripts/bench/count_mallocs.c: run with two
    // values of N; the difference in allocations over the difference in N is per check.
    var configuration = FeatureGate.Configuration()
    configuration.pushInvalidation = false
    let gate = FeatureGate(redisURL: url, features: ["google"], configuration: configuration)
    guard await gate.prepare(["google"]) else { exit(1) }
    let handle = gate.feature("google")
    var on = 0
    let subjects = UnsafeMutableBufferPointer<Subject>.allocate(capacity: 1024)
    _ = subjects.initialize(from: actors.map { Subject(id: $0) })
    for index in 0..<count where gate.isEnabled("google", for: subjects[index & 1023]) { on += 1 }
    for index in 0..<count where handle.isEnabled(for: subjects[index & 1023]) { on += 1 }
    print("checks: \(count), on: \(on)")
    exit(0)
}
if arguments.count == 7, arguments[1] == "--fleet", let gates = Int(arguments[2]), let featureCount = Int(arguments[3]),
    let seconds = Int(arguments[4]), let url = try? RedisURL(parsing: arguments[6])
{
    // What a fleet costs one redis-server: `gates` gates in this process, each knowing
    // `featureCount` features, for `seconds`, push invalidation on or off (arguments[5]).
    let push = arguments[5] == "on"
    let client = RedisClient(url: url)
    let names = (0..<featureCount).compactMap { try? FeatureName("fleet-\($0)") }
    var seed: [RedisCommand] = [RedisCommand("FLUSHDB")]
    for name in names {
        let keys = FeatureKeys(name)
        seed += [RedisCommand("SET", keys.rolloutPercent, "50"), RedisCommand("SET", keys.enabled, "true")]
    }
    _ = try await client.pipeline(seed)
    var configuration = FeatureGate.Configuration()
    configuration.pushInvalidation = push
    configuration.commandTimeout = .seconds(10)
    let fleet = (0..<gates).map { _ in FeatureGate(redisURL: url, features: names, configuration: configuration) }
    for gate in fleet { _ = await gate.prepare(names) }
    let services = fleet.map { gate in Task { try await gate.run() } }
    if push {
        while (try? await client.send("PUBSUB", "NUMSUB", "__redis__:invalidate").array?.last?.integer) ?? 0 < gates {
            try await Task.sleep(for: .milliseconds(50))
        }
    }
    func serverCounters() async throws -> (calls: Int, cpu: Double) {
        let stats = try await client.send("INFO", "commandstats").string ?? ""
        let cpu = try await client.send("INFO", "cpu").string ?? ""
        var calls = 0
        for line in stats.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
            if let field = line.split(separator: ",").first, let value = field.split(separator: "=").last, let count = Int(value) { calls += count }
        }
        var seconds = 0.0
        for line in cpu.split(whereSeparator: \.isNewline) where line.hasPrefix("used_cpu_sys:") || line.hasPrefix("used_cpu_user:") {
            seconds += Double(line.split(separator: ":").last ?? "") ?? 0
        }
        return (calls, seconds)
    }
    let handles = fleet.map { $0.feature(names[0]) }
    let probe = Subject(id: "anyone")
    let before = try await serverCounters()
    let started = ContinuousClock.now
    var propagation: [Double] = []
    var round = 0
    while ContinuousClock.now - started < .seconds(seconds) {
        let turnOff = round % 2 == 0
        round += 1
        let flipped = ContinuousClock.now
        _ = try await client.send("SET", FeatureKeys(names[0]).enabled, turnOff ? "false" : "true")
        var waiting = Set(0..<gates)
        while !waiting.isEmpty, ContinuousClock.now - flipped < .seconds(30) {
            for index in waiting where (handles[index].decision(for: probe).reason == .killSwitch) == turnOff {
                waiting.remove(index)
                propagation.append(nanoseconds(ContinuousClock.now - flipped) / 1e6)
            }
            try await Task.sleep(for: .microseconds(200))
        }
        try await Task.sleep(for: .milliseconds(500))
    }
    let elapsed = nanoseconds(ContinuousClock.now - started) / 1e9
    let after = try await serverCounters()
    for service in services { service.cancel() }
    print(String(format: "fleet: %d gates x %d features, push %@, %.0f s: %.0f commands/s on the server, %.3f s of server CPU per second, kill-switch propagation over %d answers p50 %.2f ms p99 %.2f ms max %.2f ms",
        gates, featureCount, push ? "on" : "off", elapsed, Double(after.calls - before.calls) / elapsed, (after.cpu - before.cpu) / elapsed,
        propagation.count, percentile(propagation, 0.5), percentile(propagation, 0.99), propagation.max() ?? 0))
    client.close()
    exit(0)
}
guard arguments.count >= 2, let url = try? RedisURL(parsing: arguments[1]) else {
    print("usage: rollout-bench REDIS_URL [iterations] | rollout-bench --checks N REDIS_URL | rollout-bench --fleet GATES FEATURES SECONDS on|off REDIS_URL | rollout-bench --failover ROUNDS THREADS")
    exit(2)
}
let iterations = arguments.count > 2 ? Int(arguments[2]) ?? 2_000_000 : 2_000_000

print("== hashing (best of 5 rounds of \(iterations))")
var digest = [UInt8](repeating: 0, count: 32)
_ = measure("SHA-256, 24-byte key, one-shot SHA256()", iterations: iterations / 4) { index in
    keys[index & 1023].withUnsafeBytes { CRolloutCrypto_sha256_oneshot($0.baseAddress, $0.count, &digest) }
    sink &+= UInt64(digest[0])
}
_ = measure("FeatureName(\"google\") from a literal", iterations: iterations) { index in
    let name: FeatureName = "google"
    sink &+= UInt64(name.rawValue.utf8.count)
}

let client = RedisClient(url: url)
_ = try await client.pipeline([
    RedisCommand("SET", "flags:google:rollout_percent", "50"), RedisCommand("SET", "flags:google:enabled", "true"),
])
var configuration = FeatureGate.Configuration()
configuration.refreshInterval = .seconds(3600)
let gate = FeatureGate(redisURL: url, features: ["google"], configuration: configuration)
guard await gate.prepare(["google"]) else {
    print("cannot reach Redis at \(url)")
    exit(1)
}
let handle = gate.feature("google")

/// The single-thread checks against one fast SHA-256 of the same keys, timed in turns. In a
/// function of its own, with its inputs in local constants: the loops then borrow each subject
/// (top-level code copies it out of a global, retaining its strings: a cost of the loop, not
/// of the gate, which the reference does not pay).
@inline(never)
func timeChecksInTurns(gate: FeatureGate, handle: FeatureHandle, iterations: Int, rounds: Int) -> [Double] {
    let google: FeatureName = "google"
    var state = FeatureState.absent("google")
    state.rolloutPercent = RolloutPercent(parsing: "50") ?? .zero
    let halfState = state
    let subjects = actors.map { Subject(id: $0) }
    let flatKeys = keys.flatMap { $0 }
    var digest = 0 as UInt64
    let ratios = measureInTurns(iterations: iterations, rounds: rounds, [
        ("SHA-256, 24-byte key, SHA256_Init/Update/Final", { index in
            // The same keys the checks hash, laid out flat, into a digest on the stack.
            var out: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)
            flatKeys.withUnsafeBytes { keys in
                withUnsafeMutableBytes(of: &out) { out in
                    CRolloutCrypto_sha256(keys.baseAddress.map { $0 + (index & 1023) &* 24 }, 24, out.baseAddress?.assumingMemoryBound(to: UInt8.self))
                }
            }
            digest &+= out.0
        }),
        ("sha256_head64 of \"google\" and the id, from C (no Swift)", { index in
            flatKeys.withUnsafeBytes { keys in
                digest &+= CRolloutCrypto_sha256_head64("google", 6, nil, 0, keys.baseAddress.map { $0 + (index & 1023) &* 24 + 7 }, 17)
            }
        }),
        ("Bucketing.bucket (v2, no workspace)", { index in
            digest &+= UInt64(Bucketing.bucket(scheme: .v2, feature: google, workspace: nil, actor: subjects[index & 1023].id) ?? 0)
        }),
        ("FeatureState.decide (v2, 50%, no lock, no lookup)", { index in
            if halfState.decide(for: subjects[index & 1023]).isOn { digest &+= 1 }
        }),
        ("FeatureGate.isEnabled (cached, v2, 50%)", { index in
            if gate.isEnabled(google, for: subjects[index & 1023]) { digest &+= 1 }
        }),
        ("FeatureHandle.isEnabled (cached, v2, 50%)", { index in
            if handle.isEnabled(for: subjects[index & 1023]) { digest &+= 1 }
        }),
        ("FeatureHandle.decision (cached, v2, 50%)", { index in
            if handle.decision(for: subjects[index & 1023]).isOn { digest &+= 1 }
        }),
        ("FeatureHandle.decision, then record(_:failed:duration:)", { index in
            let decision = handle.decision(for: subjects[index & 1023])
            handle.record(decision, failed: index & 63 == 0, duration: .milliseconds(index & 127))
            if decision.isOn { digest &+= 1 }
        }),
    ])
    if digest == 42 { print("") }
    return ratios
}
let rounds = 21
print("\n== the same, timed in turns (\(rounds) rounds of \(iterations / 10); best round, and the median ratio to the SHA-256 of the same round)")
let ratios = timeChecksInTurns(gate: gate, handle: handle, iterations: iterations / 10, rounds: rounds)
print(String(format: "check by name / fast SHA-256 = %.2f (budget: at most 1.4), by handle = %.2f (budget: at most 1.2)", ratios[4], ratios[5]))
print(String(format: "recording a request: decision + record / decision = %.2f (budget: at most 2, recording no dearer than the check)", ratios[7] / ratios[6]))

print("\n== checks per second from several threads at once (best of 3; this machine has \(ProcessInfo.processInfo.activeProcessorCount) cores)")
/// Checks per second when `threads` threads each run `perThread` checks of `body` at once.
/// Each thread checks its own copies of the subjects, as requests do: shared strings would put
/// their reference counts on lines every thread writes, and measure that instead of the gate.
func throughput(threads: Int, perThread: Int, _ body: @escaping @Sendable (Subject) -> Bool) -> Double {
    var best = 0.0
    for _ in 0..<3 {
        let ready = DispatchSemaphore(value: 0)
        let go = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        for thread in 0..<threads {
            Thread {
                let subjects = (0..<1024).map { Subject(id: String(decoding: Array(actors[($0 &+ thread &* 7) & 1023].utf8), as: UTF8.self)) }
                ready.signal()
                go.wait()
                var on = 0
                for index in 0..<perThread where body(subjects[index & 1023]) { on &+= 1 }
                if on == -1 { print("") }
                done.signal()
            }.start()
        }
        for _ in 0..<threads { ready.wait() }
        let start = ContinuousClock.now
        for _ in 0..<threads { go.signal() }
        for _ in 0..<threads { done.wait() }
        best = max(best, Double(threads * perThread) / (nanoseconds(ContinuousClock.now - start) / 1e9))
    }
    return best
}
let perThread = iterations
for (label, check) in [
    ("by handle", { @Sendable (subject: Subject) in handle.isEnabled(for: subject) }),
    ("by name", { @Sendable (subject: Subject) in gate.isEnabled("google", for: subject) }),
    ("decision + record, by handle", { @Sendable (subject: Subject) in
        let decision = handle.decision(for: subject)
        handle.record(decision, failed: false, duration: .milliseconds(20))
        return decision.isOn
    }),
] as [(String, @Sendable (Subject) -> Bool)] {
    let one = throughput(threads: 1, perThread: perThread, check)
    let two = throughput(threads: 2, perThread: perThread, check)
    let four = throughput(threads: 4, perThread: perThread / 2, check)
    print(String(format: "%@: 1 thread %.2fM/s, 2 threads %.2fM/s (x%.2f; goal at least x1.9), 4 threads %.2fM/s (x%.2f)",
        label as NSString, one / 1e6, two / 1e6, two / one, four / 1e6, four / one))
}
let hashKey: @Sendable (Subject) -> Bool = { subject in
    withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 32) { digest in
        var key = "google:" + subject.id
        return key.withUTF8 { bytes in
            CRolloutCrypto_sha256(bytes.baseAddress, bytes.count, digest.baseAddress)
            return digest[0] == 0
        }
    }
}
let hashOne = throughput(threads: 1, perThread: perThread, hashKey)
let hashTwo = throughput(threads: 2, perThread: perThread, hashKey)
print(String(format: "baseline, building the key and its SHA-256: 1 thread %.2fM/s, 2 threads %.2fM/s (x%.2f: what the machine allows)",
    hashOne / 1e6, hashTwo / 1e6, hashTwo / hashOne))

print("\n== refresh of 1,000 features (one pipelined round trip)")
let many = (0..<1000).compactMap { try? FeatureName("bench-\($0)") }
var writes: [RedisCommand] = []
for feature in many {
    let keys = FeatureKeys(feature)
    writes += [
        RedisCommand("SET", keys.enabled, "true"), RedisCommand("SET", keys.rolloutPercent, "10"),
        RedisCommand("SET", keys.internalOnly, "false"), RedisCommand("SET", keys.paused, "false"),
        RedisCommand("SET", keys.lastChangeTime, "2025-10-08T15:30:00.123456+00:00"), RedisCommand("SET", keys.lastPercent, "0"),
        RedisCommand("SADD", keys.allow, "vip"), RedisCommand("HSET", keys.workspaces, "acme", "50"),
    ]
}
_ = try await client.pipeline(writes)
let bigGate = FeatureGate(redisURL: url, features: many, configuration: configuration)
_ = await bigGate.prepare(many)
var refreshTimes: [Double] = []
for _ in 0..<50 {
    let start = ContinuousClock.now
    _ = await bigGate.refresh()
    refreshTimes.append(nanoseconds(ContinuousClock.now - start) / 1e6)
}
let readCommands = many.flatMap { FeatureKeys($0).readCommands }
var wireTimes: [Double] = []
var parseTimes: [Double] = []
for _ in 0..<20 {
    let start = ContinuousClock.now
    let replies = try await client.pipeline(readCommands)
    let middle = ContinuousClock.now
    let count = FeatureKeys.readCommandCount
    for (index, feature) in many.enumerated() {
        if case .success = FeatureState.read(feature, from: replies[(index * count)..<((index + 1) * count)]) { sink &+= 1 }
    }
    wireTimes.append(nanoseconds(middle - start) / 1e6)
    parseTimes.append(nanoseconds(ContinuousClock.now - middle) / 1e6)
}
print(String(format: "  of which: pipeline (format, round trip, RESP to values) p50 %.2f ms; parsing states p50 %.2f ms", percentile(wireTimes, 0.5), percentile(parseTimes, 0.5)))
print(String(format: "refresh, 1000 features x \(FeatureKeys.readCommandCount) reads: p50 %.2f ms, p99 %.2f ms (budget: under 5 ms)", percentile(refreshTimes, 0.5), percentile(refreshTimes, 0.99)))

print("\n== kill-switch propagation with push invalidation")
let live = FeatureGate(redisURL: url, features: ["google"], configuration: configuration)
let service = Task { try await live.run() }
while live.state(of: "google") == nil { try await Task.sleep(for: .milliseconds(1)) }
while (try? await client.send("PUBSUB", "NUMSUB", "__redis__:invalidate").array?.last?.integer) ?? 0 < 1 {
    try await Task.sleep(for: .milliseconds(5))
}
try await Task.sleep(for: .milliseconds(100))
var propagation: [Double] = []
let probe = Subject(id: "anyone")
for round in 0..<200 {
    let turnOff = round % 2 == 0
    let start = ContinuousClock.now
    _ = try await client.send("SET", "flags:google:enabled", turnOff ? "false" : "true")
    while (live.decision("google", for: probe).reason == .killSwitch) != turnOff {
        if ContinuousClock.now - start > .seconds(2) { break }
        await Task.yield()
    }
    propagation.append(nanoseconds(ContinuousClock.now - start) / 1e6)
}
service.cancel()
print(String(format: "SET enabled -> gate answer changed: p50 %.2f ms, p99 %.2f ms, max %.2f ms (budget: p99 under 100 ms)",
    percentile(propagation, 0.5), percentile(propagation, 0.99), propagation.max() ?? 0))
_ = try await client.send("FLUSHDB")
client.close()
if sink == 42 { print("") }
