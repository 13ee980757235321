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
            Flags.self, Check.self, AuditCommand.self, SnapshotCommand.self, ControllerCommand.self, WatchCommand.self, GuardCommand.self, BudgetCommand.self,
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
            var command = try parseAsRoot()
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

    func store() throws -> FeatureStore {
        FeatureStore(redis: try redisClient(), auditLog: auditLog)
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
