#if canImport(Glibc)
import Glibc
#endif
public import Logging
public import RolloutAdmin
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
        prometheus = PrometheusClient(base: policy.prometheus, timeout: policy.queryTimeout)
        auditLog = AuditLog(path: policy.auditLog)
        var hostname = [CChar](repeating: 0, count: 256)
        gethostname(&hostname, hostname.count)
        let host = String(decoding: hostname.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        owner = "\(host):\(getpid()):\(UInt64.random(in: 0...UInt64.max) % 1_000_000_000)"
    }

    /// Evaluates every feature (concurrently, queries bounded by ``maxConcurrentQueries``) and
    /// returns the report; its ``RunReport/exitCode`` is the worst across features.
    public func run() async -> RunReport {
        let started = now()
        let limiter = AsyncSemaphore(limit: maxConcurrentQueries)
        let results = await withTaskGroup(of: (Int, FeatureReport).self) { group in
            for (index, feature) in policy.features.enumerated() {
                group.addTask { (index, await evaluate(feature, limiter: limiter)) }
            }
            var results: [(Int, FeatureReport)] = []
            for await result in group { results.append(result) }
            return results.sorted { $0.0 < $1.0 }.map(\.1)
        }
        // The connection stays open for the next pass (`--every`); it closes with the controller.
        return RunReport(startedAt: started, dryRun: policy.dryRun, features: results)
    }

    private func evaluate(_ feature: FeaturePolicy, limiter: AsyncSemaphore) async -> FeatureReport {
        let lockKey = "flags:\(feature.feature):lock"
        let report = FeatureReport(feature: feature.feature)

        // 7. One controller per feature at a time. A dry run writes nothing, not even a lock.
        if !policy.dryRun {
            let lockTTL = max(Duration.seconds(60), policy.queryTimeout * 3 * 2 + .seconds(30))
            do {
                let reply = try await redis.send(
                    RedisCommand("SET", lockKey, owner, "NX", "PX", String(lockTTL.components.seconds * 1000)))
                if reply.isNull {
                    let holder = (try? await redis.send("GET", lockKey).string) ?? "another controller"
                    return report.held(.locked, "another controller (\(holder)) is deciding this feature now")
                }
            } catch {
                // The SET may have reached the server before the error: release it if it is ours.
                _ = try? await redis.evaluate(Scripts.releaseLock, keys: [lockKey], arguments: [owner])
                return report.held(.redisError, "Redis: \(error)")
            }
        }
        let result = await evaluateHoldingLock(feature, report: report, limiter: limiter)
        if !policy.dryRun {
            // Released by its owner only; the TTL frees it if this process dies first.
            _ = try? await redis.evaluate(Scripts.releaseLock, keys: [lockKey], arguments: [owner])
        }
        return result
    }

    private func evaluateHoldingLock(_ feature: FeaturePolicy, report: FeatureReport, limiter: AsyncSemaphore) async -> FeatureReport {
        var report = report
        let keys = FeatureKeys(feature.feature)

        // 1. Every key in one round trip.
        let replies: [RedisValue]
        do {
            replies = try await redis.pipeline(keys.readCommands + [RedisCommand("GET", keys.controllerPercent)])
        } catch {
            return report.held(.redisError, "Redis: \(error)")
        }
        let state: FeatureState
        switch FeatureState.read(feature.feature, from: replies[0..<4]) {
        case .success(let parsed): state = parsed
        case .failure(let invalid):
            return report.held(.corruptState, invalid.problems.map(\.message).joined(separator: " "))
        }
        var controllerPercent: RolloutPercent?
        if let text = replies[4].string {
            guard let percent = RolloutPercent(parsing: text) else {
                return report.held(.corruptState, "\(keys.controllerPercent) holds \"\(text)\", which is not a percent.")
            }
            controllerPercent = percent
        }
        let raw = replies[0].array?.map(\.string) ?? []
        let expected = (percent: raw.count > 1 ? raw[1] ?? "" : "", paused: raw.count > 3 ? raw[3] ?? "" : "", enabled: raw.first.flatMap { $0 } ?? "")
        report.state = state
        report.controllerPercent = controllerPercent

        // 2. A person's switches: no queries needed.
        if state.paused || !state.enabled {
            let verdict = decide(policy: feature, observation: Observation(state: state, controllerPercent: controllerPercent, checkValues: [:]), now: now())
            report.verdict = verdict
            return report.held(verdict.holdReason ?? .paused, verdict.explanation)
        }

        // 3. Every query at once (bounded); any failure holds the feature.
        let queries = feature.checks.map { ($0.name, $0.query) } + (feature.minRequests.map { [("min_requests", $0.query)] } ?? [])
        var values: [String: Double?] = [:]
        var failures: [String] = []
        await withTaskGroup(of: (String, Result<Double?, PrometheusError>).self) { group in
            for (name, query) in queries {
                group.addTask {
                    await limiter.acquire()
                    let result: Result<Double?, PrometheusError>
                    do throws(PrometheusError) {
                        result = .success(try await prometheus.value(of: query))
                    } catch {
                        result = .failure(error)
                    }
                    await limiter.release()
                    return (name, result)
                }
            }
            for await (name, result) in group {
                switch result {
                case .success(let value): values[name] = value
                case .failure(let error): failures.append("\(name): \(error)")
                }
            }
        }
        if !failures.isEmpty {
            report.queryErrors = failures.sorted()
            return report.held(.promUnreachable, "Prometheus could not answer: " + failures.sorted().joined(separator: "; "))
        }
        var requests: Double?? = .none
        if feature.minRequests != nil { requests = .some(values.removeValue(forKey: "min_requests") ?? nil) }

        let time = now()
        var verdict = decide(policy: feature, observation: Observation(state: state, controllerPercent: controllerPercent, checkValues: values, requests: requests), now: time)
        report.verdict = verdict
        report.requests = requests ?? nil

        // 8. A person changed the percent: record it once, and restart the dwell from now.
        if verdict.manualChangeDetected, let known = controllerPercent {
            let change = "\(known)% -> \(state.rolloutPercent)%"
            if policy.dryRun {
                record(feature.feature, "[dry-run] \(change)", "changed outside the controller; the dwell would restart now", by: "manual (detected)", at: time)
            } else {
                do {
                    let acknowledged = try await redis.evaluate(
                        Scripts.acknowledgeManualChange, keys: [keys.rolloutPercent, keys.controllerPercent, keys.lastPercent, keys.lastChangeTime],
                        arguments: [expected.percent, known.description, time.description])
                    if acknowledged == .integer(1) {
                        record(feature.feature, change, "changed outside the controller; the dwell restarts now", by: "manual (detected)", at: time)
                    } else {
                        return report.held(.concurrentChange, "rollout_percent changed again while the controller looked at it")
                    }
                } catch {
                    return report.held(.redisError, "Redis: \(error)")
                }
            }
        } else if controllerPercent == nil && !policy.dryRun {
            // First sight of this feature: remember the percent so a later hand-made change shows.
            _ = try? await redis.send("SET", keys.controllerPercent, state.rolloutPercent.description, "NX")
        }

        let target: RolloutPercent
        switch verdict.action {
        case .hold:
            return report.held(verdict.holdReason ?? .noData, verdict.explanation)
        case .promote(let to), .rollback(let to):
            target = to
        }
        let change = "\(state.rolloutPercent)% -> \(target)%"
        if policy.dryRun {
            record(feature.feature, "[dry-run] \(change)", verdict.explanation, by: "controller", at: time)
            report.recommended = true
            return report
        }
        // 7. Compare-and-set: written only if rollout_percent, paused and enabled are as read,
        // and only while this run still holds the feature's lock.
        let lockKey = "flags:\(feature.feature):lock"
        do {
            let applied = try await redis.evaluate(
                Scripts.applyChange,
                keys: [keys.rolloutPercent, keys.paused, keys.enabled, keys.lastPercent, keys.lastChangeTime, keys.controllerPercent, lockKey],
                arguments: [expected.percent, expected.paused, expected.enabled, target.description, time.description, owner])
            if applied == .integer(-1) {
                verdict.action = .hold
                report.verdict = verdict
                return report.held(.locked, "the lock expired during the evaluation; another controller may be deciding, so nothing was written")
            }
            guard applied == .integer(1) else {
                verdict.action = .hold
                report.verdict = verdict
                return report.held(.concurrentChange, "a person changed the feature during the run; their change wins")
            }
        } catch {
            // A timeout or a broken connection after the script was sent: it may have run. Look,
            // so that an applied change is never left out of the audit log.
            let confirmed = try? await redis.pipeline([RedisCommand("GET", keys.rolloutPercent), RedisCommand("GET", keys.controllerPercent)])
            let values = confirmed?.map(\.string) ?? []
            guard values.count == 2, values[0] == target.description, values[1] == target.description,
                target.description != expected.percent
            else {
                return report.held(.redisError, "Redis: \(error); the change was not confirmed")
            }
            logger.warning(
                "Redis failed after the change was sent; it was applied (confirmed by reading it back)",
                metadata: ["feature.name": "\(feature.feature)", "error": "\(error)"])
        }
        report.applied = true
        record(feature.feature, change, verdict.explanation, by: "controller", at: time)
        logger.notice(
            "Feature \(verdict.result == "rollback" ? "rolled back" : "promoted")",
            metadata: ["feature.name": "\(feature.feature)", "rollout.change": "\(change)", "rollout.reason": "\(verdict.explanation)"])
        return report
    }

    private func record(_ feature: FeatureName, _ change: String, _ reason: String, by: String, at time: Timestamp) {
        do {
            try auditLog.append(AuditLog.Entry(time: time, feature: feature, change: change, reason: reason, by: by))
        } catch {
            logger.error("Cannot write the audit log", metadata: ["error": "\(error)", "feature.name": "\(feature)"])
        }
    }
}
