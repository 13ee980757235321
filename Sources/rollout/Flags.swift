import ArgumentParser
import Foundation
import RolloutAdmin
import RolloutAudit
import RolloutGate
import RolloutRedis

struct Flags: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Read and change features in the flags:* keyspace. Every change is appended to the audit log.",
        subcommands: [
            List.self, Get.self, Init.self, SetPercent.self, Switch<Pause>.self, Switch<Resume>.self, Switch<Enable>.self,
            Switch<Disable>.self,
            InternalOnly.self, Allow.self, Deny.self, Workspace.self,
        ]
    )

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List every feature with keys in Redis (SCAN, never KEYS).")
        @OptionGroup var options: ConnectionOptions

        func run() async throws {
            let store = try options.store()
            let (features, stray) = try await store.listFeatures()
            let states = try await store.read(features)
            if options.json {
                try printJSON([
                    "features": zip(features, states).map { feature, state in describe(feature, state) },
                    "stray_keys": stray,
                ])
            } else {
                print(pad("FEATURE", 28) + pad("ENABLED", 9) + pad("PERCENT", 9) + pad("INTERNAL", 10) + pad("PAUSED", 8) + "STATE")
                for (feature, result) in zip(features, states) {
                    switch result {
                    case .success(let state):
                        print(
                            pad(feature.rawValue, 28) + pad("\(state.enabled)", 9) + pad("\(state.rolloutPercent)%", 9)
                                + pad("\(state.internalOnly)", 10) + pad("\(state.paused)", 8) + "ok")
                    case .failure(let invalid):
                        print(pad(feature.rawValue, 28) + pad("-", 9) + pad("-", 9) + pad("-", 10) + pad("-", 8) + "INVALID: \(invalid.firstKey)")
                    }
                }
                if features.isEmpty { print("(no features: create one with `rollout flags init NAME`)") }
                for key in stray { print("warning: \(key) is not a valid flags:<feature>:<key> name; the gate ignores it") }
            }
            if states.contains(where: { if case .failure = $0 { return true } else { return false } }) {
                throw CorruptStateFound(description: "Some features have invalid state: run `rollout flags get NAME` to see which key.")
            }
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Show every key of a feature, parsed, and what is invalid.")
        @OptionGroup var options: ConnectionOptions
        @Argument(help: "The feature.") var feature: String

        func run() async throws {
            let name = try featureName(feature)
            let store = try options.store()
            let raw = try await store.rawKeys(of: name)
            guard let result = try await store.read([name]).first else { return }
            if options.json {
                var document = describe(name, result)
                document["keys"] = Dictionary(uniqueKeysWithValues: raw.map { ($0.key, jsonValue($0.value)) })
                try printJSON(document)
            } else {
                print("feature \(name)")
                if raw.isEmpty { print("  (no keys: the feature is off for everyone; `rollout flags init \(name)` creates it)") }
                for (key, type, value) in raw {
                    let shown = render(value)
                    print("  \(pad(String(key.dropFirst("flags:\(name):".count)), 19))\(type == "string" ? "" : "(\(type)) ")\(shown)")
                }
                switch result {
                case .success(let state):
                    print("  state: valid; rollout \(state.rolloutPercent)% (\(state.bucketing)), \(state.enabled ? "enabled" : "KILL SWITCH ON")\(state.paused ? ", paused" : "")\(state.internalOnly ? ", internal only" : "")")
                case .failure(let invalid):
                    print("  state: INVALID, so the gate turns the feature off for everyone:")
                    for problem in invalid.problems { print("    - \(problem.message)") }
                }
            }
            if case .failure(let invalid) = result { throw CorruptStateFound(description: invalid.description) }
        }

        private func jsonValue(_ value: RedisValue) -> Any {
            switch value {
            case .array(let items): return items.map { $0.string ?? "" }
            default: return value.string ?? ""
            }
        }

        private func render(_ value: RedisValue) -> String {
            switch value {
            case .array(let items): return items.isEmpty ? "(empty)" : items.map { $0.string ?? "" }.joined(separator: ", ")
            default: return value.string ?? ""
            }
        }
    }

    struct Init: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a feature in the original system's initial state: enabled, internal only, 0%, not paused. Never overwrites a key.")
        @OptionGroup var options: ConnectionOptions
        @OptionGroup var replicaOptions: ReplicaOptions
        @Argument(help: "The feature.") var feature: String
        @Option(help: "Why, for the audit log.") var reason = "initialized"

        func run() async throws {
            let name = try featureName(feature)
            let created = try await options.changing(replicaOptions) { try await $0.initialize(name, reason: reason) }
            if options.json {
                try printJSON(["feature": name.rawValue, "created": created])
            } else if created.isEmpty {
                print("\(name) already exists; nothing was changed")
            } else {
                print("\(name) initialized: \(created.joined(separator: ", "))")
            }
        }
    }

    struct SetPercent: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "set-percent",
            abstract: "Set the rollout percent (0 to 100, at most three decimals), recording last_percent and last_change_time.")
        @OptionGroup var options: ConnectionOptions
        @OptionGroup var replicaOptions: ReplicaOptions
        @Argument(help: "The feature.") var feature: String
        @Argument(help: "The new percent.") var percentText: String
        @Option(help: "Why, for the audit log (required).") var reason: String

        func validate() throws {
            _ = try featureName(feature)
            _ = try percent(percentText, "The percent")
            if AuditLog.singleLine(reason).isEmpty { throw ValidationError("--reason must say why; it goes in the audit log.") }
        }

        func run() async throws {
            let name = try featureName(feature)
            let value = try percent(percentText, "The percent")
            let previous = try await options.changing(replicaOptions) { try await $0.setPercent(name, to: value, reason: reason) }
            if options.json {
                try printJSON(["feature": name.rawValue, "percent": value.description, "previous": previous?.description as Any])
            } else {
                print("\(name): \(previous.map { "\($0)%" } ?? "unset") -> \(value)%")
            }
        }
    }

    struct InternalOnly: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            commandName: "internal-only", abstract: "Limit the feature to internal actors (true) or open it to the rollout (false).")
        @OptionGroup var options: ConnectionOptions
        @OptionGroup var replicaOptions: ReplicaOptions
        @Argument(help: "The feature.") var feature: String
        @Argument(help: "true or false.") var value: String
        @Option(help: "Why, for the audit log.") var reason = ""

        func validate() throws {
            guard parseBool(value) != nil else { throw ValidationError("'\(value)' is not true or false.") }
        }

        func run() async throws {
            let name = try featureName(feature)
            let flag = parseBool(value) ?? true
            try await options.changing(replicaOptions) { try await $0.setInternalOnly(name, flag, reason: reason) }
            try report(options, name, "internal_only \(flag)")
        }
    }

    struct Allow: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Manage stickiness keys that are always on.", subcommands: [MembersAdd<AllowList>.self, MembersRemove<AllowList>.self])
    }

    struct Deny: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Manage stickiness keys that are always off.", subcommands: [MembersAdd<DenyList>.self, MembersRemove<DenyList>.self])
    }

    struct Workspace: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Give a workspace its own percent, overriding rollout_percent for its actors.", subcommands: [WorkspaceSet.self, WorkspaceUnset.self])
    }

    struct WorkspaceSet: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "set", abstract: "Set a workspace's percent.")
        @OptionGroup var options: ConnectionOptions
        @OptionGroup var replicaOptions: ReplicaOptions
        @Argument(help: "The feature.") var feature: String
        @Argument(help: "The workspace id.") var workspace: String
        @Argument(help: "The percent.") var percentText: String
        @Option(help: "Why, for the audit log.") var reason = ""

        func validate() throws {
            _ = try featureName(feature)
            _ = try percent(percentText, "The percent")
            if workspace.isEmpty { throw ValidationError("The workspace id cannot be empty.") }
        }

        func run() async throws {
            let name = try featureName(feature)
            let value = try percent(percentText, "The percent")
            try await options.changing(replicaOptions) { try await $0.setWorkspace(workspace, of: name, to: value, reason: reason) }
            try report(options, name, "workspace \(workspace) -> \(value)%")
        }
    }

    struct WorkspaceUnset: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "unset", abstract: "Remove a workspace's percent.")
        @OptionGroup var options: ConnectionOptions
        @OptionGroup var replicaOptions: ReplicaOptions
        @Argument(help: "The feature.") var feature: String
        @Argument(help: "The workspace id.") var workspace: String
        @Option(help: "Why, for the audit log.") var reason = ""

        func run() async throws {
            let name = try featureName(feature)
            try await options.changing(replicaOptions) { try await $0.unsetWorkspace(workspace, of: name, reason: reason) }
            try report(options, name, "workspace \(workspace) unset")
        }
    }
}

