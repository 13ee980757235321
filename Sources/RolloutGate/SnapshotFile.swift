import Logging
import RolloutRedis
import Synchronization

// The gate's local snapshot file (Configuration.snapshotFile): what it last read from Redis, in
// the format `rollout snapshot save` writes, so that a service restarted while Redis is away
// answers as it did before, and an operator can hand a service a saved state.

extension FlagSnapshot {
    /// The file of a gate whose features answered `replies` (those of ``FeatureKeys/readCommands``,
    /// in order). Each key is written as Redis gave it, invalid values included, so the file
    /// decides as Redis did. A feature with a reply no file can hold (an error: a key of the
    /// wrong Redis type) is listed with no keys: loaded, it is off for everyone, as it was.
    init(gateReplies replies: [FeatureName: [RedisValue]], createdAt: Timestamp) {
        var keys: [Entry] = []
        for (feature, raw) in replies {
            guard let entries = Self.entries(of: feature, replies: raw) else { continue }
            keys += entries
        }
        self.init(
            createdAt: createdAt.description, features: replies.keys.map(\.rawValue).sorted(),
            keys: keys.sorted { $0.key < $1.key })
    }

    private static func entries(of feature: FeatureName, replies: [RedisValue]) -> [Entry]? {
        let keys = FeatureKeys(feature).all
        guard replies.count == keys.count else { return nil }
        var entries: [Entry] = []
        for (index, reply) in replies.enumerated() {
            let key = keys[index]
            switch (reply, FeatureKeys.readTypes[index]) {
            case (.null, _):
                continue
            case (.bulkString, .string):
                var entry = Entry(key: key, type: "string")
                entry.value = reply.string
                entries.append(entry)
            case (.array(let items), .set):
                guard !items.isEmpty else { continue }
                var entry = Entry(key: key, type: "set")
                entry.members = items.map { $0.string ?? "" }.sorted()
                entries.append(entry)
            case (.array(let items), .hash):
                guard !items.isEmpty else { continue }
                var entry = Entry(key: key, type: "hash")
                var fields: [String: String] = [:]
                var at = 0
                while at + 1 < items.count {
                    fields[items[at].string ?? ""] = items[at + 1].string ?? ""
                    at += 2
                }
                entry.fields = fields
                entries.append(entry)
            default:
                return nil
            }
        }
        return entries
    }

    /// The features this snapshot says something about: those it lists, and those its keys
    /// belong to (a snapshot of every flags key lists none).
    var featureNames: Set<FeatureName> {
        var names = Set(keys.compactMap { FeatureKeys.feature(ofKey: $0.key) })
        for name in features ?? [] {
            if let feature = try? FeatureName(name) { names.insert(feature) }
        }
        return names
    }

    /// What ``FeatureKeys/readCommands`` of `feature` would answer from a Redis holding exactly
    /// these keys: a key of another type answers WRONGTYPE, as Redis would, so the gate's one
    /// parser (``FeatureState/read(_:from:)``) judges a file as it judges Redis.
    func replies(for feature: FeatureName) -> [RedisValue] {
        let wanted = FeatureKeys(feature).all
        var byKey: [String: Entry] = [:]
        for entry in keys where FeatureKeys.feature(ofKey: entry.key) == feature { byKey[entry.key] = entry }
        return wanted.enumerated().map { index, key in
            let type = FeatureKeys.readTypes[index]
            guard let entry = byKey[key] else { return type == .string ? .null : .array([]) }
            guard entry.type == type.rawValue else {
                return .error("WRONGTYPE Operation against a key holding the wrong kind of value")
            }
            switch type {
            case .string: return .bulkString(Array((entry.value ?? "").utf8))
            case .set: return .array((entry.members ?? []).map { .bulkString(Array($0.utf8)) })
            case .hash:
                return .array(
                    (entry.fields ?? [:]).sorted { $0.key < $1.key }.flatMap { [.bulkString(Array($0.key.utf8)), .bulkString(Array($0.value.utf8))] })
            }
        }
    }
}

