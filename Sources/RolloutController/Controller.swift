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
    /// and promotions are held with `watching`. With `forcedRollback` the checks are not queried:
    /// each feature rolls back to its target under the same lock, compare-and-set, guard, flap
    /// protection and audit record as any rollback (see ``decide(policy:observation:now:promotions:forcedRollback:)``).
    /// With `marker`, a change's script also sets that key, in the same atomic step. With
    /// `requestedBy` (an alert that asked for this run), a change's audit record names it.
    public func run(
        features only: Set<FeatureName>? = nil, promotions: Bool = true, forcedRollback: ForcedRollback? = nil, marker: ChangeMarker? = nil,
        requestedBy: String? = nil
    ) async -> RunReport {
        let started = now()
        let trigger = Trigger(promotions: promotions, forcedRollback: forcedRollback, marker: marker, requestedBy: requestedBy)
        let results = await withTaskGroup(of: (Int, FeatureReport).self) { group in
            for (index, feature) in policy.features.enumerated() where only?.contains(feature.feature) ?? true {
                group.addTask { (index, await evaluate(feature, trigger)) }
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
                // A stream error says itself where the records are; a file error does not.
                report.auditLogError = error.description + (error.code == .stream ? "" : " The records are safe in Redis; the next run writes them.")
                logger.error("The audit log is not up to date", metadata: ["error": "\(error)"])
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

    /// What a run was asked to do beyond the schedule's evaluation.
    private struct Trigger: Sendable {
        var promotions: Bool
        var forcedRollback: ForcedRollback?
        var marker: ChangeMarker?
        var requestedBy: String?
    }

    /// How long one feature's evaluation may hold its lock (`flags:<f>:lock`'s TTL): a caller
    /// that claims work around a run (the alert webhook) keeps its claim at least this long.
    public var lockTTL: Duration { budget.lockTTL }

    /// The time one feature's evaluation may take, phase by phase, from the clients' timeouts.
    private var budget: EvaluationBudget { EvaluationBudget(prometheus: prometheus, redis: redis, replicaTimeout: policy.replicas.timeout) }

    private func evaluate(_ feature: FeaturePolicy, _ trigger: Trigger) async -> FeatureReport {
        let lockKey = FeatureKeys(feature.feature).lock
        // 7. One controller per feature at a time. A dry run writes nothing, not even a lock.
        // The lock's SET NX goes first in the read's pipeline: Redis runs it before the reads,
        // so they happen under the lock, in one round trip (the reads are dropped if it is held).
        let lock = policy.dryRun
            ? nil
            : RedisCommand("SET", lockKey, owner, "NX", "PX", String(budget.lockTTL.wholeMilliseconds))
        let (result, mayHoldLock) = await evaluateHoldingLock(feature, report: FeatureReport(feature: feature.feature), trigger, lock: lock)
        if lock != nil, mayHoldLock {
            // Released by its owner only; the TTL frees it if this process dies first. The
            // verdict is recorded by the same script, only while the lock is still this run's.
            let verdict = lastVerdict(of: result, at: result.decidedAt ?? now())
            _ = try? await redis.evaluate(
                Scripts.releaseLock, keys: [lockKey] + (verdict.map { _ in [FeatureKeys(feature.feature).lastVerdict] } ?? []),
                arguments: [owner] + (verdict.map { [$0.description] } ?? []))
        }
        return result
    }

    /// The evaluation, with `lock` (the lock's SET NX) sent first in the read's pipeline; true
    /// when the lock may be this run's (taken, or its SET's fate unknown), so it is released.
    private func evaluateHoldingLock(
        _ feature: FeaturePolicy, report: FeatureReport, _ trigger: Trigger, lock: RedisCommand?
    ) async -> (FeatureReport, mayHoldLock: Bool) {
        let read: FeatureRead
        switch await self.read(feature, lock: lock) {
        case .success(let found): read = found
        case .failure(let failure):
            var report = report
            report.notifiedCondition = failure.notifiedCondition
            return (report.held(failure.hold), failure.mayHoldLock)
        }
        var report = report
        report.state = read.observation.state
        report.controllerPercent = read.observation.controllerPercent
        report.guardLock = read.observation.guardLock
        report.notifiedCondition = read.notifiedCondition
        // A policy percent the feature's bucketing refuses (fractional under v1) is never written.
        let unwritable = feature.unwritablePercents(under: read.observation.state.bucketing)
        guard unwritable.isEmpty else { return (report.held(.invalidPolicy, unwritable.joined(separator: " ")), true) }

        var observation = read.observation
        if let known = observation.controllerPercent, known != observation.state.rolloutPercent {
            observation.changeAlreadyRecorded = await isRecorded(
                feature.feature, from: known, to: observation.state.rolloutPercent, near: observation.state.lastChangeTime ?? now())
        }
        // A forced rollback does not wait for the checks: no query is sent.
        if observation.needsQueries && trigger.forcedRollback == nil {
            switch await answers(feature, into: &observation) {
            case .success: report.prometheusAnswered = true
            case .failure(let failures):
                report.queryErrors = failures.failures
                return (report.held(.promUnreachable, "Prometheus could not answer: " + failures.failures.joined(separator: "; ")), true)
            }
            report.requests = observation.requests ?? nil
        }
        var plan = decide(
            policy: feature, observation: observation, now: now(), promotions: trigger.promotions, forcedRollback: trigger.forcedRollback)
        if let requester = trigger.requestedBy, trigger.forcedRollback == nil, case .change(var change) = plan.writes {
            change.reason += "; evaluated at once for \(requester)"
            plan.writes = .change(change)
        }
        let applied = await apply(plan, of: feature, read: read, marker: trigger.marker)
        return (self.report(applied, of: plan, feature: feature.feature, into: report), true)
    }

    /// 1. The lock and every key in one round trip, decoded.
    private func read(_ feature: FeaturePolicy, lock: RedisCommand?) async -> Result<FeatureRead, FeatureRead.Failure> {
        let keys = FeatureKeys(feature.feature)
        let taken: [RedisValue]
        let arrivedAt: ContinuousClock.Instant
        do {
            (taken, arrivedAt) = try await redis.pipelineWithArrival((lock.map { [$0] } ?? []) + FeatureRead.commands(keys))
        } catch {
            // The SET may have reached the server before the error: released if it is ours.
            return .failure(FeatureRead.Failure(Hold(.redisError, "Redis: \(error)"), mayHoldLock: true))
        }
        var replies = taken[...]
        if lock != nil, let reply = replies.popFirst() {
            if case .error(let text) = reply {
                return .failure(FeatureRead.Failure(Hold(.redisError, "Redis: \(RedisError.fromServer(text, context: "SET"))"), mayHoldLock: false))
            }
            if reply.isNull {
                let holder = (try? await redis.send("GET", keys.lock).string) ?? "another controller"
                return .failure(FeatureRead.Failure(Hold(.locked, "another controller (\(holder)) is deciding this feature now"), mayHoldLock: false))
            }
        }
        return FeatureRead.decode(replies, feature: feature.feature, arrivedAt: arrivedAt)
    }

    /// 3. Every query's answer put in `observation`; the failures, sorted, when any query failed.
    private func answers(_ feature: FeaturePolicy, into observation: inout Observation) async -> Result<Void, QueryFailures> {
        // The cohort checks count since the last change: the step's own evidence.
        // Not at 0% or 100%: one cohort is empty there, and the verdict does not judge it.
        let percent = observation.state.rolloutPercent
        // One instant for every query of the feature: answers a check combines agree.
        let evaluatedAt = now()
        let window = percent > .zero && percent < .full ? observation.state.lastChangeTime.map { evaluatedAt.duration(since: $0) } : nil
        let answers = await query(feature, cohortWindow: window, at: evaluatedAt)
        guard answers.failures.isEmpty else { return .failure(QueryFailures(failures: answers.failures)) }
        for check in feature.checks { observation.checkValues[check.name] = answers.values[.check(check.name)] ?? nil }
        for check in feature.burnRateChecks {
            var ratios: [Duration: Double?] = [:]
            for window in check.distinctWindows { ratios[window] = answers.values[.window(check: check.name, window)] ?? nil }
            observation.windowValues[check.name] = ratios
        }
        if feature.minRequests != nil { observation.requests = .some(answers.values[.minRequests] ?? nil) }
        if window != nil {
            for check in feature.cohortChecks {
                observation.cohortAnswers[check.name] = check.answers(
                    value: { answers.values[.cohort(check: check.name, $0, $1)] ?? nil },
                    samples: { answers.vectors[.cohort(check: check.name, $0, .buckets)] ?? [] })
            }
        }
        return .success(())
    }

    /// What applying a plan did, for ``report(_:of:feature:into:)``.
    private struct Applied {
        /// The acknowledgement was written (a dry run writes none).
        var acknowledged = false
        /// The guard was released.
        var guardReleased = false
        /// Stopped short: held with this.
        var stopped: Hold?
        /// The plan's change was not made: the verdict is reported as a hold.
        var changeRefused = false
        /// A write that reached fewer replicas than asked (it stands).
        var notReplicated: Replication?
    }

    /// Writes `plan` (a dry run only records what it would write): the acknowledgement, then
    /// the bookkeeping or the change, each under compare-and-set.
    private func apply(_ plan: Plan, of feature: FeaturePolicy, read: FeatureRead, marker: ChangeMarker?) async -> Applied {
        var applied = Applied()
        if let acknowledgement = plan.acknowledgement {
            if policy.dryRun {
                if !acknowledgement.alreadyRecorded {
                    await recordDryRun(feature.feature, acknowledgement.change, acknowledgement.reason, by: acknowledgement.by, at: plan.time)
                }
            } else {
                let (hold, shortfall) = await acknowledge(acknowledgement, of: feature.feature, read: read, at: plan.time)
                if let hold {
                    applied.stopped = hold
                    return applied
                }
                applied.acknowledged = true
                applied.notReplicated = shortfall
            }
        }
        switch plan.writes {
        case .none:
            break
        case .bookkeeping(let bookkeeping):
            guard !policy.dryRun else { break }
            switch await keepBooks(bookkeeping, of: feature, read: read, at: plan.time) {
            case .success(let released): applied.guardReleased = released
            case .failure(let hold): applied.stopped = hold
            }
        case .change(let change):
            if policy.dryRun {
                await recordDryRun(feature.feature, change.change, plan.explanation, by: "controller", at: plan.time)
            } else {
                let (hold, shortfall) = await applyChange(change, of: feature, read: read, marker: marker)
                if let hold {
                    applied.stopped = hold
                    applied.changeRefused = true
                } else {
                    applied.guardReleased = change.guardWrite == .release
                    applied.notReplicated = shortfall ?? applied.notReplicated
                }
            }
        }
        return applied
    }

    /// Whether `feature`'s change `from` → `to` is already recorded within a minute of `time`:
    /// in the audit stream (`rollout flags set-percent`), or in the Markdown log, where the
    /// original Python controller appends its own lines. A change recorded there is not a new
    /// manual change; recording it again would show it twice. A stream or log that cannot be
    /// read answers no: the change is recorded again rather than lost. Only the feature's newest
    /// recorded percent change counts (``AuditRecord/holdChange(_:of:from:to:near:within:)``):
    /// a change back to a percent recorded before, with another change recorded between, is new.
    private func isRecorded(_ feature: FeatureName, from: RolloutPercent, to: RolloutPercent, near time: Timestamp) async -> Bool {
        let stream = (try? await AuditTrail(redis: redis).newest(of: feature, limit: 20, scanning: 2_000)) ?? []
        let log = await auditLog.recentRecords()
        return AuditRecord.holdChange(stream + log, of: feature, from: from, to: to, near: time, within: .seconds(60))
    }

    /// 8. Records a percent the controller did not write (redis/acknowledge_percent.lua); the
    /// hold when it was not recorded. A change already recorded (``Plan/Acknowledgement/alreadyRecorded``)
    /// is acknowledged without a record.
    /// With the replication when too few replicas acknowledged the write.
    private func acknowledge(
        _ acknowledgement: Plan.Acknowledgement, of feature: FeatureName, read: FeatureRead, at time: Timestamp
    ) async -> (Hold?, Replication?) {
        let keys = FeatureKeys(feature)
        let record = AuditRecord(time: time, feature: feature, change: acknowledgement.change, reason: acknowledgement.reason, by: acknowledgement.by, run: owner)
        do {
            let wait = try await redis.replicaWait(policy.replicas)
            let deadline = read.serverTime.writeDeadline()
            let (acknowledged, replication) = try await redis.evaluate(
                Scripts.acknowledgePercent,
                keys: [keys.rolloutPercent, keys.controllerPercent, keys.lastPercent, keys.lastChangeTime, keys.healthySince, AuditTrail.streamKey],
                arguments: [
                    read.preconditions.percent, acknowledgement.known?.description ?? "", time.description, String(deadline.serverMilliseconds),
                    String(AuditTrail.maxLength),
                ] + (acknowledgement.alreadyRecorded ? [] : record.scriptArguments), waitingUntil: deadline.waitUntil, thenWaiting: wait)
            if let refusal = ScriptRefusal(acknowledged) { return (Hold(refusal), nil) }
            guard acknowledged == .integer(1) else {
                return (Hold(.concurrentChange, "rollout_percent changed again (or another controller adopted the feature) while the controller looked at it"), nil)
            }
            return (nil, await noted(replication, after: acknowledgement.alreadyRecorded ? [] : [record]))
        } catch {
            return (Hold(.redisError, "Redis: \(error)"), nil)
        }
    }

    /// `replication` when the write reached too few replicas, after recording a `not replicated`
    /// note behind each of `records` in the audit stream (the change stands); nil otherwise.
    private func noted(_ replication: Replication?, after records: [AuditRecord]) async -> Replication? {
        guard let replication, !replication.isReplicated else { return nil }
        if let error = await AuditTrail(redis: redis).noteNotReplicated(records, replication) {
            logger.error("Cannot record that a change was not replicated", metadata: ["feature.name": "\(records.first?.feature.rawValue ?? "")", "error": "\(error)"])
        }
        logger.error(
            "A change reached too few replicas; it stands on the primary, and a failover before they catch up may lose it",
            metadata: ["feature.name": "\(records.first?.feature.rawValue ?? "")", "replication": "\(replication)"])
        return replication
    }

    /// 7. The change under compare-and-set (redis/apply_change.lua): written only if
    /// rollout_percent, paused, enabled and the guard are as read, and only while this run still
    /// holds the lock; the hold when it was not written, the replication when too few replicas
    /// acknowledged it.
    private func applyChange(
        _ change: Plan.Change, of feature: FeaturePolicy, read: FeatureRead, marker: ChangeMarker?
    ) async -> (Hold?, Replication?) {
        let keys = FeatureKeys(feature.feature)
        let wait: ReplicaWait
        do {
            wait = try await redis.replicaWait(policy.replicas)
        } catch {
            return (Hold(.redisError, "Redis: \(error); nothing was written"), nil)
        }
        let deadline = read.serverTime.writeDeadline()
        // The change's record, then the guard's release or the flap pause, in the order they happen.
        func record(_ what: String, _ reason: String) -> AuditRecord {
            AuditRecord(time: change.time, feature: feature.feature, change: what, reason: reason, by: "controller", run: owner)
        }
        var records = [record(change.change, change.reason)]
        if change.guardWrite == .release { records.append(guardReleaseRecord(feature, at: change.time)) }
        if let reason = change.flapPause { records.append(record("paused", reason)) }
        let script = ChangeScript(
            keys: keys, preconditions: read.preconditions, owner: owner, deadlineServerMilliseconds: deadline.serverMilliseconds, change: change,
            records: records, marker: marker)
        let outcome: ChangeScript.Outcome
        var replication: Replication?
        do {
            (outcome, replication) = try await script.run(on: redis, waitingUntil: deadline.waitUntil, thenWaiting: wait)
        } catch where error.code == .serverError {
            // Redis refused the script (an ACL without XADD, out of memory): its first writes are
            // the audit records, so a refusal writes nothing.
            return (Hold(.redisError, "Redis refused the change: \(error); nothing was written"), nil)
        } catch {
            // A timeout or a broken connection after the script was sent: it may have run before
            // its deadline (then its audit record is in the stream, and the log catches up from
            // it), never after. Look, so the report says what happened.
            let confirmed = try? await redis.pipeline([RedisCommand("GET", keys.rolloutPercent), RedisCommand("GET", keys.controllerPercent)])
            let target = change.to.description
            guard confirmed?.map(\.string) == [target, target], target != read.preconditions.percent else {
                return (Hold(.redisError, "Redis: \(error); the change was not confirmed"), nil)
            }
            logger.warning(
                "Redis failed after the change was sent; it was applied (confirmed by reading it back)",
                metadata: ["feature.name": "\(feature.feature)", "error": "\(error)"])
            outcome = .applied
        }
        switch outcome {
        case .applied: return (nil, await noted(replication, after: records))
        case .refused(let refusal): return (Hold(refusal), nil)
        case .lockLost: return (Hold(.locked, "the lock expired during the evaluation; another controller may be deciding, so nothing was written"), nil)
        case .concurrentChange: return (Hold(.concurrentChange, "a person changed the feature (or its guard) during the run; their change wins"), nil)
        }
    }

    /// What a run that changes nothing still records (redis/record_evaluation.lua, only while
    /// the run holds the lock and rollout_percent is as read): each check's streak, since when the
    /// feature is healthy, its last known good percent; then the guard's early release (true
    /// when released). A key of the wrong type holds the feature with corrupt_state.
    private func keepBooks(
        _ bookkeeping: Plan.Bookkeeping, of feature: FeaturePolicy, read: FeatureRead, at time: Timestamp
    ) async -> Result<Bool, Hold> {
        let keys = FeatureKeys(feature.feature)
        let deadline = read.serverTime.writeDeadline()
        let streaks = bookkeeping.streaks.sorted { $0.key < $1.key }.flatMap { [$0.key, String($0.value)] }
        do {
            let recorded = try await redis.evaluate(
                Scripts.recordEvaluation, keys: [keys.lock, keys.rolloutPercent, keys.streaks, keys.healthySince, keys.lastGood],
                arguments: [
                    owner, read.preconditions.percent, bookkeeping.healthy ? "1" : "0", time.description, bookkeeping.lastGood?.description ?? "",
                    String(deadline.serverMilliseconds),
                ] + streaks, waitingUntil: deadline.waitUntil)
            if let refusal = ScriptRefusal(recorded), case .wrongType = refusal { return .failure(Hold(refusal)) }
            guard recorded == .integer(1) else { return .success(false) }  // the lock or the percent moved, or too late: the next run looks again
            if let guardValue = bookkeeping.releaseGuard {
                let released = try await redis.evaluate(
                    Scripts.releaseGuard, keys: [keys.guardLock, AuditTrail.streamKey],
                    arguments: [guardValue, String(deadline.serverMilliseconds), String(AuditTrail.maxLength)] + guardReleaseRecord(feature, at: time).scriptArguments,
                    waitingUntil: deadline.waitUntil)
                return .success(released == .integer(1))
            }
        } catch {
            // Bookkeeping only: the next run recomputes it. The decision stands.
            logger.warning("Cannot record the run's bookkeeping", metadata: ["feature.name": "\(feature.feature)", "error": "\(error)"])
        }
        return .success(false)
    }

    /// The feature's report once `plan` is applied (or not): what it did, and its log lines.
    private func report(_ applied: Applied, of plan: Plan, feature: FeatureName, into report: FeatureReport) -> FeatureReport {
        var report = report
        report.verdict = plan.verdict
        report.decidedAt = plan.time
        report.notReplicated = applied.notReplicated
        if applied.changeRefused { report.verdict?.action = .hold }
        if applied.acknowledged, let acknowledgement = plan.acknowledgement {
            if acknowledgement.known != nil { report.manualChange = acknowledgement.change } else { report.adopted = true }
        }
        if applied.guardReleased {
            report.guardEvent = .released
            report.guardLock = nil
        }
        if let hold = applied.stopped { return report.held(hold) }
        guard case .change(let change) = plan.writes else { return report.held(plan.holdReason ?? .noData, plan.explanation) }
        guard !policy.dryRun else {
            report.recommended = true
            return report
        }
        report.applied = true
        logger.notice(
            "Feature \(change.direction == .rollback ? "rolled back" : "promoted")",
            metadata: ["feature.name": "\(feature)", "rollout.change": "\(change.change)", "rollout.reason": "\(plan.explanation)"])
        if change.leavesGuard { report.guardEvent = .locked }
        if let reason = change.flapPause {
            report.pausedByFlapProtection = true
            logger.error("Feature paused by flap protection", metadata: ["feature.name": "\(feature)", "rollout.reason": "\(reason)"])
        }
        return report
    }

    /// Every query of `feature` at once (the client's bulkhead bounds them), all ended by the
    /// phase's deadline, well inside the lock's TTL; the failures sorted by name.
    private func query(_ feature: FeaturePolicy, cohortWindow: Duration?, at time: Timestamp) async -> QueryAnswers {
        let deadline = budget.prometheusDeadline()
        var answers = QueryAnswers()
        await withTaskGroup(of: (FeaturePolicy.Query.Purpose, String, Result<PrometheusClient.Answer, PrometheusError>).self) { group in
            for query in feature.queries(cohortWindow: cohortWindow) {
                group.addTask { [prometheus] in (query.purpose, query.label, await answer(query, from: prometheus, at: time, deadline: deadline)) }
            }
            for await (key, label, result) in group {
                switch result {
                case .success(.value(let value)): answers.values[key] = value
                case .success(.samples(let samples)): answers.vectors[key] = samples
                case .success(.series): break  // a range query's: an evaluation sends none
                case .failure(let error): answers.failures.append("\(label): \(error)")
                }
            }
        }
        answers.failures.sort()
        return answers
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

/// Every answer of a feature's queries, by purpose, and the failures (sorted by label).
private struct QueryAnswers {
    var values: [FeaturePolicy.Query.Purpose: Double?] = [:]
    /// The vector queries' samples.
    var vectors: [FeaturePolicy.Query.Purpose: [PrometheusSample]] = [:]
    var failures: [String] = []
}

/// One query's answer: a value, or a vector's samples for a vector query. Assigned, then
/// returned after the block (no return from inside a typed-throws `do` in async code).
private func answer(
    _ query: FeaturePolicy.Query, from prometheus: PrometheusClient, at time: Timestamp, deadline: ContinuousClock.Instant
) async -> Result<PrometheusClient.Answer, PrometheusError> {
    var result: Result<PrometheusClient.Answer, PrometheusError>
    do throws(PrometheusError) {
        result = query.isVector
            ? .success(.samples(try await prometheus.samples(of: query.query, at: time, deadline: deadline)))
            : .success(.value(try await prometheus.value(of: query.query, at: time, deadline: deadline)))
    } catch {
        result = .failure(error)
    }
    return result
}

/// What `flags:<f>:last_verdict` records of `report`, decided at `time`: promote (reason
/// `healthy`), rollback (the first violated rollback check, or `forced` for an alert's), or hold
/// with its reason code. Nil for a run that failed: Redis or Prometheus unreachable, the lock
/// another controller's, or a key of the feature corrupt (that run writes nothing at all); the
/// verdict recorded before stays.
func lastVerdict(of report: FeatureReport, at time: Timestamp) -> LastVerdict? {
    if let reason = report.holdReason {
        guard ![.redisError, .promUnreachable, .locked, .corruptState].contains(reason) else { return nil }
        return LastVerdict(result: .hold, time: time, reason: reason.rawValue)
    }
    guard let verdict = report.verdict else { return nil }
    switch verdict.action {
    case .promote: return LastVerdict(result: .promote, time: time, reason: "healthy")
    case .rollback:
        let cause = verdict.checks.first { $0.status == .violated && $0.onViolation == .rollback }
        return LastVerdict(result: .rollback, time: time, reason: cause?.name ?? "forced")
    case .hold: return LastVerdict(result: .hold, time: time, reason: (verdict.holdReason ?? .noData).rawValue)
    }
}
