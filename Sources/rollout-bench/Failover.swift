// The failover as a gate sees it (issue 12 §5), `BENCH_ONLY=failover scripts/bench.sh`:
//   rollout-bench --failover ROUNDS THREADS
// Each round starts the tests' Sentinel topology (a primary, two replicas, three sentinels,
// quorum 2, down-after-milliseconds 1000), runs two gates on it with the default
// configuration (readFrom=primary and readFrom=replica), checks every feature of both through
// handles in a tight loop on THREADS threads, timing each check, SIGKILLs the primary, and
// measures for each gate the time from the kill to its first full read of Redis after it.
import Foundation
import Logging
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Synchronization

/// Nanoseconds on CLOCK_MONOTONIC, read through the vDSO (no system call): the one clock of
/// this benchmark, for the checks and for the kill alike.
@inline(__always)
func monotonicNanoseconds() -> UInt64 {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return UInt64(time.tv_sec) &* 1_000_000_000 &+ UInt64(time.tv_nsec)
}

/// Durations in nanoseconds: exact below 256 ns, then 32 buckets per power of two (3 %
/// wide), up to 2^40 ns; the maximum is kept exactly.
struct LatencyHistogram: Sendable {
    static let bucketCount = 256 + 32 * 32
    var counts = [UInt64](repeating: 0, count: bucketCount)
    var maximum: UInt64 = 0

    @inline(__always)
    static func bucket(_ nanoseconds: UInt64) -> Int {
        if nanoseconds < 256 { return Int(nanoseconds) }
        let exponent = min(39, 63 - nanoseconds.leadingZeroBitCount)
        let sub = Int(truncatingIfNeeded: nanoseconds >> UInt64(exponent - 5)) & 31
        return 256 + (exponent - 8) * 32 + sub
    }

    /// The largest value a bucket holds.
    static func upperBound(ofBucket index: Int) -> UInt64 {
        if index < 256 { return UInt64(index) }
        let exponent = 8 + (index - 256) / 32
        return (UInt64(32 + (index - 256) % 32 + 1) << UInt64(exponent - 5)) - 1
    }

    var total: UInt64 { counts.reduce(0, +) }

    /// The smallest bucket bound that `fraction` of the values do not exceed (never above the maximum).
    func percentile(_ fraction: Double) -> UInt64 {
        let wanted = UInt64((Double(total) * fraction).rounded(.up))
        var seen: UInt64 = 0
        for (index, count) in counts.enumerated() where count > 0 {
            seen += count
            if seen >= wanted { return min(maximum, Self.upperBound(ofBucket: index)) }
        }
        return maximum
    }

    mutating func add(_ other: LatencyHistogram) {
        for index in counts.indices { counts[index] += other.counts[index] }
        maximum = max(maximum, other.maximum)
    }
}

/// Where a gate's checks are counted: before the kill, from the kill to the gate's first full
/// read after it, and after that read.
enum FailoverPhase: Int, CaseIterable {
    case baseline, failover, after
}

/// The phases of every gate (two bits each) and the stop bit, in one word the checking
/// threads load once per batch of checks.
final class FailoverControl: Sendable {
    static let stopBit = 1 << 16
    let state = Atomic<Int>(0)

    /// Moves gate `gate` to its next phase.
    func advance(gate: Int) { state.add(1 << (2 * gate), ordering: .releasing) }

    func stop() { state.bitwiseOr(Self.stopBit, ordering: .releasing) }

    @inline(__always)
    static func phase(of gate: Int, in state: Int) -> Int { (state >> (2 * gate)) & 3 }

    /// The phase of the run as a whole: baseline until the kill, failover until every gate
    /// has read Redis again, then after.
    static func overall(_ state: Int, gates: Int) -> Int {
        let phases = (0..<gates).map { phase(of: $0, in: state) }
        return phases.contains(0) ? 0 : phases.contains(1) ? 1 : 2
    }
}

