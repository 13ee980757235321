#if canImport(Glibc)
import Glibc
#endif
public import Logging
import RolloutAdmin
import RolloutAudit
public import RolloutGate
import RolloutRedis

/// One unattended pass over every feature of a policy: read, query, decide, apply, record.
/// It never makes a blind change: no data, no promotion; Prometheus or Redis unreachable, no
/// change and exit 1; a person's change made during the run wins (compare-and-set).
public struct Controller: Sendable {
    /// The policy.
    public let policy: ControllerPolicy
    /// Who took the lock: host, pid and a random token, unique per run.
    public let owner: String
    private let redis: RedisClient
    private let prometheus: PrometheusClient
    private let auditLog: AuditLog
    private let notifier: Notifier?
    private let logger: Logger
    private let now: @Sendable () -> Timestamp
    /// At most this many Prometheus queries at once.
    public let maxConcurrentQueries: Int

    /// A controller for `policy`; `now` is injected for tests.
    public init(
        policy: ControllerPolicy, logger: Logger = Logger(label: "rollout-controller"), maxConcurrentQueries: Int = 32,
        now: @escaping @Sendable () -> Timestamp = Timestamp.now
    ) {
        self.policy = policy
        self.logger = logger
        self.now = now
        self.maxConcurrentQueries = max(1, maxConcurrentQueries)
        redis = RedisClient(url: policy.redis)
        // The Prometheus client's bulkhead bounds the queries in flight across every feature.
        prometheus = PrometheusClient(
            base: policy.prometheus, timeout: policy.queryTimeout,
            guards: EndpointGuard(name: "prometheus", maxConcurrentCalls: max(1, maxConcurrentQueries)))
        auditLog = AuditLog(path: policy.auditLog)
        notifier = policy.notifications.map { Notifier(policy: $0, logger: logger) }
        var hostname = [CChar](repeating: 0, count: 256)
        gethostname(&hostname, hostname.count)
        let host = String(decoding: hostname.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        owner = "\(host):\(getpid()):\(UInt64.random(in: 0...UInt64.max) % 1_000_000_000)"
    }

    /// Evaluates every feature (concurrently, queries bounded by ``maxConcurrentQueries``) and
    /// returns the report (the executable maps it to an exit status).
    /// With `features`, only those; with `promotions` false (watch mode), rollback checks act
    /// and promotions are held with `watching`.
    public func run(features only: Set<FeatureName>? = nil, promotions: Bool = true) async -> RunReport {
        let started = now()
        let results = await withTaskGroup(of: (Int, FeatureReport).self) { group in
            for (index, feature) in policy.features.enumerated() where only?.contains(feature.feature) ?? true {
                group.addTask { (index, await evaluate(feature, promotions: promotions)) }
            }
            var results: [(Int, FeatureReport)] = []
            for await result in group { results.append(result) }
            return results.sorted { $0.0 < $1.0 }.map(\.1)
        }
        var report = RunReport(startedAt: started, dryRun: policy.dryRun, features: results, network: networkStatistics)
        if !policy.dryRun {
            // Every change of the run is in the audit stream already (each script recorded its
            // own); the Markdown log is written from it now, with whatever earlier runs left.
            do {
                let written = try await AuditTrail(redis: redis).project(into: auditLog)
                report.auditRecordsCaughtUp = written.filter { $0.run != owner }
            } catch {
                report.auditLogError = error.description
                logger.error("Cannot write the audit log; its records are safe in Redis", metadata: ["error": "\(error)"])
            }
        }
        // The connection stays open for the next pass (`--every`); it closes with the controller.
        return report
    }

    /// Sends what `report` tells people (``RunNotifications``) and stores each condition so it
    /// is sent once; nil in a dry run or without `notifications:`. It never throws: what cannot
    /// be delivered is in the fallback file, and a failure to store a condition only means it
    /// may be sent again next run. Call it after the run's report is out, so it delays nothing.
    public func notify(_ report: RunReport) async -> DeliveryReport? {
        guard let notifier, !report.dryRun else { return nil }
        var servers = await notifier.policy.readServerConditions()
        let notifications = RunNotifications(report: report, servers: servers, time: now())
        let delivery = notifications.events.isEmpty ? nil : await notifier.deliver(notifications.events)
        if !notifications.featureConditions.isEmpty {
            let writes = notifications.featureConditions.sorted { $0.key < $1.key }.map { RedisCommand("SET", FeatureKeys($0.key).notified, $0.value) }
            do {
                _ = try await redis.pipeline(writes)
            } catch {
                logger.warning("Cannot store the notified conditions; they may be sent again", metadata: ["error": "\(error)"])
            }
        }
        if !notifications.serverConditions.isEmpty {
            servers.merge(notifications.serverConditions) { _, new in new }
            do {
                try await notifier.policy.writeServerConditions(servers)
            } catch {
                logger.warning(
                    "Cannot write the notification state file; server conditions may be sent again",
                    metadata: ["path": "\(notifier.policy.stateFile)", "error": "\(error)"])
            }
        }
        return delivery
    }

    /// What the calls to each remote endpoint did so far: Prometheus, and each webhook channel.
    public var networkStatistics: [String: CallStatistics] {
        var statistics = ["prometheus": prometheus.guards.snapshot]
        for (name, guards) in notifier?.guards ?? [:] { statistics["webhook:\(name)"] = guards.snapshot }
        return statistics
    }

    private func evaluate(_ feature: FeaturePolicy, promotions: Bool) async -> FeatureReport {
        let lockKey = FeatureKeys(feature.feature).lock
        // 7. One controller per feature at a time. A dry run writes nothing, not even a lock.
        // The lock's SET NX goes first in the read's pipeline: Redis runs it before the reads,
        // so they happen under the lock, in one round trip (the reads are dropped if it is held).
        let lock = policy.dryRun
            ? nil
            : RedisCommand("SET", lockKey, owner, "NX", "PX", String(EvaluationBudget(prometheus: prometheus, redis: redis).lockTTL.wholeMilliseconds))
        let (result, mayHoldLock) = await evaluateHoldingLock(feature, report: FeatureReport(feature: feature.feature), promotions: promotions, lock: lock)
        if lock != nil, mayHoldLock {
            // Released by its owner only; the TTL frees it if this process dies first.
            _ = try? await redis.evaluate(Scripts.releaseLock, keys: [lockKey], arguments: [owner])
        }
        return result
    }

    /// The evaluation, with `lock` (the lock's SET NX) sent first in the read's pipeline; true
    /// when the lock may be this run's (taken, or its SET's fate unknown), so it is released.
    private func evaluateHoldingLock(
        _ feature: FeaturePolicy, report: FeatureReport, promotions: Bool, lock: RedisCommand?
    ) async -> (FeatureReport, mayHoldLock: Bool) {
        let keys = FeatureKeys(feature.feature)

        // 1. The lock and every key in one round trip.
        let taken: [RedisValue]
        let arrivedAt: ContinuousClock.Instant
        do {
            (taken, arrivedAt) = try await redis.pipelineWithArrival(
                (lock.map { [$0] } ?? []) + keys.readCommands + [
                    RedisCommand("GET", keys.controllerPercent), RedisCommand("GET", keys.guardLock), RedisCommand("PTTL", keys.guardLock),
                    RedisCommand("GET", keys.healthySince), RedisCommand("GET", keys.lastGood), RedisCommand("GET", keys.pausedReason),
                    RedisCommand("HGETALL", keys.streaks), RedisCommand("GET", keys.notified), RedisServerTime.command,
                ])
        } catch {
            // The SET may have reached the server before the error: released if it is ours.
            return (report.held(.redisError, "Redis: \(error)"), true)
        }
        var replies = taken[...]
        if lock != nil, let reply = replies.popFirst() {
            if case .error(let text) = reply {
                return (report.held(.redisError, "Redis: \(RedisError.fromServer(text, context: "SET"))"), false)
            }
            if reply.isNull {
                let holder = (try? await redis.send("GET", keys.lock).string) ?? "another controller"
                return (report.held(.locked, "another controller (\(holder)) is deciding this feature now"), false)
            }
        }
        return (await evaluateLocked(feature, report: report, promotions: promotions, replies: Array(replies), arrivedAt: arrivedAt), true)
    }

    /// The rest of the evaluation, the lock taken: `replies` are the read's, `arrivedAt` when
    /// they came.
    private func evaluateLocked(
        _ feature: FeaturePolicy, report: FeatureReport, promotions: Bool, replies: [RedisValue], arrivedAt: ContinuousClock.Instant
    ) async -> FeatureReport {
        var report = report
        let keys = FeatureKeys(feature.feature)
        let serverTime: RedisServerTime
        do {
            serverTime = try RedisServerTime(reply: replies[replies.count - 1], readAt: arrivedAt)
        } catch {
            return report.held(.redisError, "Redis: \(error)")
        }
        let base = FeatureKeys.readCommandCount
        report.notifiedCondition = replies[base + 7].string
        let state: FeatureState
        switch FeatureState.read(feature.feature, from: replies[0..<base]) {
        case .success(let parsed): state = parsed
        case .failure(let invalid):
            return report.held(.corruptState, invalid.problems.map(\.message).joined(separator: " "))
        }
        // The controller's own keys: one of another Redis type is corrupt, never absent.
        let bookkeeping: [(String, Int, KeyType)] = [
            (keys.controllerPercent, 0, .string), (keys.guardLock, 1, .string), (keys.healthySince, 3, .string), (keys.lastGood, 4, .string),
            (keys.pausedReason, 5, .string), (keys.streaks, 6, .hash), (keys.notified, 7, .string),
        ]
        for (key, offset, type) in bookkeeping {
            do throws(KeyspaceError) { _ = try KeyContent(replies[base + offset], key: key, type: type) } catch {
                return report.held(.corruptState, error.message)
            }
        }
        var controllerPercent: RolloutPercent?
        if let text = replies[base].string {
            guard let percent = RolloutPercent(parsing: text) else {
                return report.held(.corruptState, "\(keys.controllerPercent) holds \"\(text)\", which is not a percent.")
            }
            controllerPercent = percent
        }
        let expected = (percent: replies[1].string ?? "", paused: replies[3].string ?? "", enabled: replies[0].string ?? "")
        report.state = state
        report.controllerPercent = controllerPercent
        var observation = Observation(state: state, controllerPercent: controllerPercent, checkValues: [:])
        observation.guardLock = GuardLock.read(value: replies[base + 1], pttl: replies[base + 2])
        // The controller's own bookkeeping: a value it cannot read is dropped, never acted on.
        observation.healthySince = replies[base + 3].string.flatMap { Timestamp(parsing: $0) }
        observation.lastGood = replies[base + 4].string.flatMap { RolloutPercent(parsing: $0) }
        observation.pausedReason = replies[base + 5].string
        observation.streaks = streaks(from: replies[base + 6])
        report.guardLock = observation.guardLock

        // 2. A person's switches: no queries needed.
        if state.paused || !state.enabled {
            let verdict = decide(policy: feature, observation: observation, now: now())
            report.verdict = verdict
            return report.held(verdict.holdReason ?? .paused, verdict.explanation)
        }

        // 3. Every query at once (bounded); any failure holds the feature.
        let answers = await query(feature)
        if !answers.failures.isEmpty {
            report.queryErrors = answers.failures
            return report.held(.promUnreachable, "Prometheus could not answer: " + answers.failures.joined(separator: "; "))
        }
        report.prometheusAnswered = true
        for check in feature.checks { observation.checkValues[check.name] = answers.values[.check(check.name)] ?? nil }
        for check in feature.burnRateChecks {
            var ratios: [Duration: Double?] = [:]
            for window in check.distinctWindows { ratios[window] = answers.values[.window(check: check.name, window)] ?? nil }
            observation.windowValues[check.name] = ratios
        }
        if feature.minRequests != nil { observation.requests = .some(answers.values[.minRequests] ?? nil) }

        let time = now()
        var verdict = decide(policy: feature, observation: observation, now: time)
        if !promotions, case .promote = verdict.action {
            verdict.action = .hold
            verdict.holdReason = .watching
            verdict.explanation = "healthy; watch mode applies rollback checks only, promotions are the controller's"
        }
        report.verdict = verdict
        report.requests = observation.requests ?? nil

        // 8. A percent the controller did not write: a person's change, or a feature it has never
        // recorded (adopted, never promoted at first sight). Recorded once, the dwell restarts now.
        if verdict.manualChangeDetected || verdict.firstSight {
            let known = controllerPercent
            let change = known.map { "\($0)% -> \(state.rolloutPercent)%" } ?? "adopted at \(state.rolloutPercent)%"
            let why = known == nil
                ? "first sight: the controller had never recorded this feature; the dwell starts now"
                : "changed outside the controller; the dwell restarts now"
            let by = known == nil ? "controller" : "manual (detected)"
            if policy.dryRun {
                await recordDryRun(feature.feature, change, why, by: by, at: time)
            } else {
                let record = AuditRecord(time: time, feature: feature.feature, change: change, reason: why, by: by, run: owner)
                let deadline = serverTime.writeDeadline()
                do {
                    let acknowledged = try await redis.evaluate(
                        Scripts.acknowledgePercent,
                        keys: [keys.rolloutPercent, keys.controllerPercent, keys.lastPercent, keys.lastChangeTime, keys.healthySince, AuditTrail.streamKey],
                        arguments: [expected.percent, known?.description ?? "", time.description, String(deadline.serverMilliseconds), String(AuditTrail.maxLength)]
                            + record.scriptArguments, waitingUntil: deadline.waitUntil)
                    if let refusal = ScriptRefusal(acknowledged) { return report.refused(refusal) }
                    guard acknowledged == .integer(1) else {
                        return report.held(.concurrentChange, "rollout_percent changed again (or another controller adopted the feature) while the controller looked at it")
                    }
                    if known != nil { report.manualChange = change } else { report.adopted = true }
                } catch {
                    return report.held(.redisError, "Redis: \(error)")
                }
            }
        }

        let target: RolloutPercent
        switch verdict.action {
        case .hold:
            if !policy.dryRun {
                if let refusal = await keepBooks(
                    feature, keys: keys, expectedPercent: expected.percent, observation: observation, verdict: verdict, at: time,
                    deadline: serverTime.writeDeadline(), report: &report)
                {
                    return report.refused(refusal)
                }
            }
            return report.held(verdict.holdReason ?? .noData, verdict.explanation)
        case .promote(let to), .rollback(let to):
            target = to
        }
        let isRollback = verdict.result == "rollback"
        let change = "\(state.rolloutPercent)% -> \(target)%"
        if policy.dryRun {
            await recordDryRun(feature.feature, change, verdict.explanation, by: "controller", at: time)
            report.recommended = true
            return report
        }
        // 7. Compare-and-set: written only if rollout_percent, paused, enabled (and for a
        // promotion the guard) are as read, and only while this run still holds the lock. A
        // rollback sets the guard, is counted, and at the flap limit pauses, in the same step.
        let guardValue = GuardLock.value(origin: .rollback, time: time, reason: "after \(change): \(verdict.explanation)")
        let flapReason = "flap protection: \(feature.maxRollbacksPerHour) rollbacks within an hour (the last \(change)); look before resuming"
        let guarded = isRollback && feature.guardWindow > .zero
        let reason = verdict.explanation + (guarded ? "; guard locked for \(formatDuration(feature.guardWindow))" : "")
        let records = [
            AuditRecord(time: time, feature: feature.feature, change: change, reason: reason, by: "controller", run: owner),
            AuditRecord(time: time, feature: feature.feature, change: "paused", reason: flapReason, by: "controller", run: owner),
            guardReleaseRecord(feature, at: time),
        ]
        let outcome: RedisValue
        let deadline = serverTime.writeDeadline()
        do {
            outcome = try await redis.evaluate(
                Scripts.applyChange,
                keys: [
                    keys.rolloutPercent, keys.paused, keys.enabled, keys.lastPercent, keys.lastChangeTime, keys.controllerPercent, keys.lock,
                    keys.guardLock, keys.rollbacks, keys.pausedReason, keys.lastGood, keys.streaks, keys.healthySince, AuditTrail.streamKey,
                ],
                arguments: [
                    expected.percent, expected.paused, expected.enabled, target.description, time.description, owner,
                    isRollback ? "rollback" : "promote", verdict.releaseGuard ? observation.guardLock?.value ?? "" : "",
                    verdict.newLastGood?.description ?? "", String(time.microsecondsSinceEpoch / 1000),
                    String(time.microsecondsSinceEpoch / 1000 - 3_600_000), String(feature.guardWindow.wholeMilliseconds), guardValue,
                    String(feature.maxRollbacksPerHour), flapReason, String(deadline.serverMilliseconds), String(AuditTrail.maxLength),
                ] + records.flatMap(\.scriptArguments), waitingUntil: deadline.waitUntil)
        } catch where error.code == .serverError {
            // Redis refused the script (an ACL without XADD, out of memory): its first write is
            // the audit record, so a refusal writes nothing.
            return report.held(.redisError, "Redis refused the change: \(error); nothing was written")
        } catch {
            // A timeout or a broken connection after the script was sent: it may have run before
            // its deadline (then its audit record is in the stream, and the log catches up from
            // it), never after. Look, so the report says what happened.
            let confirmed = try? await redis.pipeline([
                RedisCommand("GET", keys.rolloutPercent), RedisCommand("GET", keys.controllerPercent), RedisCommand("GET", keys.paused),
            ])
            let values = confirmed?.map(\.string) ?? []
            guard values.count == 3, values[0] == target.description, values[1] == target.description,
                target.description != expected.percent
            else {
                return report.held(.redisError, "Redis: \(error); the change was not confirmed")
            }
            logger.warning(
                "Redis failed after the change was sent; it was applied (confirmed by reading it back)",
                metadata: ["feature.name": "\(feature.feature)", "error": "\(error)"])
            // Paused by this very script when it was not before: flap protection.
            let pausedNow = isRollback && values[2] == "true" && expected.paused != "true"
            outcome = .integer(pausedNow ? 2 : 1)
        }
        if let refusal = ScriptRefusal(outcome) {
            verdict.action = .hold
            report.verdict = verdict
            return report.refused(refusal)
        }
        if outcome == .integer(-1) {
            verdict.action = .hold
            report.verdict = verdict
            return report.held(.locked, "the lock expired during the evaluation; another controller may be deciding, so nothing was written")
        }
        guard outcome == .integer(1) || outcome == .integer(2) else {
            verdict.action = .hold
            report.verdict = verdict
            return report.held(.concurrentChange, "a person changed the feature (or its guard) during the run; their change wins")
        }
        report.applied = true
        logger.notice(
            "Feature \(isRollback ? "rolled back" : "promoted")",
            metadata: ["feature.name": "\(feature.feature)", "rollout.change": "\(change)", "rollout.reason": "\(verdict.explanation)"])
        if isRollback {
            if guarded { report.guardEvent = .locked }
            if outcome == .integer(2) {
                report.pausedByFlapProtection = true
                logger.error("Feature paused by flap protection", metadata: ["feature.name": "\(feature.feature)", "rollout.reason": "\(flapReason)"])
            }
        } else if verdict.releaseGuard {
            guardReleased(&report)
        }
        return report
    }

    /// What a run that changes nothing still records (redis/record_evaluation.lua, only while
    /// the run holds the lock and rollout_percent is as read): each check's streak, since when the
    /// feature is healthy, its last known good percent; then the guard's early release.
    /// A key of the wrong type is returned as a refusal (the feature holds with corrupt_state).
    private func keepBooks(
        _ feature: FeaturePolicy, keys: FeatureKeys, expectedPercent: String, observation: Observation, verdict: Verdict, at time: Timestamp,
        deadline: RedisServerTime.WriteDeadline, report: inout FeatureReport
    ) async -> ScriptRefusal? {
        let streaks = verdict.streaks.filter { $0.value > 0 }.sorted { $0.key < $1.key }.flatMap { [$0.key, String($0.value)] }
        do {
            let recorded = try await redis.evaluate(
                Scripts.recordEvaluation, keys: [keys.lock, keys.rolloutPercent, keys.streaks, keys.healthySince, keys.lastGood],
                arguments: [owner, expectedPercent, verdict.healthy ? "1" : "0", time.description, verdict.newLastGood?.description ?? "", String(deadline.serverMilliseconds)]
                    + streaks, waitingUntil: deadline.waitUntil)
            if let refusal = ScriptRefusal(recorded), case .wrongType = refusal { return refusal }
            guard recorded == .integer(1) else { return nil }  // the lock or the percent moved, or too late: the next run looks again
            if verdict.releaseGuard, let lock = observation.guardLock {
                let released = try await redis.evaluate(
                    Scripts.releaseGuard, keys: [keys.guardLock, AuditTrail.streamKey],
                    arguments: [lock.value, String(deadline.serverMilliseconds), String(AuditTrail.maxLength)] + guardReleaseRecord(feature, at: time).scriptArguments,
                    waitingUntil: deadline.waitUntil)
                if released == .integer(1) { guardReleased(&report) }
            }
        } catch {
            // Bookkeeping only: the next run recomputes it. The decision stands.
            logger.warning("Cannot record the run's bookkeeping", metadata: ["feature.name": "\(feature.feature)", "error": "\(error)"])
        }
        return nil
    }

    /// Every query of `feature` at once (the client's bulkhead bounds them), all ended by the
    /// phase's deadline, well inside the lock's TTL; the failures sorted by name.
    private func query(_ feature: FeaturePolicy) async -> (values: [FeaturePolicy.Query.Purpose: Double?], failures: [String]) {
        let deadline = EvaluationBudget(prometheus: prometheus, redis: redis).prometheusDeadline()
        var values: [FeaturePolicy.Query.Purpose: Double?] = [:]
        var failures: [String] = []
        await withTaskGroup(of: (FeaturePolicy.Query.Purpose, String, Result<Double?, PrometheusError>).self) { group in
            for query in feature.queries {
                group.addTask {
                    let result: Result<Double?, PrometheusError>
                    do throws(PrometheusError) {
                        result = .success(try await prometheus.value(of: query.query, deadline: deadline))
                    } catch {
                        result = .failure(error)
                    }
                    return (query.purpose, query.label, result)
                }
            }
            for await (key, label, result) in group {
                switch result {
                case .success(let value): values[key] = value
                case .failure(let error): failures.append("\(label): \(error)")
                }
            }
        }
        return (values, failures.sorted())
    }

    private func streaks(from reply: RedisValue) -> [String: Int] {
        let items = reply.array?.compactMap(\.string) ?? []
        var streaks: [String: Int] = [:]
        for index in stride(from: 0, to: items.count - 1, by: 2) {
            if let count = Int(items[index + 1]), count > 0 { streaks[items[index]] = count }
        }
        return streaks
    }

    /// The controller released its guard early: reported the same way from both paths (the
    /// scripts recorded it).
    private func guardReleased(_ report: inout FeatureReport) {
        report.guardEvent = .released
        report.guardLock = nil
    }

    /// The audit record of the guard's early release, the same from both paths.
    private func guardReleaseRecord(_ feature: FeaturePolicy, at time: Timestamp) -> AuditRecord {
        AuditRecord(
            time: time, feature: feature.feature, change: "guard released",
            reason: "every check healthy for \(formatDuration(feature.stabilityWindow)) (stability_window)", by: "controller", run: owner)
    }

    /// A dry run's line: written straight to the Markdown log (nothing is in Redis to record).
    private func recordDryRun(_ feature: FeatureName, _ change: String, _ reason: String, by: String, at time: Timestamp) async {
        do {
            try await auditLog.appendUnrecorded(AuditRecord(time: time, feature: feature, change: "[dry-run] \(change)", reason: reason, by: by))
        } catch {
            logger.error("Cannot write the audit log", metadata: ["error": "\(error)", "feature.name": "\(feature)"])
        }
    }
}
