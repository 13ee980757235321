#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
public import Logging
import Metrics
public import RolloutRedis
public import ServiceLifecycle
import Synchronization

/// The gate a service embeds: answers "is feature F on for this actor?" synchronously from a
/// local snapshot of Redis, and keeps that snapshot fresh in ``run()``.
///
/// ```swift
/// let gate = try FeatureGate(redisURL: "redis://127.0.0.1:6379", features: ["google"])
/// // add `gate` to the app's ServiceGroup, then per request:
/// if gate.isEnabled("google", for: Actor(id: user.id, workspace: user.workspaceID)) { ... }
/// ```
///
/// A check never throws, never blocks on the network and never waits for a lock held across
/// I/O. A feature the gate has not read yet is off (reason ``Decision/Reason/noData``) and is
/// fetched at once in the background; ``prepare(_:)`` loads features before traffic arrives.
public final class FeatureGate: Service, Sendable {
    /// How the gate refreshes and when it gives up on an old snapshot.
    public struct Configuration: Sendable {
        /// How often every known feature is re-read in one pipelined round trip.
        public var refreshInterval: Duration = .seconds(5)
        /// How old the last good snapshot may grow while Redis is unreachable before every
        /// feature fails closed (off, reason ``Decision/Reason/staleSnapshot``).
        public var maxStaleness: Duration = .seconds(60)
        /// Whether to subscribe to Redis's client-side-caching invalidations (Redis 6+, no
        /// server configuration needed) so a change is seen within milliseconds.
        public var pushInvalidation: Bool = true
        /// Connect timeout of the gate's Redis connections.
        public var connectTimeout: Duration = .milliseconds(250)
        /// Command timeout of the gate's Redis connections.
        public var commandTimeout: Duration = .seconds(1)
        /// Where `ROLLOUT_<FEATURE>_ENABLED` is looked up; nil reads the process environment.
        public var environment: [String: String]?

        /// The defaults: refresh every 5 s, fail closed after 60 s without Redis, push on.
        public init() {}
    }

    /// The gate's Redis settings, for logs (the URL's description hides the password).
    public let redisURL: RedisURL
    /// The configuration the gate runs with.
    public let configuration: Configuration

    private let redis: RedisClient
    private let logger: Logger
    // The snapshot: immutable entries published by swapping references under short locks.
    // A check takes one uncontended lock (by name) or the feature's own lock (by handle).
    private let snapshot = Mutex<[FeatureName: Entry]>([:])
    private let handles = Mutex<[FeatureName: Slot]>([:])
    private let isStale = Atomic<Bool>(false)
    private let lastSuccess = Mutex<ContinuousClock.Instant?>(nil)
    private let tallies = Mutex<[FeatureName: Tally]>([:])
    private let refreshTurn = AsyncSemaphore(limit: 1)
    private let readCache = Mutex<(set: Set<FeatureName>, features: [FeatureName], pipeline: PreparedPipeline)?>(nil)
    private let work = Mutex(Work())
    private let wakeups: AsyncStream<Void>
    private let wake: AsyncStream<Void>.Continuation
    private let redisErrors = Counter(label: "rollout_gate_redis_errors_total")
    private let snapshotAge = Gauge(label: "rollout_gate_snapshot_age_seconds")