/// One check of the loop: a gate's handle, a subject, and the answer it gave before the kill.
struct CheckItem: Sendable {
    let gate: Int
    let handle: Int
    let subject: Int
    let expected: Bool
}

/// What one checking thread saw, per gate and phase. Its buffers are written only by that
/// thread until it signals it is done, and read only after that signal: so `@unchecked Sendable`.
final class CheckerRecord: @unchecked Sendable {
    let gates: Int
    private let slots: Int
    let counts: UnsafeMutablePointer<UInt64>
    let maxima: UnsafeMutablePointer<UInt64>
    let mismatches: UnsafeMutablePointer<Int>
    /// Voluntary and involuntary context switches of the thread per overall phase.
    var voluntarySwitches = [Int](repeating: 0, count: 3)
    var involuntarySwitches = [Int](repeating: 0, count: 3)

    init(gates: Int) {
        self.gates = gates
        slots = gates * FailoverPhase.allCases.count
        counts = .allocate(capacity: slots * LatencyHistogram.bucketCount)
        counts.initialize(repeating: 0, count: slots * LatencyHistogram.bucketCount)
        maxima = .allocate(capacity: slots)
        maxima.initialize(repeating: 0, count: slots)
        mismatches = .allocate(capacity: slots)
        mismatches.initialize(repeating: 0, count: slots)
    }

    deinit {
        counts.deallocate()
        maxima.deallocate()
        mismatches.deallocate()
    }

    func histogram(gate: Int, phase: FailoverPhase) -> LatencyHistogram {
        let slot = gate * FailoverPhase.allCases.count + phase.rawValue
        var histogram = LatencyHistogram()
        histogram.counts = Array(UnsafeBufferPointer(start: counts + slot * LatencyHistogram.bucketCount, count: LatencyHistogram.bucketCount))
        histogram.maximum = maxima[slot]
        return histogram
    }

    func mismatchCount(gate: Int, phase: FailoverPhase) -> Int { mismatches[gate * FailoverPhase.allCases.count + phase.rawValue] }
}

/// The thread's context switches so far (getrusage RUSAGE_THREAD: a system call, taken only
/// when the overall phase changes).
private func threadSwitches() -> (voluntary: Int, involuntary: Int) {
    var usage = rusage()
    getrusage(1, &usage)  // RUSAGE_THREAD (Linux), which Swift's Glibc module does not declare
    return (usage.ru_nvcsw, usage.ru_nivcsw)
}

/// Checks `items` round and round, timing every check: the interval between two clock reads
/// holds one check, one clock read and the bookkeeping. Until the control says stop, or for
/// `iterations` checks. With `callsGate` false the gate is not called (the answer is taken as
/// expected): the same loop then times what the measuring itself costs.
@inline(never)
func checkLoop(
    items: UnsafeBufferPointer<CheckItem>, handles: UnsafeBufferPointer<FeatureHandle>, subjects: UnsafeBufferPointer<Subject>,
    control: FailoverControl, record: CheckerRecord, callsGate: Bool = true, iterations: Int = .max
) {
    let phaseCount = FailoverPhase.allCases.count
    let bucketCount = LatencyHistogram.bucketCount
    var overall = 0
    var switches = threadSwitches()
    var remaining = iterations
    var previous = monotonicNanoseconds()
    while remaining > 0 {
        let state = control.state.load(ordering: .acquiring)
        let now = FailoverControl.overall(state, gates: record.gates)
        if now != overall || state & FailoverControl.stopBit != 0 {
            let current = threadSwitches()
            record.voluntarySwitches[overall] += current.voluntary - switches.voluntary
            record.involuntarySwitches[overall] += current.involuntary - switches.involuntary
            (switches, overall) = (current, now)
            if state & FailoverControl.stopBit != 0 { return }
            previous = monotonicNanoseconds()  // the system call is not a check's time
        }
        for item in items {
            let on = callsGate ? handles[item.handle].isEnabled(for: subjects[item.subject]) : item.expected
            let now = monotonicNanoseconds()
            let elapsed = now &- previous
            previous = now
            let slot = item.gate &* phaseCount &+ FailoverControl.phase(of: item.gate, in: state)
            record.counts[slot &* bucketCount &+ LatencyHistogram.bucket(elapsed)] &+= 1
            if elapsed > record.maxima[slot] { record.maxima[slot] = elapsed }
            if on != item.expected { record.mismatches[slot] &+= 1 }
        }
        remaining -= items.count
    }
}