/// Writes the gate's snapshot file after refreshes that changed something, at most once per
/// ``minimumInterval``, on the file queue: a pending write that is not due yet waits in
/// ``run(clock:snapshot:)``, and a write in flight is never overlapped by another.
final class SnapshotFileWriter: Sendable {
    /// Where the file goes.
    let path: String
    /// The least time between the starts of two writes.
    static let minimumInterval = Duration.seconds(1)

    private let logger: Logger
    private let state = Mutex(State())

    private struct State {
        var pending = false
        var writing = false
        var lastStart: Int64 = .min
        var failing = false
        var waiter: AsyncStream<Void>.Continuation?
        /// The snapshot of a change that came while a write was in flight, for the end of that
        /// write to start when no ``run(clock:snapshot:)`` is there to do it.
        var latest: FlagSnapshot?
    }

    private let clock: GateClock

    init(path: String, logger: Logger, clock: GateClock) {
        self.path = path
        self.logger = logger
        self.clock = clock
    }

    /// Notes that the snapshot changed, and starts the write when it is due.
    func changed(now: Int64, snapshot: () -> FlagSnapshot) {
        let inFlight = state.withLock { state -> Bool in
            state.pending = true
            return state.writing
        }
        if inFlight {
            // Rare: built only while a write is in flight.
            let latest = snapshot()
            state.withLock { $0.latest = latest }
        }
        if flushIfDue(now: now, snapshot: snapshot) != nil {
            state.withLock { _ = $0.waiter?.yield() }
        }
    }

    /// Starts a pending write when it is due. Returns how long to wait when one is pending but
    /// not due yet (nil: written, in flight, or nothing to write).
    @discardableResult
    func flushIfDue(now: Int64, snapshot: () -> FlagSnapshot) -> Duration? {
        let interval = Self.minimumInterval.wholeNanoseconds
        enum Step { case write, wait(Int64), nothing }
        let step = state.withLock { state -> Step in
            guard state.pending, !state.writing else { return .nothing }
            if state.lastStart != .min, now - state.lastStart < interval { return .wait(interval - (now - state.lastStart)) }
            state.pending = false
            state.writing = true
            state.lastStart = now
            state.latest = nil
            return .write
        }
        switch step {
        case .nothing: return nil
        case .wait(let nanoseconds): return .nanoseconds(nanoseconds)
        case .write:
            let file = snapshot()
            let path = path
            Task {
                let result = await onFileQueue { Result { () throws(SnapshotError) in try file.writeDurably(to: path) } }
                self.finished(result)
            }
            return nil
        }
    }

    private func finished(_ result: Result<Void, SnapshotError>) {
        let (wasFailing, pending, waiter, latest) = state.withLock { state in
            defer {
                state.writing = false
                state.failing = (try? result.get()) == nil
            }
            return (state.failing, state.pending, state.waiter, state.latest)
        }
        switch result {
        case .failure(let error) where !wasFailing:
            logger.error(
                "Cannot write the gate's snapshot file: a restart during a Redis outage would find an older one, or none",
                metadata: ["gate.snapshot_file": "\(path)", "error": "\(error)"])
        case .success where wasFailing:
            logger.notice("The gate's snapshot file is written again", metadata: ["gate.snapshot_file": "\(path)"])
        default:
            break
        }
        guard pending else { return }
        if let waiter {
            waiter.yield()
        } else if let latest {
            // No run() loop (a gate used through prepare() and refresh()): the change that
            // came during the write is written now if due, else at the next change.
            flushIfDue(now: clock.nanoseconds()) { latest }
        }
    }

    /// Writes pending changes once they are due, until cancelled: run by ``FeatureGate/run()``.
    func run(clock: GateClock, snapshot: @escaping () -> FlagSnapshot) async {
        let (wakeups, waiter) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        state.withLock { $0.waiter = waiter }
        defer {
            state.withLock { $0.waiter = nil }
            waiter.finish()
        }
        // Changes that came before this loop listened.
        waiter.yield()
        for await _ in wakeups {
            while let wait = flushIfDue(now: clock.nanoseconds(), snapshot: snapshot) {
                do {
                    try await clock.sleep(wait)
                } catch {
                    return
                }
            }
        }
    }
}
