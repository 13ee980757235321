import ArgumentParser
import Foundation
import Logging
import RolloutAdmin
import RolloutAudit
import RolloutController
import RolloutGate
import RolloutRedis

@main
struct Rollout: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rollout",
        abstract: "Operate rollout-gate feature flags in Redis.",
        discussion: """
            Exit codes: 0 success, 1 Redis or other infrastructure failure, 2 usage or invalid \
            input (an audit log that cannot be written included: nothing is changed), 3 corrupted \
            state found.
            """,
        version: "0.1.0",
        subcommands: [
            Flags.self, Check.self, AuditCommand.self, SnapshotCommand.self, ControllerCommand.self, WatchCommand.self, GuardCommand.self, BudgetCommand.self, CompareCommand.self,
            RetryCommand.self, DemoServiceCommand.self, ServeCommand.self, TokensCommand.self,
        ]
    )

    /// Parses, runs, and maps every failure to the documented exit codes (``RolloutExit``).
    static func main() async {
        // Logs go to stderr, so stdout stays the answer; ROLLOUT_LOG_LEVEL=debug shows more.
        let level = ProcessInfo.processInfo.environment["ROLLOUT_LOG_LEVEL"].flatMap { Logger.Level(rawValue: $0.lowercased()) } ?? .warning
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        // A write past the file size limit (RLIMIT_FSIZE) fails with EFBIG and is reported
        // like any failed write, instead of killing the process (SIGXFSZ's default).
        signal(SIGXFSZ, SIG_IGN)
        do {
            var command = try parseAsRoot(withEmptyActorSpelledOut(Array(CommandLine.arguments.dropFirst())))
            if var asyncCommand = command as? any AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            fail(with: error)
        }
    }
}

/// `arguments` with `--actor=` (an empty value, which ArgumentParser refuses as a missing one)
/// written `--actor ""`: the empty actor, which `rollout check` answers like any other
/// (v1 buckets it as the original Python gate does, as `anon`). Nothing after `--` is touched.
func withEmptyActorSpelledOut(_ arguments: [String]) -> [String] {
    var result: [String] = []
    result.reserveCapacity(arguments.count + 1)
    for (index, argument) in arguments.enumerated() {
        if argument == "--" {
            result += arguments[index...]
            break
        }
        if argument == "--actor=" { result += ["--actor", ""] } else { result.append(argument) }
    }
    return result
}

/// A duration option inside `range`, or a ValidationError (exit 2) naming the option and the range.
func boundedDuration(_ option: String, _ text: String, in range: ClosedRange<Duration>) throws -> Duration {
    guard let duration = parsePolicyDuration(text) else {
        throw ValidationError("\(option) \(text) is not a duration (e.g. 500ms, 30s, 15m, 1h30m, 2d).")
    }
    guard range.contains(duration) else {
        throw ValidationError("\(option) \(text) is outside the allowed \(describeRange(range)).")
    }
    return duration
}

/// `--min-replicas` and `--replica-timeout`: what each change asks of the primary's replicas.
struct ReplicaOptions: ParsableArguments {
    @Option(
        name: .customLong("min-replicas"),
        help: ArgumentHelp(
            "Replicas that must acknowledge each change (WAIT); fewer: the change stands, with a warning, and the command exits 1. Default: the policy's redis.min_replicas if any, else 1 when the primary has a replica connected, else 0.",
            valueName: "n"))
    var minReplicas: Int?

    @Option(
        name: .customLong("replica-timeout"),
        help: ArgumentHelp("How long a change waits for its replicas (1ms to 1m). Default: the policy's redis.replica_timeout, else 500ms.", valueName: "duration"))
    var timeoutText: String?

    func validate() throws {
        if let minReplicas, minReplicas < 0 { throw ValidationError("--min-replicas must be 0 or more; it was \(minReplicas).") }
        _ = try timeout()
    }

    private func timeout() throws -> Duration? {
        try timeoutText.map { try boundedDuration("--replica-timeout", $0, in: PolicyDurationRange.replicaTimeout) }
    }

    /// The options over `base` (a policy's): nil when neither option is given.
    func acknowledgement(over base: ReplicaAcknowledgement = .automatic) throws -> ReplicaAcknowledgement? {
        guard minReplicas != nil || timeoutText != nil else { return nil }
        return ReplicaAcknowledgement(minimum: minReplicas ?? base.minimum, timeout: try timeout() ?? base.timeout)
    }
}