/// One gate's round: when it read Redis again, and its checks by phase.
struct GateRound {
    var refreshedAfter: UInt64 = 0
    var phases = [LatencyHistogram](repeating: LatencyHistogram(), count: FailoverPhase.allCases.count)
    var mismatches = [Int](repeating: 0, count: FailoverPhase.allCases.count)
}

struct FailoverRound {
    var switchMasterAfter: UInt64?
    var gates: [GateRound]
    var voluntarySwitches = [0, 0, 0]
    var involuntarySwitches = [0, 0, 0]
    var measuringCost = LatencyHistogram()
    var seconds = 0.0
}

/// Twelve features whose rules differ (percentages, lists, workspaces, kill switch, pause,
/// internal only, v1 bucketing), and 64 subjects, some in workspaces, some internal.
private let failoverFeatures: [FeatureName] = (0..<12).compactMap { try? FeatureName("failover-\($0)") }
private let failoverSubjects: [Subject] = (0..<64).map {
    Subject(id: "user-\($0)", workspace: $0 % 4 == 0 ? "acme" : $0 % 4 == 1 ? "beta" : nil, isInternal: $0 % 8 == 0)
}

private func seedCommands() -> [RedisCommand] {
    var commands: [RedisCommand] = []
    for (index, feature) in failoverFeatures.enumerated() {
        let keys = FeatureKeys(feature)
        let percent = ["0", "5", "25", "50", "75", "100", "50", "100", "30", "10", "100", "33.333"][index]
        commands.append(RedisCommand("SET", keys.rolloutPercent, percent))
        switch index {
        case 6: commands += [RedisCommand("SADD", keys.allow, "user-3", "user-7"), RedisCommand("SADD", keys.deny, "user-10")]
        case 7: commands.append(RedisCommand("SET", keys.enabled, "false"))
        case 8: commands.append(RedisCommand("SET", keys.paused, "true"))
        case 9: commands.append(RedisCommand("HSET", keys.workspaces, "acme", "100", "beta", "0"))
        case 10: commands.append(RedisCommand("SET", keys.internalOnly, "true"))
        case 11: commands.append(RedisCommand("SET", keys.bucketing, "v1"))
        default: break
        }
    }
    return commands
}

private struct BenchFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// The node's `PUBSUB NUMSUB __redis__:invalidate`: how many gates subscribed there.
private func invalidationSubscribers(_ topology: SentinelTopology, _ node: RedisServer) async -> Int {
    Int((try? await topology.query(node, "PUBSUB", "NUMSUB", "__redis__:invalidate").array?.last?.integer) ?? 0)
}

/// Polls each gate's snapshot age every 200 µs (off the cooperative pool) from just after the
/// kill: the age grows until a full read of Redis renews it, so the first poll that sees it
/// smaller than at the poll before dates that read, to within one poll. Returns, per gate,
/// nanoseconds after `killedAt`; moves each gate to its after phase as soon as seen.
private func waitForFirstReads(of gates: [FeatureGate], after killedAt: UInt64, control: FailoverControl, limit: Duration) -> [UInt64]? {
    var previous = gates.map { $0.snapshotAge ?? .zero }
    var seen = [UInt64?](repeating: nil, count: gates.count)
    let giveUp = killedAt + UInt64(limit.components.seconds) * 1_000_000_000
    while seen.contains(where: { $0 == nil }) {
        let now = monotonicNanoseconds()
        if now > giveUp { return nil }
        for (index, gate) in gates.enumerated() where seen[index] == nil {
            let age = gate.snapshotAge ?? .zero
            if age < previous[index] {
                seen[index] = now - killedAt
                control.advance(gate: index)
            }
            previous[index] = age
        }
        usleep(200)
    }
    return seen.compactMap { $0 }
}