/// One of the on/off switches an operator flips: pause, resume, enable, disable.
protocol SwitchKind {
    static var name: String { get }
    static var abstract: String { get }
    /// What the command prints after the change.
    static var done: String { get }
    static func apply(_ store: FeatureStore, _ feature: FeatureName, reason: String) async throws
}

enum Pause: SwitchKind {
    static let name = "pause"
    static let abstract = "Pause: the controller leaves the feature alone (the gate keeps answering)."
    static let done = "paused"
    static func apply(_ store: FeatureStore, _ feature: FeatureName, reason: String) async throws {
        try await store.setPaused(feature, true, reason: reason)
    }
}

enum Resume: SwitchKind {
    static let name = "resume"
    static let abstract = "Resume: the controller may move the feature again."
    static let done = "resumed"
    static func apply(_ store: FeatureStore, _ feature: FeatureName, reason: String) async throws {
        try await store.setPaused(feature, false, reason: reason)
    }
}

enum Enable: SwitchKind {
    static let name = "enable"
    static let abstract = "Turn the kill switch off (enabled true)."
    static let done = "enabled"
    static func apply(_ store: FeatureStore, _ feature: FeatureName, reason: String) async throws {
        try await store.setEnabled(feature, true, reason: reason)
    }
}

enum Disable: SwitchKind {
    static let name = "disable"
    static let abstract = "Kill switch: the feature is off for everyone at once."
    static let done = "disabled (kill switch on)"
    static func apply(_ store: FeatureStore, _ feature: FeatureName, reason: String) async throws {
        try await store.setEnabled(feature, false, reason: reason)
    }
}

