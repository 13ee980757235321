import ArgumentParser
import Foundation
import Logging
import RolloutAdmin
import RolloutAudit
import RolloutController
import RolloutGate
import RolloutRedis

struct ControllerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "controller",
        abstract: "Promote and roll back features by their SLOs in Prometheus (docs/controller.md).",
        subcommands: [Run.self, Validate.self]
    )

    struct PolicyOptions: ParsableArguments {
        @Option(name: .long, help: ArgumentHelp("The policy file. Default: $ROLLOUT_CONFIG, else ./rollout.yaml.", valueName: "path"))
        var config: String?
        @Option(name: .long, help: ArgumentHelp("Apply this environment's overrides from the policy's environments: (also ROLLOUT_ENV).", valueName: "name"))
        var env: String?

        func load(dryRun: Bool = false) async throws -> ControllerPolicy {
            let environment = ProcessInfo.processInfo.environment
            let path = config ?? environment["ROLLOUT_CONFIG"].flatMap { $0.isEmpty ? nil : $0 } ?? "./rollout.yaml"
            // A file read blocks (a slow or network disk): on the file queue, not the cooperative pool.
            guard let data = await onFileQueue({ FileManager.default.contents(atPath: path) }) else {
                throw ValidationError("Cannot read the policy file \(path): set --config or ROLLOUT_CONFIG.")
            }
            var policy = try ControllerPolicy(
                yaml: String(decoding: data, as: UTF8.self), path: path, environment: environment,
                environmentName: env ?? environment["ROLLOUT_ENV"].flatMap { $0.isEmpty ? nil : $0 })
            if dryRun { policy.dryRun = true }
            return policy
        }

        /// The policy and its policy for `feature`; a feature the file does not list is a
        /// usage error naming the ones it does.
        func load(feature name: FeatureName) async throws -> (ControllerPolicy, FeaturePolicy) {
            let policy = try await load()
            guard let featurePolicy = policy.features.first(where: { $0.feature == name }) else {
                throw ValidationError(
                    "\(name) is not a feature of the policy file; its features: \(policy.features.map(\.feature.rawValue).joined(separator: ", ")).")
            }
            return (policy, featurePolicy)
        }
    }

    struct Run: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "One pass over every feature of the policy: for cron, systemd timers and CI schedules.",
            discussion: """
                Exit codes: 0 ok (changes, holds, paused), 1 Prometheus or Redis unreachable (or a change \
                fewer replicas acknowledged than --min-replicas asks: it stands, with a warning), 2 invalid \
                configuration, 3 corrupt state. Each hold carries a reason code: paused, disabled, dwell, \
                cooldown, no_data, invalid_data, insufficient_sample, insufficient_evidence, prom_unreachable, concurrent_change, locked, at_last_step, \
                check_violated, at_rollback_target, redis_error, corrupt_state, guard_locked, frozen, \
                violation_pending, adopted, invalid_policy (exit 2: a fractional step for a v1 feature). An audit log that cannot be written is exit 2 before anything \
                changes.
                """
        )
        @OptionGroup var policyOptions: PolicyOptions
        @Flag(name: .long, help: "Evaluate everything, write nothing to Redis (also ROLLOUT_DRY_RUN=true).") var dryRun = false
        @Flag(name: .long, help: "Print one JSON document instead of text.") var json = false
        @Option(name: .long, help: ArgumentHelp("Keep running, one pass every interval (e.g. 10m).", valueName: "interval"))
        var every: String?
        @OptionGroup var replicaOptions: ReplicaOptions

        func validate() throws {
            if let every { _ = try boundedDuration("--every", every, in: .seconds(1)...(.seconds(86_400))) }
        }

        func run() async throws {
            var policy = try await policyOptions.load(dryRun: dryRun)
            if let replicas = try replicaOptions.acknowledgement(over: policy.replicas) { policy.replicas = replicas }
            let logger = Logger(label: "rollout-controller")
            // Before anything changes: a change must never exist without its line in the log.
            if !policy.dryRun { try await AuditLog(path: policy.auditLog).preflight() }
            let controller = Controller(policy: policy, logger: logger)
            let telemetry = policy.pushgateway.map { Telemetry(pushgateway: $0) }
            let interval = every.flatMap(parsePolicyDuration)
            while true {
                let report = await controller.run()
                if !json {
                    // The decisions are out before any network call that reports them.
                    print(describe(report))
                    fflush(nil)
                }
                await telemetry?.push(report, logger: logger)
                let delivery = await controller.notify(report)
                if json {
                    // One document: it waits for the push and the notifications it reports on.
                    var document = render(report)
                    if let delivery { document["notifications"] = render(delivery) }
                    var network = controller.networkStatistics
                    if let telemetry { network["pushgateway"] = telemetry.guards.snapshot }
                    document["network"] = network.mapValues(render)
                    try printJSON(document)
                } else if let delivery, delivery.failed > 0 {
                    print("notifications: \(delivery.delivered) delivered, \(delivery.failed) failed (\(delivery.writtenToFallback) in the fallback file)")
                }
                guard let interval else {
                    let status = RolloutExit(of: report)
                    if status != .success { throw status.exit }
                    return
                }
                try await Task.sleep(for: interval)
            }
        }
    }

    struct Validate: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract:
                "Check a policy file; with --online, also that Prometheus accepts every query and that each feature's bucketing takes the policy's percents.")
        @OptionGroup var policyOptions: PolicyOptions
        @Flag(name: .long, help: "Also send every query to Prometheus, and read each feature's bucketing from Redis.") var online = false

        func run() async throws {
            let policy = try await policyOptions.load()
            let queries = policy.features.flatMap { feature in feature.queries(cohortWindow: .seconds(3600)).map { ("\(feature.feature).\($0.label)", $0.query) } }
            print("ok: \(policy.features.count) feature(s), \(queries.count) quer\(queries.count == 1 ? "y" : "ies")")
            guard online else { return }
            // A v1 feature takes whole percents only (what a run would hold with invalid_policy).
            let redis = RedisClient(url: policy.redis)
            defer { redis.close() }
            let states = try await FeatureStore(redis: redis, auditLog: AuditLog(path: policy.auditLog)).read(policy.features.map(\.feature))
            var unwritable = 0
            for (feature, state) in zip(policy.features, states) {
                guard case .success(let valid) = state else { continue }  // the run reports it (corrupt_state)
                for problem in feature.unwritablePercents(under: valid.bucketing) {
                    print("  \(feature.feature): \(problem)")
                    unwritable += 1
                }
            }
            let prometheus = PrometheusClient(base: policy.prometheus, timeout: policy.queryTimeout)
            var refused = 0
            var unreachable = 0
            for (name, query) in queries {
                do {
                    _ = try await prometheus.value(of: query)
                    print("  \(name): accepted")
                } catch {
                    print("  \(name): \(error)")
                    if error.code == .badQuery || error.code == .ambiguous { refused += 1 } else { unreachable += 1 }
                }
            }
            if refused > 0 || unwritable > 0 { throw RolloutExit.invalidInput.exit }
            if unreachable > 0 { throw RolloutExit.failure.exit }
        }
    }
}