/// The first `+switch-master` any of the topology's sentinels publishes, in monotonic nanoseconds.
private final class SwitchMasterWatch: Sendable {
    private let subscriptions: [RedisSubscription]
    private let subscribed = Atomic<Int>(0)
    private let firstAt = Mutex<UInt64?>(nil)
    private let tasks: Mutex<[Task<Void, Never>]> = Mutex([])

    init(_ topology: SentinelTopology) {
        subscriptions = topology.sentinels.map { RedisSubscription(url: topology.directURL($0), channels: ["+switch-master"]) }
        let started = subscriptions.map { subscription in
            Task { [self] in
                for await event in subscription.events() {
                    switch event {
                    case .subscribed: subscribed.add(1, ordering: .relaxed)
                    case .message:
                        let now = monotonicNanoseconds()
                        firstAt.withLock { if $0 == nil { $0 = now } }
                    default: continue
                    }
                }
            }
        }
        tasks.withLock { $0 = started }
    }

    var isListening: Bool { subscribed.load(ordering: .relaxed) >= subscriptions.count }
    var announcedAt: UInt64? { firstAt.withLock { $0 } }

    func stop() async {
        for subscription in subscriptions { subscription.stop() }
        for task in tasks.withLock({ $0 }) { await task.value }
    }
}

/// One round on a fresh topology.
private func failoverRound(threads: Int, baseline: Duration) async throws -> FailoverRound {
    let started = monotonicNanoseconds()
    let topology = try await SentinelTopology.start()
    do {
        var round = try await measureFailover(on: topology, threads: threads, baseline: baseline)
        await topology.stopOffPool()
        round.seconds = Double(monotonicNanoseconds() - started) / 1e9
        return round
    } catch {
        await topology.stopOffPool()
        throw error
    }
}