    /// A gate reading `redisURL`; `features` are loaded by the first refresh. Nothing
    /// connects until ``run()`` or ``prepare(_:)``.
    public init(
        redisURL: RedisURL, features: [FeatureName] = [], configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "rollout-gate")
    ) {
        self.redisURL = redisURL
        self.configuration = configuration
        self.logger = logger
        self.redis = RedisClient(
            url: redisURL, connectTimeout: configuration.connectTimeout, commandTimeout: configuration.commandTimeout)
        (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        work.withLock { $0.known.formUnion(features) }
    }

    /// A gate reading the Redis at `redisURL` (`redis://`, `rediss://` or `unix://`); throws
    /// only when the URL itself is invalid.
    public convenience init(
        redisURL text: String, features: [FeatureName] = [], configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "rollout-gate")
    ) throws(RedisError) {
        self.init(redisURL: try RedisURL(parsing: text), features: features, configuration: configuration, logger: logger)
    }

    deinit {
        wake.finish()
        redis.close()
    }

    // MARK: Checks (the hot path)

    /// Whether `feature` is on for `actor`.
    @inlinable
    public func isEnabled(_ feature: FeatureName, for actor: Actor) -> Bool {
        decision(feature, for: actor).isOn
    }

    /// The decision for `actor`, with its reason.
    public func decision(_ feature: FeatureName, for actor: Actor) -> Decision {
        guard let entry = snapshot.withLock({ $0[feature] }) else {
            request(feature)
            return Decision(isOn: false, reason: .noData)
        }
        return entry.decide(for: actor, stale: isStale.load(ordering: .relaxed))
    }

    /// A handle for `feature`: the fastest way to check it, with no name lookup per check.
    /// Keep it for the life of the gate (a service typically holds one per feature).
    public func feature(_ feature: FeatureName) -> FeatureHandle {
        let (slot, isNew) = handles.withLock { handles -> (Slot, Bool) in
            if let slot = handles[feature] { return (slot, false) }
            let slot = Slot()
            handles[feature] = slot
            return (slot, true)
        }
        if isNew {
            slot.entry.withLock { $0 = snapshot.withLock { $0[feature] } }
            request(feature)
        }
        return FeatureHandle(name: feature, slot: slot, gate: self)
    }

    var isSnapshotStale: Bool { isStale.load(ordering: .relaxed) }

    /// The decision as if rollout_percent were `percent` (workspace overrides ignored): who
    /// would be on before an operator raises it.
    public func decision(_ feature: FeatureName, for actor: Actor, atPercent percent: RolloutPercent) -> Decision {
        guard let entry = snapshot.withLock({ $0[feature] }) else { return Decision(isOn: false, reason: .noData) }
        return entry.decide(for: actor, stale: isStale.load(ordering: .relaxed), percentOverride: percent, count: false)
    }

    /// The parsed state of `feature` in the snapshot: nil before it was read, an
    /// ``InvalidFeatureState`` when a key breaks the contract.
    public func state(of feature: FeatureName) -> Result<FeatureState, InvalidFeatureState>? {
        snapshot.withLock { $0[feature]?.result }
    }

    // MARK: Loading

    /// Adds `features` and reads them now, waiting at most for one round trip (bounded by
    /// the connect and command timeouts). Returns false when Redis could not be read.
    @discardableResult
    public func prepare(_ features: [FeatureName]) async -> Bool {
        work.withLock { $0.known.formUnion(features) }
        return await refresh(features)
    }

    /// Re-reads every known feature now, in one pipelined round trip. Returns false when
    /// Redis could not be read (the last good snapshot stays in use).
    @discardableResult
    public func refresh() async -> Bool {
        await refresh(work.withLock { Array($0.known) })
    }

    /// Keeps the snapshot fresh until cancelled or a graceful shutdown: a full refresh every
    /// ``Configuration/refreshInterval``, and at once for a feature whose keys change when
    /// push invalidation is available. Run it once per gate (a `ServiceGroup` does).
    public func run() async throws {
        request(all: true)
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.tick() }
                if self.configuration.pushInvalidation {
                    group.addTask { await self.listenForInvalidations() }
                } else {
                    self.logger.info(
                        "Push invalidation is off: polling only",
                        metadata: ["gate.refresh_interval": "\(self.configuration.refreshInterval)"])
                }
                for await _ in self.wakeups {
                    if Task.isCancelled { break }
                    let features = self.work.withLock { $0.takeDirty() }
                    if !features.isEmpty { await self.refresh(features) }
                }
                group.cancelAll()
            }
        }
    }

    // MARK: Internals

    private func request(_ feature: FeatureName) {
        // Rare path (a feature never seen before): allocation is acceptable here.
        let isNew = work.withLock { work in
            let inserted = work.known.insert(feature).inserted
            if inserted { work.dirty.insert(feature) }
            return inserted
        }
        if isNew { wake.yield() }
    }

    private func request(all: Bool) {
        work.withLock { $0.dirty.formUnion($0.known) }
        wake.yield()
    }

    private func request(_ features: some Sequence<FeatureName>) {
        let any = work.withLock { work in
            let wanted = features.filter { work.known.contains($0) }
            work.dirty.formUnion(wanted)
            return !wanted.isEmpty
        }
        if any { wake.yield() }
    }

    private func tick() async {
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: configuration.refreshInterval)
            } catch {
                return
            }
            request(all: true)
        }
    }

    @discardableResult
    private func refresh(_ features: [FeatureName]) async -> Bool {
        // One refresh at a time (run(), prepare() and refresh() may overlap): an older reply
        // must never be published after a newer one.
        await refreshTurn.acquire()
        let succeeded = await refreshSerialized(features)
        await refreshTurn.release()
        return succeeded
    }

    private func refreshSerialized(_ features: [FeatureName]) async -> Bool {
        flushDecisionCounts()
        guard !features.isEmpty else { return true }
        // Staleness is about the whole snapshot: only a refresh of every known feature resets it.
        let isFull = work.withLock { Set(features).isSuperset(of: $0.known) }
        let replies: [RedisValue]
        let ordered: [FeatureName]
        do {
            let prepared = try preparedReads(for: features)
            ordered = prepared.features
            replies = try await redis.pipeline(prepared.pipeline)
        } catch {
            redisErrors.increment()
            noteFailure(error)
            return false
        }
        // Most refreshes change nothing: a feature whose replies and override are what the
        // current entry was built from keeps that entry (no parsing, no allocation).
        let current = snapshot.withLock { $0 }
        var fresh: [FeatureName: Entry] = [:]
        let count = FeatureKeys.readCommandCount
        for (index, feature) in ordered.enumerated() {
            let raw = replies[(index * count)..<(index * count + count)]
            let override = overrideVariable(for: feature, named: tally(for: feature).variableName)
            if let existing = current[feature], existing.overrideVariable == override, existing.raw.elementsEqual(raw) {
                continue
            }
            let state = FeatureState.read(feature, from: raw)
            fresh[feature] = Entry(feature: feature, raw: Array(raw), result: state, overrideVariable: override, tally: tally(for: feature))
        }
        let previous = snapshot.withLock { snapshot in
            let previous = snapshot
            snapshot.merge(fresh) { _, new in new }
            return previous
        }
        let slots = handles.withLock { handles in fresh.keys.compactMap { feature in handles[feature].map { (feature, $0) } } }
        for (feature, slot) in slots {
            let entry = fresh[feature]
            slot.entry.withLock { $0 = entry }
        }
        report(fresh, against: previous)
        guard isFull else { return true }
        lastSuccess.withLock { $0 = ContinuousClock.now }
        let wasStale = isStale.exchange(false, ordering: .acquiringAndReleasing)
        snapshotAge.record(0)
        if wasStale {
            logger.notice("Redis is reachable again: the gate answers from a fresh snapshot", metadata: ["redis.url": "\(redisURL)"])
        }
        return true
    }

    private func noteFailure(_ error: RedisError) {
        let age = lastSuccess.withLock { $0 }.map { $0.duration(to: .now) }
        var becameStale = false
        if let age, age > configuration.maxStaleness {
            becameStale = !isStale.exchange(true, ordering: .acquiringAndReleasing)
        }
        if let age {
            let (seconds, attoseconds) = age.components
            snapshotAge.record(Double(seconds) + Double(attoseconds) / 1e18)
        }
        if becameStale {
            logger.error(
                "Redis unreachable for longer than the allowed staleness: every feature is now off until Redis answers",
                metadata: ["redis.url": "\(redisURL)", "gate.max_staleness": "\(configuration.maxStaleness)", "error": "\(error)"])
        } else {
            logger.warning(
                "Cannot refresh the feature snapshot; answering from the last good one",
                metadata: ["redis.url": "\(redisURL)", "error": "\(error)"])
        }
    }

    /// Logs and counts each feature whose state became invalid (once per change) or valid again.
    private func report(_ fresh: [FeatureName: Entry], against previous: [FeatureName: Entry]) {
        for (feature, entry) in fresh {
            let before = previous[feature]?.result
            switch entry.result {
            case .failure(let invalid):
                if case .failure(let old)? = before, old == invalid { continue }
                Counter(label: "rollout_gate_invalid_state_total", dimensions: [("feature", feature.rawValue)]).increment()
                logger.error(
                    "Invalid feature state: the feature is off for everyone until the key is fixed",
                    metadata: [
                        "feature.name": "\(feature)", "redis.key": "\(invalid.firstKey)",
                        "problems": "\(invalid.problems.map(\.message).joined(separator: " "))",
                    ])
            case .success:
                if case .failure? = before {
                    logger.notice("Feature state is valid again", metadata: ["feature.name": "\(feature)"])
                }
            }
        }
    }

    /// The encoded reads of `features` and the order of their replies, reused while the set
    /// of features stays the same.
    private func preparedReads(for features: [FeatureName]) throws(RedisError) -> (features: [FeatureName], pipeline: PreparedPipeline) {
        let wanted = Set(features)
        if let cached = readCache.withLock({ $0 }), cached.set == wanted { return (cached.features, cached.pipeline) }
        let ordered = Array(wanted)
        let pipeline = try PreparedPipeline(ordered.flatMap { FeatureKeys($0).readCommands })
        readCache.withLock { $0 = (wanted, ordered, pipeline) }
        return (ordered, pipeline)
    }

    private func tally(for feature: FeatureName) -> Tally {
        tallies.withLock { tallies in
            if let tally = tallies[feature] { return tally }
            let tally = Tally(feature: feature)
            tallies[feature] = tally
            return tally
        }
    }

    /// Moves the decision counts of the hot path (plain atomics) into swift-metrics counters;
    /// done at every refresh, so the metric lags by at most one refresh interval.
    private func flushDecisionCounts() {
        for tally in tallies.withLock({ Array($0.values) }) { tally.flush() }
    }

    private func overrideVariable(for feature: FeatureName, named name: String) -> String? {
        let value: String?
        if let environment = configuration.environment {
            value = environment[name]
        } else {
            value = getenv(name).map { String(cString: $0) }
        }
        guard let value, parseBool(value) == false else { return nil }
        return name
    }

    private func listenForInvalidations() async {
        let subscription = RedisSubscription(
            url: redisURL, channels: ["__redis__:invalidate"], connectTimeout: configuration.connectTimeout,
            commandTimeout: configuration.commandTimeout,
            prepare: { id in
                [RedisCommand("CLIENT", "TRACKING", "ON", "REDIRECT", String(id), "BCAST", "PREFIX", "flags:")]
            })
        var connectedOnce = false
        for await event in subscription.events() {
            switch event {
            case .subscribed:
                if !connectedOnce {
                    logger.info("Push invalidation active: changes to flags:* are seen at once", metadata: ["redis.url": "\(redisURL)"])
                }
                connectedOnce = true
                // Anything may have changed while the subscription was down.
                request(all: true)
            case .message(_, let payload):
                if let keys = payload.array {
                    request(keys.compactMap { $0.string.flatMap(FeatureKeys.feature(ofKey:)) })
                } else {
                    request(all: true)  // a flush: every key may have changed
                }
            case .disconnected(let error):
                logger.debug("Push invalidation connection lost; reconnecting", metadata: ["error": "\(error)"])
            case .refused(let error):
                logger.notice(
                    "Push invalidation unavailable (CLIENT TRACKING refused); falling back to polling",
                    metadata: ["error": "\(error)", "gate.refresh_interval": "\(configuration.refreshInterval)"])
                return
            }
        }
    }
}