/// The text report: one block per feature.
func describe(_ report: RunReport) -> String {
    var lines: [String] = []
    if report.dryRun { lines.append("dry run: nothing is written to Redis") }
    for feature in report.features {
        var head = feature.feature.rawValue
        if let state = feature.state {
            head += "  \(state.rolloutPercent)%"
            if state.paused { head += " paused" }
            if !state.enabled { head += " disabled" }
        }
        if let verdict = feature.verdict {
            for check in verdict.checks {
                head += "  \(check.name)=\(check.value.map { format($0) } ?? "-") \(check.status.rawValue)"
            }
        }
        if let requests = feature.requests { head += "  requests=\(format(requests))" }
        lines.append(head)
        if let reason = feature.holdReason {
            lines.append("  -> hold [\(reason.rawValue)]: \(feature.explanation)")
        } else if let verdict = feature.verdict {
            let verb = report.dryRun ? "would \(verdict.result)" : verdict.result
            lines.append("  -> \(verb): \(verdict.explanation)")
        }
        if let alerts = feature.verdict?.alerts, !alerts.isEmpty {
            lines.append("  alert: \(alerts.joined(separator: ", ")) violated")
        }
        switch feature.guardEvent {
        case .locked?: lines.append("  guard: locked against promotion after the rollback")
        case .released?: lines.append("  guard: released, every check healthy for the stability window")
        case nil: break
        }
        if feature.pausedByFlapProtection { lines.append("  PAUSED by flap protection: too many rollbacks within an hour; a person must look") }
        if feature.adopted { lines.append("  adopted: first sight of this feature; its percent is recorded and the dwell starts now") }
        if let replication = feature.notReplicated {
            lines.append("  WARNING not replicated: \(replication); the change stands on the primary, a failover before the replicas catch up may lose it")
        }
    }
    if !report.auditRecordsCaughtUp.isEmpty {
        lines.append("audit log: \(report.auditRecordsCaughtUp.count) record(s) of earlier runs written now (they had been recorded in Redis only):")
        for record in report.auditRecordsCaughtUp { lines.append("  \(record)") }
    }
    if let error = report.auditLogError { lines.append("audit log NOT written: \(error)") }
    return lines.joined(separator: "\n")
}