private func measureFailover(on topology: SentinelTopology, threads: Int, baseline: Duration) async throws -> FailoverRound {
    let primary = topology.nodes[0]
    let admin = RedisClient(url: topology.directURL(primary))
    defer { admin.close() }
    _ = try await admin.pipeline(seedCommands())
    // Both replicas hold every flag before the primary dies (replication is asynchronous).
    let acknowledged = try await admin.send("WAIT", "2", "5000").integer ?? 0
    guard acknowledged == 2 else { throw BenchFailure("only \(acknowledged) of 2 replicas acknowledged the flags") }

    let quiet = Logger(label: "rollout-bench.failover") { _ in SwiftLogNoOpLogHandler() }
    let urls = [try topology.url(), try topology.url(readFrom: "replica")]
    let gates = urls.map { FeatureGate(redisURL: $0, features: failoverFeatures, logger: quiet) }
    let services = gates.map { gate in Task { try await gate.run() } }
    let watch = SwitchMasterWatch(topology)
    defer { for service in services { service.cancel() } }

    // Ready: every feature read by both gates, the readFrom=primary gate subscribed on the
    // primary, the readFrom=replica one on a replica, the sentinels' channel listened to.
    let ready = await eventually(within: .seconds(30), every: .milliseconds(20)) {
        guard gates.allSatisfy({ gate in failoverFeatures.allSatisfy { gate.state(of: $0) != nil } }), watch.isListening else { return false }
        let onPrimary = await invalidationSubscribers(topology, primary)
        let onReplicas = await invalidationSubscribers(topology, topology.nodes[1]) + invalidationSubscribers(topology, topology.nodes[2])
        return onPrimary == 1 && onReplicas == 1
    }
    guard ready else { throw BenchFailure("the gates did not load their features and subscribe within 30 s") }
    try await Task.sleep(for: .milliseconds(300))  // the refresh each subscription asks for

    let handles = gates.flatMap { gate in failoverFeatures.map { gate.feature($0) } }
    var items: [CheckItem] = []
    for subject in failoverSubjects.indices {
        for feature in failoverFeatures.indices {
            let answers = gates.indices.map { handles[$0 * failoverFeatures.count + feature].isEnabled(for: failoverSubjects[subject]) }
            guard Set(answers).count == 1 else { throw BenchFailure("the two gates disagree on \(failoverFeatures[feature]) before the kill") }
            for gate in gates.indices {
                items.append(CheckItem(gate: gate, handle: gate * failoverFeatures.count + feature, subject: subject, expected: answers[gate]))
            }
        }
    }
    let expectedOn = items.filter(\.expected).count
    guard expectedOn > 0 && expectedOn < items.count else { throw BenchFailure("every check answers the same: the seed did not load") }

    let control = FailoverControl()
    let records = (0..<threads).map { _ in CheckerRecord(gates: gates.count) }
    let calibration = (0..<threads).map { _ in CheckerRecord(gates: gates.count) }
    let calibrated = DispatchSemaphore(value: 0)
    let go = DispatchSemaphore(value: 0)
    let done = DispatchSemaphore(value: 0)
    let sharedItems = items
    for (index, record) in records.enumerated() {
        Thread {
            // Each thread checks its own copies of the subjects, as requests do.
            let subjects = failoverSubjects.map {
                Subject(id: String(decoding: Array($0.id.utf8), as: UTF8.self), workspace: $0.workspace.map { String(decoding: Array($0.utf8), as: UTF8.self) },
                    isInternal: $0.isInternal)
            }
            sharedItems.withUnsafeBufferPointer { items in
                handles.withUnsafeBufferPointer { handles in
                    subjects.withUnsafeBufferPointer { subjects in
                        checkLoop(
                            items: items, handles: handles, subjects: subjects, control: FailoverControl(), record: calibration[index],
                            callsGate: false, iterations: 1_000_000)
                        calibrated.signal()
                        go.wait()
                        checkLoop(items: items, handles: handles, subjects: subjects, control: control, record: record)
                    }
                }
            }
            done.signal()
        }.start()
    }
    _ = try await offThePool { for _ in 0..<threads { calibrated.wait() } }
    for _ in 0..<threads { go.signal() }
    try await Task.sleep(for: baseline)

    let outcome = try await offThePool { () -> (killedAt: UInt64, reads: [UInt64]?) in
        for gate in gates.indices { control.advance(gate: gate) }
        let killedAt = monotonicNanoseconds()
        primary.kill()
        return (killedAt, waitForFirstReads(of: gates, after: killedAt, control: control, limit: .seconds(30)))
    }
    try await Task.sleep(for: .milliseconds(200))
    control.stop()
    _ = try await offThePool { for _ in 0..<threads { done.wait() } }
    for service in services { service.cancel() }
    for service in services { _ = await service.result }
    await watch.stop()
    guard let reads = outcome.reads else { throw BenchFailure("a gate did not read Redis within 30 s of the kill") }

    var round = FailoverRound(switchMasterAfter: watch.announcedAt.map { $0 - outcome.killedAt }, gates: [])
    for (gate, read) in reads.enumerated() {
        var result = GateRound(refreshedAfter: read)
        for record in records {
            for phase in FailoverPhase.allCases {
                result.phases[phase.rawValue].add(record.histogram(gate: gate, phase: phase))
                result.mismatches[phase.rawValue] += record.mismatchCount(gate: gate, phase: phase)
            }
        }
        round.gates.append(result)
    }
    for record in records {
        for phase in 0..<3 {
            round.voluntarySwitches[phase] += record.voluntarySwitches[phase]
            round.involuntarySwitches[phase] += record.involuntarySwitches[phase]
        }
    }
    for record in calibration {
        for gate in gates.indices { round.measuringCost.add(record.histogram(gate: gate, phase: .baseline)) }
    }
    return round
}

