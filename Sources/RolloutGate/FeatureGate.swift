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

/// The gate a service embeds: answers "is feature F on for this subject?" synchronously from a
/// local snapshot of Redis, and keeps that snapshot fresh in ``run()``.
///
/// ```swift
/// let gate = try FeatureGate(redisURL: "redis://127.0.0.1:6379", features: ["google"])
/// // add `gate` to the app's ServiceGroup, then per request:
/// if gate.isEnabled("google", for: Subject(id: user.id, workspace: user.workspaceID)) { ... }
/// ```
///
/// A check never throws, never blocks, takes no lock and writes no memory another thread
/// writes (see ``ReadSide``). A feature the gate has not read yet is off (reason
/// ``Decision/Reason/noData``) and is fetched at once in the background; ``prepare(_:)``
/// loads features before traffic arrives. When Redis is unreachable the last known answers
/// stand for as long as the outage lasts (fail static), marked ``Decision/Freshness/stale(age:)``.
public final class FeatureGate: Service, Sendable {
    /// How the gate refreshes and what it does with an old snapshot.
    public struct Configuration: Sendable {
        /// How often the gate polls Redis when push invalidation is off or not connected; also
        /// how often it notices that its snapshot has grown stale.
        public var refreshInterval: Duration = .seconds(5)
        /// How often every known feature is re-read while push invalidation is connected (the
        /// invalidations carry every change in between; this is the safety net).
        public var fullRefreshInterval: Duration = .seconds(60)
        /// How old the last good snapshot may grow while Redis is unreachable before every
        /// feature fails closed (off, reason ``Decision/Reason/staleSnapshot``). nil, the
        /// default, never fails closed: the last known answers stand (fail static). A kill
        /// switch set during an outage cannot reach a process cut off from Redis either way;
        /// a limit trades that for turning every feature off.
        public var maxStaleness: Duration? = nil
        /// Whether to subscribe to Redis's client-side-caching invalidations (Redis 6+, no
        /// server configuration needed) so a change is seen within milliseconds.
        public var pushInvalidation: Bool = true
        /// Connect timeout of the gate's Redis connections.
        public var connectTimeout: Duration = .milliseconds(250)
        /// Command timeout of the gate's Redis connections.
        public var commandTimeout: Duration = .seconds(1)
        /// Where `ROLLOUT_<FEATURE>_ENABLED` and `FLAGS_<FEATURE>_ROLLOUT_PERCENT` are looked
        /// up; nil reads the process environment.
        public var environment: [String: String]?
        /// A local file for the last good snapshot (nil, the default: none). The gate writes it
        /// after each refresh that changed something, at most once a second (a temporary file
        /// in the same folder, flushed to disk, renamed over the old one), in the format of
        /// `rollout snapshot save` with its `.sha256` beside it. When Redis does not answer the
        /// first read after the process started, the gate answers from this file
        /// (``Decision/Freshness/snapshotFile(writtenAt:)``) until Redis answers. A missing,
        /// torn or altered file is logged and ignored. One file per gate.
        public var snapshotFile: String?
        /// Whether the gate writes ``snapshotFile``; false only reads it (as `rollout check
        /// --snapshot-file` does, to show what a restarted service would answer).
        public var writesSnapshotFile: Bool = true
        /// Whether the gate serves every feature in the keyspace, not only those it is asked
        /// for: each full refresh first finds the features with SCAN, and an invalidation
        /// naming a feature it does not know adds it (`rollout serve` does this, so a feature
        /// created with redis-cli is served without a restart).
        public var discoversFeatures: Bool = false

        /// The defaults: poll every 5 s (60 s with push connected), fail static, push on.
        public init() {}
    }

    /// The gate's Redis settings, for logs (the URL's description hides the password).
    public let redisURL: RedisURL
    /// The configuration the gate runs with.
    public let configuration: Configuration

    private let redis: RedisClient
    // With a sentinel URL saying readFrom=replica: the replica the reads and the
    // invalidation subscription share.
    private let readerAffinity = ReaderAffinity()
    /// False for a gate made by RolloutGateTesting: no Redis, its snapshot is what a test sets.
    private let readsRedis: Bool
    private let logger: Logger
    private let clock: GateClock
    let readSide = ReadSide.shared

    // The published snapshot: an Unmanaged<Snapshot> (+1), swapped by the refresher, read by
    // checks inside ReadSide.read without retaining it.
    let published = AtomicReference<Snapshot>()
    private let retired = Retired()
    // Freshness, on the gate's clock (nanoseconds): when the last full read returned, and
    // until when a snapshot that old counts as live.
    private let readAt = Atomic<Int64>(0)
    private let freshUntil = Atomic<Int64>(.min)
    private let pushConnected = Atomic<Bool>(false)
    // Off the hot path: handles (and the publication of entries into them), bookkeeping.
    private let handles = Mutex<[FeatureName: Slot]>([:])
    private let tallies = Mutex<[FeatureName: Tally]>([:])
    private let refreshTurn = AsyncSemaphore(limit: 1)
    private let readCache = Mutex<(set: Set<FeatureName>, features: [FeatureName], pipeline: PreparedPipeline)?>(nil)
    private let work = Mutex(Work())
    private let refresher = Mutex<AsyncStream<Void>.Continuation?>(nil)
    private let health = Mutex(Health())
    private let invalidNames = Mutex<Set<String>>([])
    private let snapshotWriter: SnapshotFileWriter?
    // The snapshot file loaded at start (see Configuration.snapshotFile): when it was
    // written (microseconds since the epoch, 0: none loaded), and until when (gate clock) it
    // may answer under a maxStaleness.
    private let fileWrittenAt = Atomic<Int64>(0)
    private let fileUsableUntil = Atomic<Int64>(.max)
    private let fileTried = Atomic<Bool>(false)
    private let watchers = Mutex<(next: Int, all: [Int: AsyncStream<Void>.Continuation])>((0, [:]))
    private let redisErrors = Counter(label: "rollout_gate_redis_errors_total")
    private let ageGauge = Gauge(label: "rollout_gate_snapshot_age_seconds")