struct Switch<Kind: SwitchKind>: AsyncParsableCommand {
    static var configuration: CommandConfiguration { CommandConfiguration(commandName: Kind.name, abstract: Kind.abstract) }
    @OptionGroup var options: ConnectionOptions
    @OptionGroup var replicaOptions: ReplicaOptions
    @Argument(help: "The feature.") var feature: String
    @Option(help: "Why, for the audit log.") var reason = ""

    func validate() throws { _ = try featureName(feature) }

    func run() async throws {
        let name = try featureName(feature)
        try await options.changing(replicaOptions) { try await Kind.apply($0, name, reason: reason) }
        try report(options, name, Kind.done)
    }
}

protocol MemberListKind { static var list: FeatureStore.MemberList { get } }
enum AllowList: MemberListKind { static let list = FeatureStore.MemberList.allow }
enum DenyList: MemberListKind { static let list = FeatureStore.MemberList.deny }

struct MembersAdd<Kind: MemberListKind>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "add", abstract: "Add stickiness keys (ACTOR or WORKSPACE:ACTOR) to the \(Kind.list.rawValue) set.")
    }
    @OptionGroup var options: ConnectionOptions
    @OptionGroup var replicaOptions: ReplicaOptions
    @Argument(help: "The feature.") var feature: String
    @Argument(help: "Stickiness keys.") var ids: [String]
    @Option(help: "Why, for the audit log.") var reason = ""

    func validate() throws {
        _ = try featureName(feature)
        if ids.isEmpty { throw ValidationError("Give at least one id.") }
    }

    func run() async throws {
        let name = try featureName(feature)
        let added = try await options.changing(replicaOptions) { try await $0.add(ids, to: Kind.list, of: name, reason: reason) }
        try report(options, name, "\(Kind.list.rawValue) +\(added) new of \(ids.count)")
    }
}

struct MembersRemove<Kind: MemberListKind>: AsyncParsableCommand {
    static var configuration: CommandConfiguration {
        CommandConfiguration(commandName: "remove", abstract: "Remove stickiness keys from the \(Kind.list.rawValue) set.")
    }
    @OptionGroup var options: ConnectionOptions
    @OptionGroup var replicaOptions: ReplicaOptions
    @Argument(help: "The feature.") var feature: String
    @Argument(help: "Stickiness keys.") var ids: [String]
    @Option(help: "Why, for the audit log.") var reason = ""

    func validate() throws {
        _ = try featureName(feature)
        if ids.isEmpty { throw ValidationError("Give at least one id.") }
    }

    func run() async throws {
        let name = try featureName(feature)
        let removed = try await options.changing(replicaOptions) { try await $0.remove(ids, from: Kind.list, of: name, reason: reason) }
        try report(options, name, "\(Kind.list.rawValue) -\(removed) of \(ids.count)")
    }
}

func report(_ options: ConnectionOptions, _ feature: FeatureName, _ what: String) throws {
    if options.json {
        try printJSON(["feature": feature.rawValue, "change": what])
    } else {
        print("\(feature): \(what)")
    }
}

func pad(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}

/// A feature's parsed state as JSON.
func describe(_ feature: FeatureName, _ result: Result<FeatureState, InvalidFeatureState>) -> [String: Any] {
    switch result {
    case .success(let state):
        return [
            "feature": feature.rawValue, "valid": true, "enabled": state.enabled, "rollout_percent": state.rolloutPercent.description,
            "internal_only": state.internalOnly, "paused": state.paused, "bucketing": state.bucketing.rawValue,
            "last_change_time": state.lastChangeTime?.description as Any, "last_percent": state.lastPercent?.description as Any,
            "allow": state.allow.sorted(), "deny": state.deny.sorted(),
            "workspaces": state.workspaces.mapValues(\.description),
        ]
    case .failure(let invalid):
        return [
            "feature": feature.rawValue, "valid": false,
            "problems": invalid.problems.map { ["key": $0.key as Any, "message": $0.message] },
        ]
    }
}
