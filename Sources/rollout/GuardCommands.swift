import ArgumentParser
import RolloutAdmin
import RolloutController
import RolloutGate
import RolloutRedis

struct GuardCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "guard",
        abstract: "Lock a feature against promotion, unlock it, or ask whether it is locked (for people and deploy pipelines).",
        discussion: """
            The lock is flags:<feature>:guard, a string with a TTL: it cleans itself up when the window \
            ends. The controller sets one after every rollback (guard_window) and releases that one early \
            once every check has been healthy for stability_window; it never releases an operator's lock. \
            Rollbacks are never blocked. Every lock and unlock goes to the audit log.
            """,
        subcommands: [Lock.self, Unlock.self, Status.self]
    )

    struct Lock: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "No promotion of the feature until the window ends or it is unlocked.")
        @OptionGroup var options: ConnectionOptions
        @OptionGroup var replicaOptions: ReplicaOptions
        @Argument(help: "The feature.") var feature: String
        @Option(help: ArgumentHelp("How long the lock lasts, e.g. 15m, 2h.", valueName: "duration")) var window = "15m"
        @Option(help: "Why, for the audit log and the lock's value.") var reason = ""

        func validate() throws {
            _ = try boundedDuration("--window", window, in: .milliseconds(1)...PolicyDurationRange.window.upperBound)
        }

        func run() async throws {
            let name = try featureName(feature)
            let duration = parsePolicyDuration(window) ?? .seconds(900)
            let lasts = try await options.changing(replicaOptions) { try await $0.lockGuard(name, for: duration, reason: reason) }
            switch lasts {
            case .zero: try report(options, name, "already locked with no expiry; kept")
            case duration: try report(options, name, "guard locked for \(formatDuration(duration))")
            default: try report(options, name, "guard locked for \(formatDuration(lasts)) (the longer lock already there is kept)")
            }
        }
    }

    struct Unlock: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove the feature's guard lock, whoever set it.")
        @OptionGroup var options: ConnectionOptions
        @OptionGroup var replicaOptions: ReplicaOptions
        @Argument(help: "The feature.") var feature: String
        @Option(help: "Why, for the audit log.") var reason = ""

        func run() async throws {
            let name = try featureName(feature)
            let removed = try await options.changing(replicaOptions) { try await $0.unlockGuard(name, reason: reason) }
            try report(options, name, removed == nil ? "was not locked" : "guard unlocked")
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Whether the feature is locked against promotion: exit 0 when unlocked, 1 when locked.")
        @OptionGroup var options: ConnectionOptions
        @Argument(help: "The feature.") var feature: String

        func run() async throws {
            let name = try featureName(feature)
            let lock = try await options.store().guardStatus(name)
            if options.json {
                try printJSON([
                    "feature": name.rawValue, "locked": lock != nil, "value": lock?.value as Any,
                    "origin": lock?.origin?.rawValue as Any, "remaining_ms": lock?.remaining?.wholeMilliseconds as Any,
                ])
            } else {
                print("\(name): \(lock.map(\.description) ?? "unlocked")")
            }
            if lock != nil { throw RolloutExit.failure.exit }
        }
    }
}