/// One feature as the snapshot holds it. Immutable: a check borrows it and reads.
final class Entry: Sendable {
    let result: Result<FeatureState, InvalidFeatureState>
    /// The valid state, or an absent one never consulted when `invalidKey` is set.
    let state: FeatureState
    let invalidKey: String?
    let overrideVariable: String?
    let tally: Tally

    /// The replies the entry was parsed from, to skip unchanged features on the next refresh.
    let raw: [RedisValue]

    init(
        feature: FeatureName, raw: [RedisValue], result: Result<FeatureState, InvalidFeatureState>, overrideVariable: String?,
        tally: Tally
    ) {
        self.raw = raw
        self.result = result
        switch result {
        case .success(let state):
            self.state = state
            invalidKey = nil
        case .failure(let invalid):
            state = .absent(feature)
            invalidKey = invalid.firstKey
        }
        self.overrideVariable = overrideVariable
        self.tally = tally
    }

    @inline(__always)
    func decide(for actor: Actor, stale: Bool, percentOverride: RolloutPercent? = nil, count: Bool = true) -> Decision {
        let decision: Decision
        if stale {
            decision = Decision(isOn: false, reason: .staleSnapshot)
        } else if let invalidKey {
            decision = Decision(isOn: false, reason: .invalidState(key: invalidKey))
        } else {
            decision = state.decide(for: actor, overriddenBy: overrideVariable, percentOverride: percentOverride)
        }
        if count {
            if decision.isOn { tally.on.wrappingAdd(1, ordering: .relaxed) } else { tally.off.wrappingAdd(1, ordering: .relaxed) }
        }
        return decision
    }
}