private func milliseconds(_ nanoseconds: UInt64) -> String { String(format: "%.0f ms", Double(nanoseconds) / 1e6) }
private func micro(_ nanoseconds: UInt64) -> String { String(format: "%.2f us", Double(nanoseconds) / 1e3) }

/// `rollout-bench --failover ROUNDS THREADS`: the rounds, one line each, then the summary.
func runFailoverBench(rounds: Int, threads: Int) async throws {
    let labels = ["readFrom=primary", "readFrom=replica"]
    var results: [FailoverRound] = []
    for index in 1...rounds {
        let round = try await failoverRound(threads: threads, baseline: .milliseconds(1500))
        results.append(round)
        var line = "failover round \(index)/\(rounds) (\(String(format: "%.1f", round.seconds)) s): +switch-master \(round.switchMasterAfter.map(milliseconds) ?? "not seen") after SIGKILL"
        for (label, gate) in zip(labels, round.gates) {
            let window = gate.phases[FailoverPhase.failover.rawValue]
            let before = gate.phases[FailoverPhase.baseline.rawValue]
            line += "; \(label): read again \(milliseconds(gate.refreshedAfter)), checks during \(micro(window.maximum)) max"
                + " (\(window.total) checks, p99.9 \(micro(window.percentile(0.999)))), before \(micro(before.maximum)) max p99.9 \(micro(before.percentile(0.999))),"
                + " changed answers \(gate.mismatches.reduce(0, +))"
        }
        line += "; checking threads' context switches during: \(round.voluntarySwitches[1]) voluntary, \(round.involuntarySwitches[1]) involuntary"
        print(line)
    }
    func summary(_ values: [UInt64], _ format: (UInt64) -> String) -> String {
        let sorted = values.sorted()
        guard let worst = sorted.last else { return "none" }
        return "median \(format(sorted[(sorted.count - 1) / 2])), worst \(format(worst))"
    }
    var cost = LatencyHistogram()
    for round in results { cost.add(round.measuringCost) }
    print("failover: \(rounds) rounds, \(threads) checking thread(s), \(failoverFeatures.count) features x \(failoverSubjects.count) subjects per gate, one clock read per check (the loop alone: p50 \(cost.percentile(0.5)) ns, p99.9 \(cost.percentile(0.999)) ns)")
    let switches = results.compactMap(\.switchMasterAfter)
    print("failover: +switch-master after SIGKILL: \(summary(switches, milliseconds)) (\(switches.count) of \(rounds) seen)")
    for (index, label) in labels.enumerated() {
        let gates = results.map { $0.gates[index] }
        let changed = gates.map { $0.mismatches.reduce(0, +) }.reduce(0, +)
        let checks = gates.map { $0.phases.map(\.total).reduce(0, +) }.reduce(0, +)
        print("failover: \(label): first full read after SIGKILL \(summary(gates.map(\.refreshedAfter), milliseconds));"
            + " longest check during the failover \(summary(gates.map { $0.phases[1].maximum }, micro));"
            + " before the kill: p99.9 \(summary(gates.map { $0.phases[0].percentile(0.999) }, micro)), max \(summary(gates.map { $0.phases[0].maximum }, micro));"
            + " answers changed: \(changed) of \(checks)")
    }
    print("failover: checking threads' voluntary context switches during the failovers: \(results.map { $0.voluntarySwitches[1] }.reduce(0, +)) (before: \(results.map { $0.voluntarySwitches[0] }.reduce(0, +))), involuntary: \(results.map { $0.involuntarySwitches[1] }.reduce(0, +))")
}
