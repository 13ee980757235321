import ArgumentParser
import RolloutAdmin
import RolloutAudit

struct AuditCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "The audit trail: records in the Redis stream rollout:audit, projected to the Markdown audit log.",
        subcommands: [Sync.self]
    )

    struct Sync: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Write to the audit log every record of rollout:audit it does not have yet (every rollout command also does).")
        @OptionGroup var options: ConnectionOptions

        func run() async throws {
            let store = try options.store()
            let written = try await store.syncAuditLog()
            if options.json {
                try printJSON(["audit_log": store.auditLog.path, "written": written.map(\.description)])
            } else {
                print("\(store.auditLog.path): \(written.count) record\(written.count == 1 ? "" : "s") written")
                for record in written { print("  \(record)") }
            }
        }
    }
}