/// Decisions counted on the hot path with relaxed atomics, flushed into swift-metrics
/// counters by the refresher (a metrics backend call per check would cost more than the hash).
final class Tally: Sendable {
    let on = Atomic<Int>(0)
    let off = Atomic<Int>(0)
    /// `ROLLOUT_<FEATURE>_ENABLED`, computed once.
    let variableName: String
    private let onCounter: Counter
    private let offCounter: Counter

    init(feature: FeatureName) {
        variableName = feature.overrideVariable
        onCounter = Counter(label: "rollout_gate_decisions_total", dimensions: [("feature", feature.rawValue), ("result", "on")])
        offCounter = Counter(label: "rollout_gate_decisions_total", dimensions: [("feature", feature.rawValue), ("result", "off")])
    }

    func flush() {
        let onCount = on.exchange(0, ordering: .relaxed)
        let offCount = off.exchange(0, ordering: .relaxed)
        if onCount > 0 { onCounter.increment(by: onCount) }
        if offCount > 0 { offCounter.increment(by: offCount) }
    }
}

/// Where a ``FeatureHandle`` finds its feature's current entry.
final class Slot: Sendable {
    let entry = Mutex<Entry?>(nil)
}

/// A feature of a ``FeatureGate``, resolved once: checks through it skip the name lookup.
public struct FeatureHandle: Sendable {
    /// The feature.
    public let name: FeatureName
    let slot: Slot
    let gate: FeatureGate