/// Options every command shares.
struct ConnectionOptions: ParsableArguments {
    @Option(
        name: .customLong("redis-url"),
        help: ArgumentHelp(
            "Redis URL: redis://[user[:password]@]host[:port][/db], rediss://... or unix:///path. Default: $REDIS_URL, else redis://127.0.0.1:6379.",
            valueName: "url"))
    var redisURLText: String?

    @Option(name: .customLong("audit-log"), help: ArgumentHelp("Audit log path. Default: $ROLLOUT_AUDIT_LOG, else ./rollout_log.md.", valueName: "path"))
    var auditLogPath: String?

    @Flag(name: .long, help: "Print JSON for scripts instead of text.")
    var json = false

    func redisURL() throws -> RedisURL {
        let text = redisURLText ?? ProcessInfo.processInfo.environment["REDIS_URL"]
        guard let text, !text.isEmpty else { return .localDefault }
        do {
            return try RedisURL(parsing: text)
        } catch {
            throw ValidationError("--redis-url / REDIS_URL: \(error.message)")
        }
    }

    func redisClient() throws -> RedisClient {
        RedisClient(url: try redisURL())
    }

    var auditLog: AuditLog {
        AuditLog(path: auditLogPath ?? ProcessInfo.processInfo.environment["ROLLOUT_AUDIT_LOG"].flatMap { $0.isEmpty ? nil : $0 } ?? "./rollout_log.md")
    }

    /// A store for reading, or for changes each acknowledged by `replicas`.
    func store(replicas: ReplicaAcknowledgement = .automatic) throws -> FeatureStore {
        FeatureStore(redis: try redisClient(), auditLog: auditLog, replicas: replicas)
    }

    /// Runs `change` through ``store(replicas:)`` with what `replicas` (a write command's
    /// `--min-replicas` and `--replica-timeout`) asks. When fewer replicas acknowledged it than asked, the
    /// change stands (it is on the primary, recorded, with a `not replicated` note after it):
    /// this prints what changed with `"replicated": false` (JSON) or a warning on stderr (text),
    /// then exits 1 so that a scheduler or a script notices.
    func changing<Result>(_ replicas: ReplicaOptions, _ change: (FeatureStore) async throws -> Result) async throws -> Result {
        do {
            return try await change(try store(replicas: try replicas.acknowledgement() ?? .automatic))
        } catch let error as AdminError {
            guard case .notReplicated(let shortfall) = error.cause else { throw error }
            if json {
                try printJSON([
                    "changes": shortfall.changes.map { ["feature": $0.feature.rawValue, "change": $0.change] },
                    "replicated": false, "replicas_required": shortfall.replication.required,
                    "replicas_acknowledged": shortfall.replication.acknowledged, "warning": shortfall.description,
                ])
            } else {
                for record in shortfall.changes { print("\(record.feature): \(record.change)") }
                FileHandle.standardError.write(Data("warning: \(shortfall)\n".utf8))
            }
            throw RolloutExit.failure.exit
        }
    }
}

/// `--snapshot-file` (or `ROLLOUT_SNAPSHOT_FILE`): the gate's snapshot file, answered from when
/// Redis does not answer at start.
struct SnapshotFileOption: ParsableArguments {
    @Option(
        name: .customLong("snapshot-file"),
        help: ArgumentHelp(
            "The gate's snapshot file (or one `rollout snapshot save` wrote, with its .sha256), answered from when Redis does not answer at start. Default: $ROLLOUT_SNAPSHOT_FILE.",
            valueName: "path"))
    var option: String?

    /// The path given, or the environment's; nil for none.
    var path: String? {
        option ?? ProcessInfo.processInfo.environment["ROLLOUT_SNAPSHOT_FILE"].flatMap { $0.isEmpty ? nil : $0 }
    }
}

/// A feature name argument, validated before anything connects.
func featureName(_ text: String) throws -> FeatureName {
    do {
        return try FeatureName(text)
    } catch {
        throw ValidationError(error.message)
    }
}

/// A percent argument, validated before anything connects.
func percent(_ text: String, _ what: String) throws -> RolloutPercent {
    guard let value = RolloutPercent(parsing: text) else {
        throw ValidationError("\(what) '\(text)' is not a percent from 0 to 100 with at most three decimals (e.g. 10, 0.5, 37.125).")
    }
    return value
}

/// Corrupted state was found and reported (exit 3).
struct CorruptStateFound: Error, CustomStringConvertible {
    let description: String
}

/// Writes one JSON document to stdout.
func printJSON(_ value: Any) throws {
    let data = try JSONSerialization.data(withJSONObject: value, options: [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes])
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}