    /// A gate reading `redisURL`; `features` are loaded by the first refresh. Nothing
    /// connects until ``run()`` or ``prepare(_:)``. `clock` measures staleness and paces the
    /// refresher (tests pass a manual one).
    public init(
        redisURL: RedisURL, features: [FeatureName] = [], configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "rollout-gate"), clock: some Clock<Duration> = ContinuousClock()
    ) {
        self.redisURL = redisURL
        self.configuration = configuration
        self.logger = logger
        self.readsRedis = true
        let gateClock = GateClock(clock)
        self.clock = gateClock
        self.redis = RedisClient(
            url: redisURL, connectTimeout: configuration.connectTimeout, commandTimeout: configuration.commandTimeout, reader: readerAffinity)
        self.snapshotWriter = configuration.snapshotFile.flatMap {
            configuration.writesSnapshotFile ? SnapshotFileWriter(path: $0, logger: logger, clock: gateClock) : nil
        }
        work.withLock { $0.known.formUnion(features.filter(\.isValid)) }
    }

    /// A gate reading the Redis at `redisURL` (`redis://`, `rediss://` or `unix://`); throws
    /// only when the URL itself is invalid.
    public convenience init(
        redisURL text: String, features: [FeatureName] = [], configuration: Configuration = Configuration(),
        logger: Logger = Logger(label: "rollout-gate"), clock: some Clock<Duration> = ContinuousClock()
    ) throws(RedisError) {
        self.init(redisURL: try RedisURL(parsing: text), features: features, configuration: configuration, logger: logger, clock: clock)
    }

    /// A gate that never reads Redis, for RolloutGateTesting: ``publishForTesting(_:)`` sets
    /// its snapshot, which is always live.
    package init(testingWith configuration: Configuration, logger: Logger) {
        var configuration = configuration
        configuration.pushInvalidation = false
        self.redisURL = RedisURL(endpoint: .tcp(host: "127.0.0.1", port: 0))
        self.configuration = configuration
        self.logger = logger
        self.readsRedis = false
        self.clock = GateClock(ContinuousClock())
        self.redis = RedisClient(url: redisURL)
        self.snapshotWriter = nil
    }

    /// Replaces the states of `states`' features (a state of nil removes the feature: no data),
    /// visible to the next check. Only for a gate made by ``init(testingWith:logger:)``; the
    /// caller serializes its calls.
    package func publishForTesting(_ states: [FeatureName: FeatureState?]) {
        precondition(!readsRedis, "publishForTesting is only for gates made by RolloutGateTesting")
        var fresh: [FeatureName: Entry] = [:]
        var removed: Set<FeatureName> = []
        for (feature, state) in states {
            guard let state else {
                removed.insert(feature)
                continue
            }
            let tally = tally(for: feature)
            fresh[feature] = Entry(
                feature: feature, raw: [], result: .success(state),
                overrides: processOverrides(for: tally), tally: tally)
        }
        publish(fresh, over: currentEntries(), removing: removed)
        readAt.store(clock.nanoseconds(), ordering: .relaxed)
        freshUntil.store(.max, ordering: .relaxed)
        tellWatchers()
    }

    deinit {
        for continuation in watchers.withLock({ Array($0.all.values) }) { continuation.finish() }
        refresher.withLock { $0?.finish() }
        redis.close()
    }

    // MARK: Checks (the hot path)

    /// Whether `feature` is on for `subject`: the same rules as ``decision(_:for:)``, without
    /// building the reason.
    public func isEnabled(_ feature: FeatureName, for subject: Subject) -> Bool {
        let freshness = currentFreshness()
        let decided = readSide.read { stripe -> Bool? in
            guard let entry = published.withCurrent({ $0.entry(named: feature) }) ?? nil else { return nil }
            return entry._withUnsafeGuaranteedRef { $0.isOn(for: subject, freshness: freshness, stripe: stripe) }
        }
        if let decided { return decided }
        return notFound(feature).isOn
    }

    /// The decision for `subject`, with its reason.
    public func decision(_ feature: FeatureName, for subject: Subject) -> Decision {
        decision(feature, for: subject, percentOverride: nil, count: true)
    }

    /// The decision as if rollout_percent were `percent` (workspace overrides ignored): who
    /// would be on before an operator raises it.
    public func decision(_ feature: FeatureName, for subject: Subject, atPercent percent: RolloutPercent) -> Decision {
        decision(feature, for: subject, percentOverride: percent, count: false)
    }

    @inline(__always)
    private func decision(_ feature: FeatureName, for subject: Subject, percentOverride: RolloutPercent?, count: Bool) -> Decision {
        let freshness = currentFreshness()
        let decided = readSide.read { stripe -> Decision? in
            guard let entry = published.withCurrent({ $0.entry(named: feature) }) ?? nil else { return nil }
            return entry._withUnsafeGuaranteedRef {
                $0.decide(for: subject, freshness: freshness, percentOverride: percentOverride, count: count ? stripe : nil)
            }
        }
        if let decided { return decided }
        return notFound(feature)
    }

    /// The answer for a feature the snapshot has no entry for.
    @inline(never)
    private func notFound(_ feature: FeatureName) -> Decision {
        // Validated only when not found: the snapshot holds valid names only.
        guard feature.isValid else { return invalidName(feature) }
        request(feature)
        return Decision(isOn: false, reason: .noData)
    }

    /// A handle for `feature`: the fastest way to check it, with no name lookup per check.
    /// Keep it for the life of the gate (a service typically holds one per feature).
    public func feature(_ feature: FeatureName) -> FeatureHandle {
        guard feature.isValid else { return FeatureHandle(name: feature, slot: Slot(), gate: self) }
        let (slot, isNew) = handles.withLock { handles -> (Slot, Bool) in
            if let slot = handles[feature] { return (slot, false) }
            let slot = Slot()
            // Under the publication lock: the refresher cannot retire the snapshot meanwhile.
            if let entry = published.withCurrent({ $0.entries[feature] }), let entry {
                _ = slot.entry.replace(with: entry)  // nothing to retire: the slot is new
            }
            handles[feature] = slot
            return (slot, true)
        }
        if isNew { request(feature) }
        return FeatureHandle(name: feature, slot: slot, gate: self)
    }

    /// How current checks are: ``Decision/Freshness/live``, stale for how long, or nil when
    /// a ``Configuration/maxStaleness`` was passed (failing closed).
    @inline(__always)
    package func currentFreshness() -> Decision.Freshness? {
        let now = clock.nanoseconds()
        if now <= freshUntil.load(ordering: .relaxed) { return .live }
        return agedFreshness(now: now)
    }

    @inline(never)
    private func agedFreshness(now: Int64) -> Decision.Freshness? {
        let read = readAt.load(ordering: .relaxed)
        if read == 0 {
            // Redis never read: answering from the snapshot file, or no_data.
            let written = fileWrittenAt.load(ordering: .relaxed)
            if written == 0 { return .live }
            if now > fileUsableUntil.load(ordering: .relaxed) { return nil }
            return .snapshotFile(writtenAt: Timestamp(microsecondsSinceEpoch: written))
        }
        let age = Duration.nanoseconds(now - read)
        if let limit = configuration.maxStaleness, age > limit { return nil }
        return .stale(age: age)
    }

    @inline(never)
    func invalidName(_ feature: FeatureName) -> Decision {
        let isFirst = invalidNames.withLock { $0.insert(feature.rawValue).inserted }
        Counter(label: "rollout_gate_invalid_name_total").increment()
        if isFirst {
            logger.error(
                "A check asked for a feature name that breaks the name rule: it answers off. Fix the name in the code.",
                metadata: [
                    "feature.name": "\(feature.rawValue.prefix(80))",
                    "error": "\(FeatureName.validationError(feature.rawValue)?.message ?? "invalid")",
                ])
        }
        return Decision(isOn: false, reason: .invalidName)
    }

    /// How long ago Redis was last read in full (nil before the first read), on the gate's clock.
    public var snapshotAge: Duration? {
        let read = readAt.load(ordering: .relaxed)
        return read == 0 ? nil : .nanoseconds(clock.nanoseconds() - read)
    }

    /// A stream that yields after each refresh that changed some feature's state (or loaded
    /// the snapshot file), and when the answers' freshness changes (the snapshot goes stale,
    /// fails closed, or is fresh again: every decision's freshness changed), for servers that
    /// tell their clients to fetch again (`rollout serve`'s change events). Bursts coalesce: a consumer that is behind sees one element
    /// for many changes. Ends when the consumer stops iterating.
    public func changes() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let id = watchers.withLock { watchers in
            defer { watchers.next += 1 }
            watchers.all[watchers.next] = continuation
            return watchers.next
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.watchers.withLock { $0.all.removeValue(forKey: id) }
        }
        return stream
    }

    private func tellWatchers() {
        for continuation in watchers.withLock({ Array($0.all.values) }) { continuation.yield() }
    }

    /// Every feature the gate knows (asked for, discovered, or loaded from the snapshot file),
    /// by name.
    public var features: [FeatureName] {
        work.withLock { $0.known }.sorted { $0.rawValue < $1.rawValue }
    }

    /// Whether checks answer from a snapshot: Redis was read once, or the snapshot file was loaded.
    public var hasSnapshot: Bool {
        readAt.load(ordering: .relaxed) != 0 || fileWrittenAt.load(ordering: .relaxed) != 0
    }

    /// The parsed state of `feature` in the snapshot: nil before it was read, an
    /// ``InvalidFeatureState`` when a key breaks the contract.
    public func state(of feature: FeatureName) -> Result<FeatureState, InvalidFeatureState>? {
        guard feature.isValid else { return nil }
        return readSide.read { _ in published.withCurrent { $0.entries[feature]?.result } } ?? nil
    }

    // MARK: Loading

    /// Adds `features` and reads them now, waiting at most for one round trip (bounded by
    /// the connect and command timeouts). Returns false when Redis could not be read.
    @discardableResult
    public func prepare(_ features: [FeatureName]) async -> Bool {
        do {
            try await load(features)
            return true
        } catch {
            return false
        }
    }

    /// ``prepare(_:)`` that says why Redis could not be read (refused, timed out, AUTH or TLS
    /// failed...), for callers that report it.
    public func load(_ features: [FeatureName]) async throws(RedisError) {
        guard readsRedis else { return }
        let valid = features.filter(\.isValid)
        work.withLock { $0.known.formUnion(valid) }
        if case .failure(let error) = await refreshInTurn(valid) { throw error }
    }

    /// Re-reads every known feature now, in one pipelined round trip. Returns false when
    /// Redis could not be read (the last good snapshot stays in use). Counted decisions and
    /// recorded requests reach swift-metrics here (for a RolloutGateTesting gate, only that).
    @discardableResult
    public func refresh() async -> Bool {
        guard readsRedis else {
            flushDecisionCounts()
            return true
        }
        return await refresh(work.withLock { Array($0.known) })
    }

    /// Keeps the snapshot fresh until cancelled or a graceful shutdown: a full refresh every
    /// ``Configuration/refreshInterval`` (every ``Configuration/fullRefreshInterval`` while
    /// push invalidation is connected), and at once for the features an invalidation names.
    /// A `ServiceGroup` runs it; it can be run again after it returned, but not twice at once
    /// (a second concurrent call logs and returns).
    public func run() async throws {
        guard readsRedis else {
            // Nothing to refresh: wait, as a service does, until cancelled or shut down.
            await cancelWhenGracefulShutdown {
                while !Task.isCancelled { try? await Task.sleep(for: .seconds(3600)) }
            }
            return
        }
        let (wakeups, wake) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
        let started = refresher.withLock { current -> Bool in
            guard current == nil else { return false }
            current = wake
            return true
        }
        guard started else {
            logger.error("FeatureGate.run() is already running for this gate; this second call returns at once")
            return
        }
        defer {
            refresher.withLock { $0 = nil }
            wake.finish()
            pushConnected.store(false, ordering: .relaxed)
            updateFreshUntil()
        }
        request(all: true)
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.tick() }
                if let writer = self.snapshotWriter {
                    group.addTask { await writer.run(clock: self.clock) { self.fileSnapshot() } }
                }
                if self.configuration.pushInvalidation {
                    group.addTask { await self.listenForInvalidations() }
                } else {
                    self.logger.info(
                        "Push invalidation is off: polling only",
                        metadata: ["gate.refresh_interval": "\(self.configuration.refreshInterval)"])
                }
                for await _ in wakeups {
                    if Task.isCancelled { break }
                    if self.work.withLock({ $0.scanWanted }) { await self.discoverFeatures() }
                    // Everything named since the last refresh, in one pipelined read.
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
        if isNew { wakeRefresher() }
    }

    private func request(all: Bool) {
        let discovers = configuration.discoversFeatures
        work.withLock {
            $0.dirty.formUnion($0.known)
            $0.lastFullRequest = clock.nanoseconds()
            if discovers { $0.scanWanted = true }
        }
        wakeRefresher()
    }

    private func request(_ features: some Sequence<FeatureName>) {
        let any = work.withLock { work in
            let wanted = features.filter { work.known.contains($0) }
            work.dirty.formUnion(wanted)
            return !wanted.isEmpty
        }
        if any { wakeRefresher() }
    }

    /// Adds every feature that has a key in Redis (SCAN, never KEYS) to the known ones. A
    /// failed scan is tried again at the next full refresh; the refresh itself reports Redis.
    private func discoverFeatures() async {
        guard let keys = try? await redis.scan(matching: "flags:*") else { return }
        let found = Set(keys.compactMap(FeatureKeys.feature(ofKey:)))
        let none = work.withLock { work in
            work.scanWanted = false
            let new = found.subtracting(work.known)
            work.known.formUnion(new)
            work.dirty.formUnion(new)
            return work.known.isEmpty
        }
        // No feature at all: that empty snapshot is read, and current.
        if none {
            readAt.store(clock.nanoseconds(), ordering: .relaxed)
            updateFreshUntil()
        }
    }

    private func wakeRefresher() {
        refresher.withLock { _ = $0?.yield() }
    }

    private func tick() async {
        while !Task.isCancelled {
            do {
                try await clock.sleep(configuration.refreshInterval)
            } catch {
                return
            }
            noteAge()
            // Also while push invalidation makes full refreshes rare: the counts stay current.
            flushDecisionCounts()
            let sinceFull = clock.nanoseconds() - work.withLock { $0.lastFullRequest }
            if !pushConnected.load(ordering: .relaxed) || sinceFull >= configuration.fullRefreshInterval.wholeNanoseconds {
                request(all: true)
            }
        }
    }

    /// The age gauge, and the two log lines of an outage: when the snapshot goes stale (or
    /// fails closed) and, in ``refreshSerialized(_:)``, when it is fresh again.
    private func noteAge() {
        guard let age = snapshotAge else { return }
        ageGauge.record(age.inSeconds)
        let freshness = currentFreshness()
        // Each of the two lines once per outage: `health` remembers which were written.
        let first = health.withLock { health -> Bool in
            switch freshness {
            case .live?, .snapshotFile?:  // the file's own line was written when it was loaded
                return false
            case .stale?:
                defer { health.staleLogged = true }
                return !health.staleLogged
            case nil:
                defer { (health.closedLogged, health.staleLogged) = (true, true) }
                return !health.closedLogged
            }
        }
        guard first else { return }
        tellWatchers()
        if freshness == nil {
            logger.error(
                "The feature snapshot is older than the allowed staleness: every feature is now off until Redis answers",
                metadata: ["redis.url": "\(redisURL)", "gate.max_staleness": "\(configuration.maxStaleness.map { "\($0)" } ?? "none")"])
        } else {
            logger.warning(
                "The feature snapshot is stale: Redis has not been read for longer than the refresh interval; every check answers from the last known snapshot",
                metadata: ["redis.url": "\(redisURL)", "gate.snapshot_age": "\(age.components.seconds) s"])
        }
    }

    /// How long a snapshot stays live after a full read: the interval of the next full
    /// read, plus the time that read may take.
    private func updateFreshUntil() {
        let read = readAt.load(ordering: .relaxed)
        guard read != 0 else { return }
        let interval = pushConnected.load(ordering: .relaxed) ? configuration.fullRefreshInterval : configuration.refreshInterval
        let window = interval + configuration.connectTimeout + configuration.commandTimeout
        freshUntil.store(read &+ window.wholeNanoseconds, ordering: .relaxed)
    }

    @discardableResult
    private func refresh(_ features: [FeatureName]) async -> Bool {
        if case .failure = await refreshInTurn(features) { return false }
        return true
    }

    private func refreshInTurn(_ features: [FeatureName]) async -> Result<Void, RedisError> {
        // One refresh at a time (run(), prepare() and refresh() may overlap): an older reply
        // must never be published after a newer one.
        await refreshTurn.acquire()
        let result = await refreshSerialized(features)
        await refreshTurn.release()
        return result
    }

    private func refreshSerialized(_ features: [FeatureName]) async -> Result<Void, RedisError> {
        flushDecisionCounts()
        retired.reclaim()
        guard !features.isEmpty else { return .success(()) }
        // Freshness is about the whole snapshot: only a read of every known feature renews it.
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
            if readAt.load(ordering: .relaxed) == 0, let path = configuration.snapshotFile,
                !fileTried.exchange(true, ordering: .relaxed)
            {
                await loadSnapshotFile(path, because: error)
            }
            return .failure(error)
        }
        let readTime = clock.nanoseconds()
        // Most refreshes change nothing: a feature whose replies and override are what the
        // current entry was built from keeps that entry (no parsing, no allocation).
        let current = currentEntries()
        var fresh: [FeatureName: Entry] = [:]
        let count = FeatureKeys.readCommandCount
        for (index, feature) in ordered.enumerated() {
            let raw = replies[(index * count)..<(index * count + count)]
            let tally = tally(for: feature)
            let overrides = processOverrides(for: tally)
            if let existing = current[feature], existing.overrides == overrides, existing.raw.elementsEqual(raw) {
                continue
            }
            let state = FeatureState.read(feature, from: raw)
            fresh[feature] = Entry(feature: feature, raw: Array(raw), result: state, overrides: overrides, tally: tally)
        }
        if !fresh.isEmpty {
            publish(fresh, over: current)
            snapshotWriter?.changed(now: readTime) { fileSnapshot() }
            tellWatchers()
        }
        report(fresh, against: current)
        guard isFull || readAt.load(ordering: .relaxed) == 0 else { return .success(()) }
        readAt.store(readTime, ordering: .relaxed)
        updateFreshUntil()
        ageGauge.record(0)
        let (wasFailing, answeredStale) = health.withLock { health in
            defer { health = Health() }
            return (health.staleLogged || health.failing, health.staleLogged)
        }
        if wasFailing {
            logger.notice("Redis is reachable again: the gate answers from a fresh snapshot", metadata: ["redis.url": "\(redisURL)"])
        }
        // The answers were stale (or off): every decision's freshness changed back.
        if answeredStale { tellWatchers() }
        return .success(())
    }

    /// What the snapshot file holds: every feature read from Redis, as Redis answered.
    private func fileSnapshot() -> FlagSnapshot {
        let replies = currentEntries().compactMapValues { $0.raw.isEmpty ? nil : $0.raw }
        return FlagSnapshot(gateReplies: replies, createdAt: .now())
    }

    /// Serves from the snapshot file when the first read of Redis failed: its features are
    /// published (and refreshed from Redis from then on), and checks say where they come from.
    private func loadSnapshotFile(_ path: String, because error: RedisError) async {
        let checked = await onFileQueue { Result { () throws(SnapshotError) in try FlagSnapshot.readChecked(from: path) } }
        var metadata: Logger.Metadata = ["gate.snapshot_file": "\(path)", "redis.url": "\(redisURL)", "redis.error": "\(error)"]
        let snapshot: FlagSnapshot
        do {
            snapshot = try checked.get().snapshot
        } catch {
            metadata["error"] = "\(error)"
            logger.error(
                "Redis did not answer and the snapshot file cannot be used: every feature is off (no_data) until Redis answers",
                metadata: metadata)
            return
        }
        guard let written = Timestamp(parsing: snapshot.createdAt) else {
            metadata["error"] = "created_at \"\(snapshot.createdAt.prefix(40))\" is not an ISO-8601 time"
            logger.error("Redis did not answer and the snapshot file cannot be used: every feature is off (no_data) until Redis answers", metadata: metadata)
            return
        }
        let age = Duration.microseconds(max(0, Timestamp.now().microsecondsSinceEpoch - written.microsecondsSinceEpoch))
        if let limit = configuration.maxStaleness {
            guard age <= limit else {
                metadata["gate.max_staleness"] = "\(limit)"
                metadata["gate.snapshot_written"] = "\(written.secondsDescription)"
                logger.error(
                    "Redis did not answer and the snapshot file is older than the allowed staleness: every feature is off (no_data) until Redis answers",
                    metadata: metadata)
                return
            }
            fileUsableUntil.store(clock.nanoseconds() &+ (limit - age).wholeNanoseconds, ordering: .relaxed)
        }
        var names = snapshot.featureNames
        if snapshot.features == nil { names.formUnion(work.withLock { $0.known }) }  // every flags key: the others are absent
        var fresh: [FeatureName: Entry] = [:]
        for feature in names {
            let raw = snapshot.replies(for: feature)
            let tally = tally(for: feature)
            fresh[feature] = Entry(
                feature: feature, raw: raw, result: FeatureState.read(feature, from: raw),
                overrides: processOverrides(for: tally), tally: tally)
        }
        work.withLock { $0.known.formUnion(names) }
        publish(fresh, over: currentEntries())
        fileWrittenAt.store(written.microsecondsSinceEpoch, ordering: .relaxed)
        tellWatchers()
        report(fresh, against: [:])
        metadata["gate.snapshot_written"] = "\(written.secondsDescription)"
        metadata["gate.features"] = "\(names.count)"
        logger.warning(
            "Redis did not answer at start: answering from the snapshot file until it does", metadata: metadata)
    }

    /// The entries of the published snapshot (the writer's view: only a writer retires it).
    private func currentEntries() -> [FeatureName: Entry] {
        published.withCurrent { $0.entries } ?? [:]
    }

    /// Publishes a snapshot with `fresh` merged in, points the handles at their new entries,
    /// and retires what they replaced.
    private func publish(_ fresh: [FeatureName: Entry], over current: [FeatureName: Entry], removing removed: Set<FeatureName> = []) {
        let snapshot = Snapshot(entries: current.merging(fresh) { _, new in new }.filter { !removed.contains($0.key) })
        var unpublished: [Unmanaged<AnyObject>] = []
        handles.withLock { handles in
            if let old = published.replace(with: snapshot) { unpublished.append(old) }
            for (feature, entry) in fresh {
                guard let slot = handles[feature], let old = slot.entry.replace(with: entry) else { continue }
                unpublished.append(old)
            }
            for feature in removed {
                guard let slot = handles[feature], let old = slot.entry.replace(with: nil) else { continue }
                unpublished.append(old)
            }
        }
        retired.retire(unpublished)
    }

    private func noteFailure(_ error: RedisError) {
        let isFirst = health.withLock { health in
            defer { health.failing = true }
            return !health.failing
        }
        noteAge()
        let metadata: Logger.Metadata = ["redis.url": "\(redisURL)", "error": "\(error)"]
        if isFirst {
            logger.warning("Cannot refresh the feature snapshot; answering from the last good one", metadata: metadata)
        } else {
            logger.debug("Cannot refresh the feature snapshot; answering from the last good one", metadata: metadata)
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

    /// Moves the decision counts and recorded requests of the hot path (striped counters) into
    /// swift-metrics; done every refresh interval and at each refresh, so the metrics lag by
    /// at most one refresh interval.
    private func flushDecisionCounts() {
        for tally in tallies.withLock({ Array($0.values) }) { tally.flush() }
    }

    /// What the process environment says about a feature: the one place the gate (and so
    /// `rollout check`) reads it. `ROLLOUT_<FEATURE>_ENABLED=false` turns the feature off;
    /// `FLAGS_<FEATURE>_ROLLOUT_PERCENT` is the percent when `rollout_percent` is absent from
    /// Redis, below every Redis value (the original Python gate's fallback). A value that is
    /// not a percent from 0 to 100 is ignored, as an absent one.
    private func processOverrides(for tally: Tally) -> ProcessOverrides {
        func value(_ name: String) -> String? {
            if let environment = configuration.environment { return environment[name] }
            return getenv(name).map { String(cString: $0) }
        }
        var overrides = ProcessOverrides()
        if let enabled = value(tally.variableName), parseBool(enabled) == false { overrides.killSwitch = tally.variableName }
        if let text = value(tally.fallbackPercentVariable), let percent = RolloutPercent(parsing: text) {
            overrides.fallbackPercent = FallbackPercent(
                variable: tally.fallbackPercentVariable, percent: percent, isPlainInteger: text.trimmingSpaces().allSatisfy(\.isASCIIDigit))
        }
        return overrides
    }

    private func listenForInvalidations() async {
        let subscription = RedisSubscription(
            url: redisURL, channels: ["__redis__:invalidate"], connectTimeout: configuration.connectTimeout,
            commandTimeout: configuration.commandTimeout, reader: readerAffinity,
            prepare: { id in
                [RedisCommand("CLIENT", "TRACKING", "ON", "REDIRECT", String(id), "BCAST", "PREFIX", "flags:")]
            })
        var connectedOnce = false
        defer { setPushConnected(false) }
        for await event in subscription.events() {
            switch event {
            case .subscribed:
                if !connectedOnce {
                    logger.info("Push invalidation active: changes to flags:* are seen at once", metadata: ["redis.url": "\(redisURL)"])
                }
                connectedOnce = true
                // Anything may have changed while the subscription was down.
                request(all: true)
                setPushConnected(true)
            case .message(_, let payload):
                if let keys = payload.array {
                    let named = keys.compactMap { $0.string.flatMap(FeatureKeys.feature(ofKey:)) }
                    if configuration.discoversFeatures {
                        for feature in Set(named) { request(feature) }  // a new one is added
                    }
                    request(named)
                } else {
                    request(all: true)  // a flush: every key may have changed
                }
            case .disconnected(let error):
                setPushConnected(false)
                logger.debug("Push invalidation connection lost; reconnecting", metadata: ["error": "\(error)"])
            case .refused(let error):
                logger.notice(
                    "Push invalidation unavailable (CLIENT TRACKING refused); falling back to polling",
                    metadata: ["error": "\(error)", "gate.refresh_interval": "\(configuration.refreshInterval)"])
                return
            }
        }
    }

    private func setPushConnected(_ connected: Bool) {
        pushConnected.store(connected, ordering: .relaxed)
        updateFreshUntil()
    }
}

/// Every feature the gate has read, as one immutable value: published whole, never changed.
final class Snapshot: Sendable {
    let entries: [FeatureName: Entry]
    // The same entries by name, unretained, for checks (see NameTable): copying a class
    // reference out of a dictionary retains it, a write to the entry's header that every
    // checking thread would share. Valid while the snapshot (which owns them through
    // `entries`) is.
    private let byName: NameTable<Entry>

    init(entries: [FeatureName: Entry]) {
        self.entries = entries
        byName = NameTable(entries)
    }

    /// The entry of `feature`, unretained: valid inside the read that found this snapshot.
    /// Nil when the snapshot has none, always for an invalid name.
    @inline(__always)
    func entry(named feature: FeatureName) -> Unmanaged<Entry>? {
        byName.object(named: feature.rawValue)
    }
}

/// What the process environment sets for one feature (``FeatureGate``'s `processOverrides`).
struct ProcessOverrides: Sendable, Hashable {
    /// `ROLLOUT_<FEATURE>_ENABLED`, when it is false.
    var killSwitch: String?
    /// `FLAGS_<FEATURE>_ROLLOUT_PERCENT`, when it holds a percent.
    var fallbackPercent: FallbackPercent?
}

/// One feature as the snapshot holds it. Immutable: a check borrows it and reads.
final class Entry: Sendable {
    let result: Result<FeatureState, InvalidFeatureState>
    /// The valid state, or an absent one never consulted when `invalidKey` is set.
    let state: FeatureState
    let invalidKey: String?
    let overrides: ProcessOverrides
    /// The process-level kill switch variable, when it is set to false: ``overrides``'
    /// `killSwitch`, stored, so a check reads it in place.
    let overrideVariable: String?
    let tally: Tally

    /// The replies the entry was parsed from, to skip unchanged features on the next refresh.
    let raw: [RedisValue]

    init(
        feature: FeatureName, raw: [RedisValue], result: Result<FeatureState, InvalidFeatureState>, overrides: ProcessOverrides,
        tally: Tally
    ) {
        self.raw = raw
        let result = result.map { $0.fallingBack(to: overrides.fallbackPercent, replies: raw) }
        self.result = result
        switch result {
        case .success(let state):
            self.state = state
            invalidKey = nil
        case .failure(let invalid):
            state = .absent(feature)
            invalidKey = invalid.firstKey
        }
        self.overrides = overrides
        overrideVariable = overrides.killSwitch
        self.tally = tally
    }

    /// The decision; `freshness` nil means failing closed. `count` is the reader's stripe,
    /// nil for a decision that is not counted (a preview at another percent).
    @inline(__always)
    func decide(for subject: Subject, freshness: Decision.Freshness?, percentOverride: RolloutPercent? = nil, count stripe: Int?) -> Decision {
        let decision: Decision
        if let freshness {
            if let invalidKey {
                decision = Decision(isOn: false, reason: .invalidState(key: invalidKey), freshness: freshness)
            } else {
                let rule = state.decide(for: subject, overriddenBy: overrideVariable, percentOverride: percentOverride)
                decision =
                    freshness == .live
                    ? rule : Decision(isOn: rule.isOn, reason: rule.reason, freshness: freshness, isAnonymous: rule.isAnonymous)
            }
        } else {
            decision = Decision(isOn: false, reason: .staleSnapshot)
        }
        if let stripe { tally.decisions.add(to: decision.isOn ? 0 : 1, stripe: stripe) }
        return decision
    }

    /// What ``decide(for:freshness:percentOverride:count:)`` answers, counted, without its reason.
    @inline(__always)
    func isOn(for subject: Subject, freshness: Decision.Freshness?, stripe: Int) -> Bool {
        let isOn = freshness != nil && invalidKey == nil
            && state.rule(for: subject, overridden: overrideVariable != nil, percentOverride: nil).isOn
        tally.decisions.add(to: isOn ? 0 : 1, stripe: stripe)
        return isOn
    }
}

/// Decisions counted on the hot path in striped cells, flushed into swift-metrics counters by
/// the refresher (a metrics backend call per check would cost more than the hash); and the
/// feature's cohort recorder, made at its first ``FeatureHandle/record(_:failed:duration:)``.
final class Tally: Sendable {
    /// Decisions: on (0), off (1).
    let decisions = StripedCounts(width: 2)
    /// `ROLLOUT_<FEATURE>_ENABLED`, computed once.
    let variableName: String
    /// `FLAGS_<FEATURE>_ROLLOUT_PERCENT`, computed once.
    let fallbackPercentVariable: String
    private let feature: FeatureName
    private let onCounter: Counter
    private let offCounter: Counter
    // The cohort recorder's address, 0 until the first record; +1 retained, released in deinit.
    private let cohortAddress = Atomic<UInt>(0)

    init(feature: FeatureName) {
        self.feature = feature
        variableName = feature.overrideVariable
        fallbackPercentVariable = feature.fallbackPercentVariable
        onCounter = Counter(label: "rollout_gate_decisions_total", dimensions: [("feature", feature.rawValue), ("result", "on")])
        offCounter = Counter(label: "rollout_gate_decisions_total", dimensions: [("feature", feature.rawValue), ("result", "off")])
    }

    deinit {
        if let pointer = UnsafeRawPointer(bitPattern: cohortAddress.load(ordering: .acquiring)) {
            Unmanaged<CohortTally>.fromOpaque(pointer).release()
        }
    }

    /// Counts one request of a cohort; the recorder is made on the first.
    @inline(__always)
    func record(_ cohort: Cohort, failed: Bool, duration: Duration, stripe: Int) {
        if let pointer = UnsafeRawPointer(bitPattern: cohortAddress.load(ordering: .acquiring)) {
            Unmanaged<CohortTally>.fromOpaque(pointer)._withUnsafeGuaranteedRef {
                $0.record(cohort, failed: failed, duration: duration, stripe: stripe)
            }
        } else {
            makeCohorts().record(cohort, failed: failed, duration: duration, stripe: stripe)
        }
    }

    @inline(never)
    private func makeCohorts() -> CohortTally {
        let made = CohortTally(feature: feature)
        let address = UInt(bitPattern: Unmanaged.passRetained(made).toOpaque())
        let (exchanged, original) = cohortAddress.compareExchange(expected: 0, desired: address, ordering: .acquiringAndReleasing)
        if exchanged { return made }
        // Another thread made it first: use that one (ours, never published, goes away).
        Unmanaged.passUnretained(made).release()
        guard let pointer = UnsafeRawPointer(bitPattern: original) else { return made }
        return Unmanaged<CohortTally>.fromOpaque(pointer).takeUnretainedValue()
    }

    func flush() {
        let counts = decisions.take()
        if counts[0] > 0 { onCounter.increment(by: Int(truncatingIfNeeded: counts[0])) }
        if counts[1] > 0 { offCounter.increment(by: Int(truncatingIfNeeded: counts[1])) }
        if let pointer = UnsafeRawPointer(bitPattern: cohortAddress.load(ordering: .acquiring)) {
            Unmanaged<CohortTally>.fromOpaque(pointer).takeUnretainedValue().flush()
        }
    }
}

/// Where a ``FeatureHandle`` finds its feature's current entry, swapped by the refresher
/// under the gate's publication lock.
final class Slot: Sendable {
    let entry = AtomicReference<Entry>()
}

/// A feature of a ``FeatureGate``, resolved once: checks through it skip the name lookup.
public struct FeatureHandle: Sendable {
    /// The feature.
    public let name: FeatureName
    let slot: Slot
    let gate: FeatureGate

    /// Whether the feature is on for `subject`: the same rules as ``decision(for:)``, without
    /// building the reason.
    public func isEnabled(for subject: Subject) -> Bool {
        let freshness = gate.currentFreshness()
        let decided = gate.readSide.read { stripe -> Bool? in
            slot.entry.withCurrent { $0.isOn(for: subject, freshness: freshness, stripe: stripe) }
        }
        if let decided { return decided }
        return notFound().isOn
    }

    /// The decision for `subject`, with its reason.
    public func decision(for subject: Subject) -> Decision {
        decision(for: subject, percentOverride: nil, count: true)
    }

    /// The decision as if rollout_percent were `percent` (workspace overrides ignored).
    public func decision(for subject: Subject, atPercent percent: RolloutPercent) -> Decision {
        decision(for: subject, percentOverride: percent, count: false)
    }

    @inline(__always)
    private func decision(for subject: Subject, percentOverride: RolloutPercent?, count: Bool) -> Decision {
        let freshness = gate.currentFreshness()
        let decided = gate.readSide.read { stripe -> Decision? in
            slot.entry.withCurrent {
                $0.decide(for: subject, freshness: freshness, percentOverride: percentOverride, count: count ? stripe : nil)
            }
        }
        if let decided { return decided }
        return notFound()
    }

    /// The answer while the slot is empty.
    @inline(never)
    private func notFound() -> Decision {
        // Validated only when empty: an invalid name's slot is never filled.
        guard name.isValid else { return gate.invalidName(name) }
        return Decision(isOn: false, reason: .noData)
    }
}

/// The gate's clock, read on the hot path: the system's coarse monotonic clock (a few
/// nanoseconds, no system call), or the clock a test injected.
struct GateClock: Sendable {
    private let now: (@Sendable () -> Int64)?
    private let sleeper: @Sendable (Duration) async throws -> Void

    init<C: Clock<Duration>>(_ clock: C) {
        sleeper = { duration in try await clock.sleep(for: duration) }
        if clock is ContinuousClock {
            now = nil
        } else {
            let origin = clock.now
            // Offset by one second so that 0 never means "now" (0 is "never read").
            now = { origin.duration(to: clock.now).wholeNanoseconds &+ 1_000_000_000 }
        }
    }

    /// Nanoseconds on a monotonic timeline, never 0.
    @inline(__always)
    func nanoseconds() -> Int64 {
        if let now { return now() }
        var time = timespec()
        #if os(Linux)
        clock_gettime(CLOCK_MONOTONIC_COARSE, &time)
        #else
        clock_gettime(CLOCK_MONOTONIC, &time)
        #endif
        return Int64(time.tv_sec) &* 1_000_000_000 &+ Int64(time.tv_nsec) &+ 1_000_000_000
    }

    func sleep(_ duration: Duration) async throws { try await sleeper(duration) }
}

private struct Health: Sendable {
    var failing = false
    var staleLogged = false
    var closedLogged = false
}

private struct Work: Sendable {
    var known: Set<FeatureName> = []
    var dirty: Set<FeatureName> = []
    var lastFullRequest: Int64 = 0
    var scanWanted = false

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
