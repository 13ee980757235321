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
/// let gate = FeatureGate(redisURL: try RedisURL(parsing: "redis://127.0.0.1:6379"), features: ["google"])
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
    private let snapshot = Mutex(Snapshot())
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
        let (found, stale) = snapshot.withLock { ($0.entries[feature], $0.isStale) }
        guard let entry = found else {
            request(feature)
            return Decision(isOn: false, reason: .noData)
        }
        let decision: Decision
        if stale {
            decision = Decision(isOn: false, reason: .staleSnapshot)
        } else {
            switch entry.state {
            case .success(let state): decision = state.decide(for: actor, overriddenBy: entry.overrideVariable)
            case .failure(let invalid): decision = Decision(isOn: false, reason: .invalidState(key: invalid.firstKey))
            }
        }
        (decision.isOn ? entry.onCounter : entry.offCounter).increment()
        return decision
    }

    /// The decision as if rollout_percent were `percent` (workspace overrides ignored): who
    /// would be on before an operator raises it.
    public func decision(_ feature: FeatureName, for actor: Actor, atPercent percent: RolloutPercent) -> Decision {
        let (found, stale) = snapshot.withLock { ($0.entries[feature], $0.isStale) }
        guard let entry = found else { return Decision(isOn: false, reason: .noData) }
        if stale { return Decision(isOn: false, reason: .staleSnapshot) }
        switch entry.state {
        case .success(let state): return state.decide(for: actor, overriddenBy: entry.overrideVariable, percentOverride: percent)
        case .failure(let invalid): return Decision(isOn: false, reason: .invalidState(key: invalid.firstKey))
        }
    }

    /// The parsed state of `feature` in the snapshot: nil before it was read, an
    /// ``InvalidFeatureState`` when a key breaks the contract.
    public func state(of feature: FeatureName) -> Result<FeatureState, InvalidFeatureState>? {
        snapshot.withLock { $0.entries[feature]?.state }
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
        guard !features.isEmpty else { return true }
        let ordered = features.sorted()
        let commands = ordered.flatMap { FeatureKeys($0).readCommands }
        let replies: [RedisValue]
        do {
            replies = try await redis.pipeline(commands)
        } catch {
            redisErrors.increment()
            noteFailure(error)
            return false
        }
        var fresh: [FeatureName: Entry] = [:]
        for (index, feature) in ordered.enumerated() {
            let state = FeatureState.read(feature, from: replies[(index * 4)..<(index * 4 + 4)])
            fresh[feature] = Entry(feature: feature, state: state, overrideVariable: overrideVariable(for: feature))
        }
        let now = ContinuousClock.now
        let (previous, wasStale) = snapshot.withLock { snapshot in
            let previous = snapshot.entries
            let wasStale = snapshot.isStale
            snapshot.entries.merge(fresh) { _, new in new }
            snapshot.isStale = false
            snapshot.lastSuccess = now
            return (previous, wasStale)
        }
        snapshotAge.record(0)
        if wasStale {
            logger.notice("Redis is reachable again: the gate answers from a fresh snapshot", metadata: ["redis.url": "\(redisURL)"])
        }
        report(fresh, against: previous)
        return true
    }

    private func noteFailure(_ error: RedisError) {
        let now = ContinuousClock.now
        let (becameStale, age) = snapshot.withLock { snapshot -> (Bool, Duration?) in
            guard let lastSuccess = snapshot.lastSuccess else { return (false, nil) }
            let age = lastSuccess.duration(to: now)
            let stale = age > configuration.maxStaleness
            defer { snapshot.isStale = stale || snapshot.isStale }
            return (stale && !snapshot.isStale, age)
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
            let before = previous[feature]?.state
            switch entry.state {
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

    private func overrideVariable(for feature: FeatureName) -> String? {
        let name = feature.overrideVariable
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

/// One feature as the snapshot holds it. Immutable: a check copies the reference and reads.
private final class Entry: Sendable {
    let state: Result<FeatureState, InvalidFeatureState>
    let overrideVariable: String?
    let onCounter: Counter
    let offCounter: Counter

    init(feature: FeatureName, state: Result<FeatureState, InvalidFeatureState>, overrideVariable: String?) {
        self.state = state
        self.overrideVariable = overrideVariable
        onCounter = Counter(label: "rollout_gate_decisions_total", dimensions: [("feature", feature.rawValue), ("result", "on")])
        offCounter = Counter(label: "rollout_gate_decisions_total", dimensions: [("feature", feature.rawValue), ("result", "off")])
    }
}

private struct Snapshot: Sendable {
    var entries: [FeatureName: Entry] = [:]
    var isStale = false
    var lastSuccess: ContinuousClock.Instant?
}

private struct Work: Sendable {
    var known: Set<FeatureName> = []
    var dirty: Set<FeatureName> = []

    mutating func takeDirty() -> [FeatureName] {
        defer { dirty.removeAll(keepingCapacity: true) }
        return Array(dirty)
    }
}
