import ArgumentParser
import Foundation
import RolloutAdmin
import RolloutGate

struct SnapshotCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "snapshot",
        abstract: "Save the flags keyspace to a JSON file with its SHA-256, or restore one atomically.",
        subcommands: [Save.self, Restore.self]
    )

    struct Save: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write every flags:* key (strings, sets, hashes, sorted sets, with TTLs) to FILE, and FILE.sha256.")
        @OptionGroup var options: ConnectionOptions
        @Argument(help: "The snapshot file.") var file: String
        @Option(name: .customLong("feature"), help: "Only this feature (repeatable).") var features: [String] = []

        func validate() throws { for feature in features { _ = try featureName(feature) } }

        func run() async throws {
            let names = try features.isEmpty ? nil : features.map(featureName)
            let snapshot = try await options.store().saveSnapshot(to: file, features: names)
            let featureCount = Set(snapshot.keys.compactMap { FeatureKeys.feature(ofKey: $0.key) }).count
            if options.json {
                try printJSON(["file": file, "checksum_file": file + ".sha256", "keys": snapshot.keys.count, "features": featureCount])
            } else {
                print("saved \(snapshot.keys.count) keys of \(featureCount) feature(s) to \(file) (checksum in \(file).sha256)")
            }
        }
    }

    struct Restore: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Restore FILE after checking FILE.sha256; the current state is saved first to FILE.pre-restore-TIME.json.")
        @OptionGroup var options: ConnectionOptions
        @OptionGroup var replicaOptions: ReplicaOptions
        @Argument(help: "The snapshot file.") var file: String
        @Flag(name: .long, help: "Print the difference it would make; change nothing.") var dryRun = false

        func run() async throws {
            let result = try await options.changing(replicaOptions) { try await $0.restoreSnapshot(from: file, dryRun: dryRun) }
            if options.json {
                try printJSON(["changes": result.changes, "dry_run": dryRun, "pre_restore_snapshot": result.preRestorePath as Any])
                return
            }
            if result.changes.isEmpty { print("no difference: Redis already holds this snapshot") }
            for line in result.changes { print(line) }
            if let saved = result.preRestorePath {
                print("restored \(file); the state before is in \(saved)")
            } else {
                print("dry run: nothing was changed")
            }
        }
    }
}