/// What the calls to one endpoint did.
func render(_ statistics: CallStatistics) -> [String: Any] {
    [
        "calls": statistics.calls, "attempts": statistics.attempts, "retries": statistics.retries, "short_circuited": statistics.shortCircuited,
        "failures": statistics.failures, "breaker": statistics.breaker.rawValue, "time_ms": statistics.time.wholeMilliseconds,
    ]
}

/// What the notifications of a run did, per channel.
func render(_ delivery: DeliveryReport) -> [String: Any] {
    [
        "delivered": delivery.delivered, "failed": delivery.failed, "written_to_fallback": delivery.writtenToFallback, "lost": delivery.lost,
        "elapsed_ms": delivery.elapsed.wholeMilliseconds,
        "channels": delivery.channels.map {
            [
                "channel": $0.channel, "type": $0.format.rawValue, "delivered": $0.delivered, "failed": $0.failed, "attempts": $0.attempts,
                "retries": $0.retries, "elapsed_ms": $0.elapsed.wholeMilliseconds, "errors": $0.errors,
            ] as [String: Any]
        },
    ]
}

/// The JSON report.
func render(_ report: RunReport) -> [String: Any] {
    [
        "started_at": report.startedAt.description, "dry_run": report.dryRun, "exit_code": Int(RolloutExit(of: report).rawValue), "status": report.status,
        "audit_records_caught_up": report.auditRecordsCaughtUp.map(\.description), "audit_log_error": report.auditLogError as Any,
        "features": report.features.map { feature -> [String: Any] in
            var item: [String: Any] = [
                "feature": feature.feature.rawValue, "decision": feature.result, "applied": feature.applied,
                "explanation": feature.explanation.isEmpty ? (feature.verdict?.explanation ?? "") : feature.explanation,
                "reason": feature.holdReason?.rawValue as Any, "from": feature.state?.rolloutPercent.description as Any,
                "to": feature.targetPercent?.description as Any,
            ]
            if let state = feature.state {
                item["state"] = [
                    "rollout_percent": state.rolloutPercent.description, "paused": state.paused, "enabled": state.enabled,
                    "last_change_time": state.lastChangeTime?.description as Any, "last_percent": state.lastPercent?.description as Any,
                    "controller_percent": feature.controllerPercent?.description as Any,
                ]
            }
            if let verdict = feature.verdict {
                item["checks"] = verdict.checks.map {
                    [
                        "name": $0.name, "value": $0.value as Any, "status": $0.status.rawValue, "on_violation": $0.onViolation.rawValue,
                        "limit": $0.limit, "streak": $0.streak, "consecutive": $0.consecutive,
                    ]
                }
                item["alerts"] = verdict.alerts
                item["manual_change_detected"] = verdict.manualChangeDetected
                item["healthy"] = verdict.healthy
                item["frozen"] = verdict.freezeWindow?.description as Any
                item["new_last_good"] = verdict.newLastGood?.description as Any
            }
            item["guard"] = feature.guardLock.map { ["value": $0.value, "remaining_ms": $0.remaining.map(\.wholeMilliseconds) as Any] } as Any
            item["guard_event"] = feature.guardEvent?.rawValue as Any
            item["paused_by_flap_protection"] = feature.pausedByFlapProtection
            item["adopted"] = feature.adopted
            // Only a write that asked replicas to acknowledge it says whether they did.
            if let replication = feature.notReplicated {
                item["replicated"] = false
                item["replication"] = ["required": replication.required, "acknowledged": replication.acknowledged, "detail": replication.description]
            }
            if let requests = feature.requests { item["requests"] = requests }
            if !feature.queryErrors.isEmpty { item["query_errors"] = feature.queryErrors }
            return item
        },
    ]
}