    /// Whether the feature is on for `actor`.
    @inlinable
    public func isEnabled(for actor: Actor) -> Bool {
        decision(for: actor).isOn
    }

    /// The decision for `actor`, with its reason.
    public func decision(for actor: Actor) -> Decision {
        guard let entry = slot.entry.withLock({ $0 }) else { return Decision(isOn: false, reason: .noData) }
        return entry.decide(for: actor, stale: gate.isSnapshotStale)
    }

    /// The decision as if rollout_percent were `percent` (workspace overrides ignored).
    public func decision(for actor: Actor, atPercent percent: RolloutPercent) -> Decision {
        guard let entry = slot.entry.withLock({ $0 }) else { return Decision(isOn: false, reason: .noData) }
        return entry.decide(for: actor, stale: gate.isSnapshotStale, percentOverride: percent, count: false)
    }
}

private struct Work: Sendable {
    var known: Set<FeatureName> = []
    var dirty: Set<FeatureName> = []

    mutating func takeDirty() -> [FeatureName] {
        defer { dirty.removeAll(keepingCapacity: true) }
        return Array(dirty)
    }
}

/// A first-come, first-served async semaphore: at most `limit` holders, the others wait
/// without blocking a thread. Used to serialize refreshes and to bound the controller's queries.
package actor AsyncSemaphore {
    private let limit: Int
    private var holders = 0
    private var waiting: [CheckedContinuation<Void, Never>] = []

    package init(limit: Int) { self.limit = max(1, limit) }

    package func acquire() async {
        if holders < limit {
            holders += 1
            return
        }
        await withCheckedContinuation { waiting.append($0) }
    }

    package func release() {
        if waiting.isEmpty {
            holders -= 1
        } else {
            waiting.removeFirst().resume()
        }
    }
}
