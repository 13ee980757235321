public import RolloutGate
public import RolloutRedis
import Yams

/// The controller's policy file (`rollout.yaml`), parsed and checked as a whole before
/// anything connects. The schema is a contract: keys may be added, never renamed.
public struct ControllerPolicy: Sendable {
    /// Prometheus's base URL (`PROMETHEUS_BASE_URL` overrides).
    public var prometheus: HTTPEndpoint
    /// Redis (`REDIS_URL` overrides).
    public var redis: RedisURL
    /// How many replicas must acknowledge each change (`redis.min_replicas`, `redis.replica_timeout`).
    public var replicas: ReplicaAcknowledgement = .automatic
    /// The Pushgateway, if telemetry is wanted (`PUSHGATEWAY_URL` overrides).
    public var pushgateway: HTTPEndpoint?
    /// The Markdown audit log (`ROLLOUT_AUDIT_LOG` overrides).
    public var auditLog: String
    /// How long one Prometheus query may take, each attempt.
    public var queryTimeout: Duration
    /// Evaluate everything, write nothing to Redis (`ROLLOUT_DRY_RUN=true` or `--dry-run`).
    public var dryRun: Bool
    /// The features, in file order.
    public var features: [FeaturePolicy]
    /// Where events are sent (`notifications:`); nil when the file has no such section.
    public var notifications: NotificationPolicy?

    /// Parses `yaml` (from `path`, for messages) with environment overrides. Every problem
    /// is collected, each naming its field.
    /// The environment picked with `--env` (`ROLLOUT_ENV`), nil for the base settings.
    public var environmentName: String?

    /// Parses `yaml` (from `path`, for messages) with environment-variable overrides, and with
    /// the overrides of `environmentName` (`environments:` at the top and in each feature)
    /// merged over the base settings. Every problem is collected, each naming its field.
    public init(
        yaml: String, path: String = "rollout.yaml", environment: [String: String] = [:], environmentName: String? = nil
    ) throws(PolicyError) {
        self.environmentName = environmentName
        var root: Node
        do {
            // Every value is read as its text and parsed here (NodeReader), so no scalar needs
            // YAML's implicit types: the basic resolver skips the regular expressions that
            // resolving them costs for every scalar (a tenth of a 1,000-feature run's CPU).
            guard let node = try Yams.compose(yaml: yaml, .basic) else { throw PolicyError(path, ["the file is empty"]) }
            root = node
        } catch let error as PolicyError {
            throw error
        } catch {
            throw PolicyError(path, ["it is not valid YAML: \(error)"])
        }
        var reader = NodeReader()
        let knownTop: Set<String> = [
            "prometheus", "redis", "pushgateway", "audit_log", "query_timeout", "features", "freeze", "environments", "notifications",
        ]
        let environments = EnvironmentOverrides(root: root, name: environmentName, reader: &reader)
        root = environments.top(root)
        let top = reader.mapping(root, at: "", known: knownTop)

        let prometheusText = environment["PROMETHEUS_BASE_URL"].nonEmpty ?? top?["prometheus"].flatMap { reader.string($0, at: "prometheus") }
        if let prometheusText {
            prometheus = reader.endpoint(prometheusText, at: environment["PROMETHEUS_BASE_URL"].nonEmpty == nil ? "prometheus" : "PROMETHEUS_BASE_URL")
                ?? HTTPEndpoint.placeholder
        } else {
            reader.fail("prometheus", "is required: the base URL of Prometheus, e.g. http://127.0.0.1:9090")
            prometheus = .placeholder
        }
        // `redis:` is the URL, or a mapping of `url`, `min_replicas` and `replica_timeout`.
        var redisNode = top?["redis"]
        var redisField = "redis"
        if let node = redisNode, node.mapping != nil {
            let redisMapping = reader.mapping(node, at: "redis", known: ["url", "min_replicas", "replica_timeout"]) ?? [:]
            redisNode = redisMapping["url"]
            redisField = "redis.url"
            replicas = ReplicaAcknowledgement(
                minimum: redisMapping["min_replicas"].flatMap { reader.count($0, at: "redis.min_replicas", minimum: 0, maximum: 100) },
                timeout: redisMapping["replica_timeout"].flatMap {
                    reader.duration($0, at: "redis.replica_timeout", in: PolicyDurationRange.replicaTimeout)
                } ?? ReplicaAcknowledgement.defaultTimeout)
        }
        let redisText = environment["REDIS_URL"].nonEmpty ?? redisNode.flatMap { reader.string($0, at: redisField) }
        redis = .localDefault
        if let redisText {
            do {
                redis = try RedisURL(parsing: redisText)
            } catch {
                reader.fail(environment["REDIS_URL"].nonEmpty == nil ? redisField : "REDIS_URL", error.message)
            }
        }
        if let text = environment["PUSHGATEWAY_URL"].nonEmpty ?? top?["pushgateway"].flatMap({ reader.string($0, at: "pushgateway") }) {
            pushgateway = reader.endpoint(text, at: environment["PUSHGATEWAY_URL"].nonEmpty == nil ? "pushgateway" : "PUSHGATEWAY_URL")
        } else {
            pushgateway = nil
        }
        auditLog = environment["ROLLOUT_AUDIT_LOG"].nonEmpty ?? top?["audit_log"].flatMap { reader.string($0, at: "audit_log") } ?? "./rollout_log.md"
        queryTimeout = top?["query_timeout"].flatMap { reader.duration($0, at: "query_timeout", in: PolicyDurationRange.timeout) } ?? .seconds(10)
        notifications = top?["notifications"].flatMap { NotificationPolicy($0, environment: environment, reader: &reader) }
        if let flag = environment["ROLLOUT_DRY_RUN"].nonEmpty {
            guard let value = parseBool(flag) else {
                reader.fail("ROLLOUT_DRY_RUN", "is \"\(flag)\"; write true or false")
                dryRun = true
                features = []
                throw PolicyError(path, reader.problems)
            }
            dryRun = value
        } else {
            dryRun = false
        }

        let freeze = top?["freeze"].flatMap { reader.freezeWindows($0, at: "freeze") } ?? []
        features = []
        if let featuresNode = top?["features"], let mapping = reader.pairs(featuresNode, at: "features") {
            for (key, value) in mapping {
                guard let name = reader.string(key, at: "features") else { continue }
                do {
                    let feature = try FeatureName(name)
                    let node = environments.feature(name, value, reader: &reader)
                    if var policy = FeaturePolicy(node, feature: feature, reader: &reader) {
                        policy.freeze = freeze + policy.freeze
                        features.append(policy)
                    }
                } catch {
                    reader.fail("features.\(name)", error.message)
                }
            }
            if mapping.isEmpty { reader.fail("features", "lists no feature") }
        } else if top?["features"] == nil {
            reader.fail("features", "is required: a mapping of feature name to its policy")
        }
        if !reader.problems.isEmpty { throw PolicyError(path, reader.problems) }
    }
}

/// One feature's rollout policy.
public struct FeaturePolicy: Sendable, Hashable {
    /// The feature.
    public var feature: FeatureName
    /// The percents to move through, ascending; 0 is the implicit start.
    public var steps: [RolloutPercent]
    /// The minimum time between promotions.
    public var dwell: Duration
    /// The minimum time after a rollback before the next promotion.
    public var cooldownAfterRollback: Duration
    /// Where a rollback goes.
    public var rollbackTo: RollbackTarget
    /// No promotion unless this query shows enough traffic.
    public var minRequests: MinRequests?
    /// The SLO checks, all run for every decision.
    public var checks: [Check]
    /// The error-budget checks (`type: burn_rate`), all run for every decision.
    public var burnRateChecks: [BurnRateCheck]
    /// The cohort comparisons (`type: cohort`), all run for every decision.
    public var cohortChecks: [CohortCheck]
    /// After a rollback, no promotion for this long (`flags:<f>:guard`, a key with a TTL).
    public var guardWindow: Duration
    /// The guard is released early once every check has had data and been healthy this long.
    public var stabilityWindow: Duration
    /// At this many rollbacks within an hour the feature is paused for a person; 0 never pauses.
    public var maxRollbacksPerHour: Int
    /// When promotions wait (the file's top-level windows, then the feature's own).
    public var freeze: [FreezeWindow]

    /// Where a rollback goes; never above the current percent.
    public enum RollbackTarget: Sendable, Hashable, CustomStringConvertible {
        /// A fixed percent (`rollback_to: 10`): min(that, current).
        case percent(RolloutPercent)
        /// The largest step below the current percent, or 0.
        case previousStep
        /// 0%.
        case zero
        /// The highest percent that stayed healthy through a full dwell (`flags:<f>:last_good`),
        /// below the current one; 0 when none is recorded.
        case lastGood

        public var description: String {
            switch self {
            case .percent(let percent): return "\(percent)"
            case .previousStep: return "previous_step"
            case .zero: return "zero"
            case .lastGood: return "last_good"
            }
        }
    }

    /// A traffic floor for promotions.
    public struct MinRequests: Sendable, Hashable {
        /// The PromQL query giving the traffic.
        public var query: String
        /// The least value that counts as enough.
        public var atLeast: Double
    }

    /// One SLO check.
    public struct Check: Sendable, Hashable {
        /// Its name in output, JSON and telemetry.
        public var name: String
        /// The PromQL query; its single value is compared.
        public var query: String
        /// Violated when the value is above this.
        public var max: Double?
        /// Violated when the value is below this.
        public var min: Double?
        /// What a violation does.
        public var onViolation: Action
        /// A violation acts only after this many consecutive violating runs (counted in Redis).
        public var consecutive: Int

        /// What a violation does.
        public enum Action: String, Sendable, Hashable {
            /// Roll back at once.
            case rollback
            /// No promotion while violated.
            case hold
            /// Report only.
            case alert
        }

        /// Whether `value` breaks the bounds.
        public func isViolated(by value: Double) -> Bool {
            if let max, value > max { return true }
            if let min, value < min { return true }
            return false
        }

        init?(_ item: Node, at place: String, reader: inout NodeReader) {
            guard let check = reader.mapping(item, at: place, known: ["name", "type", "query", "max", "min", "on_violation", "consecutive"])
            else { return nil }
            let problemsBefore = reader.problems.count
            let name = check["name"].flatMap { reader.string($0, at: "\(place).name") }
            let query = check["query"].flatMap { reader.query($0, at: "\(place).query") }
            max = check["max"].flatMap { reader.number($0, at: "\(place).max") }
            min = check["min"].flatMap { reader.number($0, at: "\(place).min") }
            onViolation = check["on_violation"].flatMap { reader.action($0, at: "\(place).on_violation") } ?? .rollback
            consecutive = check["consecutive"].flatMap { reader.count($0, at: "\(place).consecutive", minimum: 1) } ?? 1
            if check["name"] == nil { reader.fail("\(place).name", "is required") }
            if check["query"] == nil { reader.fail("\(place).query", "is required") }
            if max == nil && min == nil && check["max"] == nil && check["min"] == nil {
                reader.fail(place, "needs max: or min: (or both): the bound that counts as a violation")
            }
            if let max, let min, min > max { reader.fail(place, "has min \(min) above max \(max): nothing could pass") }
            guard let name, let query, reader.problems.count == problemsBefore else { return nil }
            self.name = name
            self.query = query
        }
    }

    init?(_ node: Node, feature: FeatureName, reader: inout NodeReader) {
        let at = "features.\(feature)"
        guard
            let mapping = reader.mapping(
                node, at: at,
                known: [
                    "steps", "dwell", "cooldown_after_rollback", "rollback_to", "min_requests", "checks", "guard_window", "stability_window",
                    "max_rollbacks_per_hour", "freeze", "environments",
                ])
        else { return nil }
        self.feature = feature
        let problemsBefore = reader.problems.count

        steps = []
        if let stepsNode = mapping["steps"], let sequence = reader.sequence(stepsNode, at: "\(at).steps") {
            for (index, item) in sequence.enumerated() {
                if let percent = reader.percent(item, at: "\(at).steps[\(index)]") {
                    if percent == .zero {
                        reader.fail("\(at).steps[\(index)]", "is 0; 0 is the implicit start, list only the percents to move to")
                    } else if let last = steps.last, percent <= last {
                        reader.fail("\(at).steps[\(index)]", "is \(percent), not above the step before it (\(last)); steps must ascend")
                    }
                    steps.append(percent)
                }
            }
            if sequence.isEmpty { reader.fail("\(at).steps", "is empty; list at least one percent, e.g. [10, 50, 100]") }
        } else if mapping["steps"] == nil {
            reader.fail("\(at).steps", "is required, e.g. [10, 50, 100]")
        }
        dwell = mapping["dwell"].flatMap { reader.duration($0, at: "\(at).dwell", in: PolicyDurationRange.wait) } ?? .seconds(15 * 60)
        cooldownAfterRollback =
            mapping["cooldown_after_rollback"].flatMap { reader.duration($0, at: "\(at).cooldown_after_rollback", in: PolicyDurationRange.wait) }
            ?? .seconds(3600)
        rollbackTo = .previousStep
        if let node = mapping["rollback_to"], let text = reader.string(node, at: "\(at).rollback_to") {
            switch text {
            case "previous_step": rollbackTo = .previousStep
            case "zero": rollbackTo = .zero
            case "last_good": rollbackTo = .lastGood
            default:
                if let percent = RolloutPercent(parsing: text) {
                    rollbackTo = .percent(percent)
                } else {
                    reader.fail("\(at).rollback_to", "is \"\(text)\"; write a percent (e.g. 10), previous_step, last_good or zero")
                }
            }
        }
        minRequests = nil
        if let node = mapping["min_requests"], let floor = reader.mapping(node, at: "\(at).min_requests", known: ["query", "at_least"]) {
            let query = floor["query"].flatMap { reader.query($0, at: "\(at).min_requests.query") }
            let atLeast = floor["at_least"].flatMap { reader.number($0, at: "\(at).min_requests.at_least") }
            if floor["query"] == nil { reader.fail("\(at).min_requests.query", "is required") }
            if floor["at_least"] == nil { reader.fail("\(at).min_requests.at_least", "is required") }
            if let query, let atLeast { minRequests = MinRequests(query: query, atLeast: atLeast) }
        }
        checks = []
        burnRateChecks = []
        cohortChecks = []
        if let node = mapping["checks"], let sequence = reader.sequence(node, at: "\(at).checks") {
            var names = Set<String>()
            for (index, item) in sequence.enumerated() {
                let place = "\(at).checks[\(index)]"
                guard let type = item.mapping?["type"].flatMap({ reader.string($0, at: "\(place).type") }) ?? (item.mapping == nil ? nil : "threshold")
                else {
                    _ = reader.mapping(item, at: place, known: nil)
                    continue
                }
                let name = item.mapping?["name"].flatMap { reader.string($0, at: "\(place).name") }
                if let name, !names.insert(name).inserted { reader.fail("\(place).name", "\"\(name)\" is used twice in \(at)") }
                switch type {
                case "threshold":
                    if let check = Check(item, at: place, reader: &reader) { checks.append(check) }
                case "burn_rate":
                    if let check = BurnRateCheck(item, at: place, reader: &reader) { burnRateChecks.append(check) }
                case "cohort":
                    if let check = CohortCheck(item, at: place, feature: feature, reader: &reader) { cohortChecks.append(check) }
                default:
                    reader.fail("\(place).type", "is \"\(type)\"; write threshold (the default), burn_rate or cohort")
                }
            }
            if sequence.isEmpty { reader.fail("\(at).checks", "is empty: without a check the controller has no evidence and never promotes") }
        } else if mapping["checks"] == nil {
            reader.fail("\(at).checks", "is required: without a check the controller has no evidence and never promotes")
        }
        guardWindow = mapping["guard_window"].flatMap { reader.duration($0, at: "\(at).guard_window", in: PolicyDurationRange.window) } ?? .seconds(15 * 60)
        stabilityWindow =
            mapping["stability_window"].flatMap { reader.duration($0, at: "\(at).stability_window", in: PolicyDurationRange.window) } ?? .seconds(15 * 60)
        maxRollbacksPerHour = 3
        if let node = mapping["max_rollbacks_per_hour"], let count = reader.count(node, at: "\(at).max_rollbacks_per_hour", minimum: 0) {
            maxRollbacksPerHour = count
        }
        freeze = mapping["freeze"].flatMap { reader.freezeWindows($0, at: "\(at).freeze") } ?? []
        // Each check outcome is named once: threshold checks by name, burn-rate pairs as name[long/short].
        var outcomes = Set<String>()
        let outcomeNames =
            checks.map(\.name) + burnRateChecks.flatMap { check in check.windows.map(check.outcomeName) } + cohortChecks.map(\.name)
        for name in outcomeNames where !outcomes.insert(name).inserted {
            reader.fail("\(at).checks", "name \(name) twice: two checks or two window pairs with the same windows; each must be distinct")
        }
        if reader.problems.count > problemsBefore { return nil }
    }

    /// Why the percents this policy may write for its feature (each step and a `rollback_to`
    /// percent) cannot be written under `scheme`, the feature's bucketing
    /// (``BucketingScheme/checkWritable(_:for:as:)``); empty when all can. The controller
    /// holds a feature with ``Verdict/HoldReason/invalidPolicy`` before deciding anything.
    public func unwritablePercents(under scheme: BucketingScheme) -> [String] {
        var named = steps.enumerated().map { ("features.\(feature).steps[\($0.offset)]", $0.element) }
        if case .percent(let percent) = rollbackTo { named.append(("features.\(feature).rollback_to", percent)) }
        return named.compactMap { field, percent -> String? in
            do throws(KeyspaceError) {
                try scheme.checkWritable(percent, for: feature, as: field)
                return nil
            } catch {
                return error.message
            }
        }
    }

    /// The step after `current`: the smallest step above it; nil at or above the last.
    public func nextStep(after current: RolloutPercent) -> RolloutPercent? {
        steps.first { $0 > current }
    }

    /// Where a rollback from `current` goes; never above `current`. `lastGood` is the recorded
    /// last known good percent, used by `rollback_to: last_good` when it is below `current`.
    public func rollbackTarget(from current: RolloutPercent, lastGood: RolloutPercent? = nil) -> RolloutPercent {
        switch rollbackTo {
        case .zero: return .zero
        case .percent(let percent): return min(percent, current)
        case .previousStep: return steps.last { $0 < current } ?? .zero
        case .lastGood:
            // The recorded percent, when below the current one; when the current one is the
            // recorded one (it was good, and fails now), the step below it, which was promoted
            // from after its own healthy dwell.
            if let lastGood, lastGood < current { return lastGood }
            return steps.last { $0 < current && $0 <= (lastGood ?? .zero) } ?? .zero
        }
    }

    /// One PromQL query the feature's evaluation sends, and what its answer is for.
    public struct Query: Sendable, Hashable {
        /// What the answer is for.
        public enum Purpose: Sendable, Hashable {
            /// A threshold check, by name.
            case check(String)
            /// One window of a burn-rate check: its error ratio.
            case window(check: String, Duration)
            /// The traffic floor.
            case minRequests
            /// One of a cohort check's series for a cohort: its failures or requests, or its
            /// histogram's count, sum or buckets (the one vector query).
            case cohort(check: String, Cohort, CohortCheck.Series)
        }

        /// What the answer is for; keys the answers, so no check name can collide with another query.
        public let purpose: Purpose
        /// Its name in messages: `error_rate`, `errors[5m]`, `min_requests`.
        public let label: String
        /// The PromQL.
        public let query: String

        /// Its answer is a vector of labelled samples (a histogram's buckets), not one value.
        public var isVector: Bool {
            if case .cohort(_, _, .buckets) = purpose { true } else { false }
        }
    }

    /// Every query an evaluation sends: the threshold checks, each window of each burn-rate
    /// check once, the traffic floor, and each cohort check's series per cohort over `cohortWindow`
    /// (the time since the feature's last change; nil sends none: no change recorded yet).
    public func queries(cohortWindow: Duration?) -> [Query] {
        var queries = checks.map { Query(purpose: .check($0.name), label: $0.name, query: $0.query) }
        if let cohortWindow {
            for check in cohortChecks {
                for (cohort, series, query) in check.queries(window: cohortWindow) {
                    queries.append(
                        Query(purpose: .cohort(check: check.name, cohort, series), label: "\(check.name)[\(cohort) \(series.rawValue)]", query: query))
                }
            }
        }
        for check in burnRateChecks {
            for window in check.distinctWindows {
                queries.append(
                    Query(purpose: .window(check: check.name, window), label: "\(check.name)[\(formatDuration(window))]", query: check.query(window: window)))
            }
        }
        if let floor = minRequests { queries.append(Query(purpose: .minRequests, label: "min_requests", query: floor.query)) }
        return queries
    }

    /// The freeze window `time` falls in, if any: promotions wait, rollbacks do not.
    public func freezeWindow(at time: Timestamp) -> FreezeWindow? {
        freeze.first { $0.contains(time) }
    }
}

/// An HTTP(S) base URL, checked: scheme, host, optional port and path prefix.
public struct HTTPEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// The URL as given, without a trailing slash.
    public let url: String

    static let placeholder = HTTPEndpoint(checked: "http://127.0.0.1")

    private init(checked: String) { url = checked }

    /// Checks `text`: an http:// or https:// URL with a host and no credentials, else why not.
    public static func parse(_ text: String) -> Result<HTTPEndpoint, EndpointError> {
        // The text is never echoed: a URL that cannot be parsed may carry credentials anywhere.
        let trimmed = text.trimmingSpaces()
        guard trimmed.hasPrefix("http://") || trimmed.hasPrefix("https://") else {
            return .failure(EndpointError(.notHTTP, "is not an http:// or https:// URL; write the base URL with its scheme, e.g. http://127.0.0.1:9090"))
        }
        let rest = trimmed.drop { $0 != "/" }.dropFirst(2)
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        if authority.contains("@") || rest.contains("@") {
            return .failure(
                EndpointError(.carriesCredentials, "carries credentials (user:password@); remove them from the URL and put them in the environment"))
        }
        guard let host = authority.split(separator: ":").first, !host.isEmpty, !authority.hasPrefix(":") else {
            return .failure(EndpointError(.noHost, "has no host; write one after the scheme, e.g. http://prometheus.internal:9090"))
        }
        var url = trimmed
        while url.hasSuffix("/") { url.removeLast() }
        return .success(HTTPEndpoint(checked: url))
    }

    public var description: String { url }
}

/// Why a text is not an ``HTTPEndpoint``. The message never repeats the text (it may hold a
/// password) and says what to write instead; it follows the field it is about
/// (`prometheus: is not an http:// ...`).
public struct EndpointError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong with the URL.
    public enum Code: String, Sendable, Hashable {
        /// Not http:// or https://.
        case notHTTP = "not_http"
        /// `user:password@` in the URL.
        case carriesCredentials = "carries_credentials"
        /// Nothing between the scheme and the port or path.
        case noHost = "no_host"
    }

    /// What is wrong.
    public let code: Code
    /// What is wrong and what to write instead.
    public let message: String

    init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}

/// An invalid policy file: every problem, each naming its field.
public struct PolicyError: Error, Sendable, CustomStringConvertible {
    /// The file.
    public let path: String
    /// One line per problem: `features.google.dwell: "15 minutes" is not a duration...`.
    public let problems: [String]

    init(_ path: String, _ problems: [String]) {
        self.path = path
        self.problems = problems
    }

    public var description: String {
        "The policy file \(path) is not valid; nothing was changed:\n" + problems.map { "  - \($0)" }.joined(separator: "\n")
    }
}

/// Reads a YAML node tree, collecting problems with their field paths and line numbers.
struct NodeReader {
    var problems: [String] = []

    mutating func fail(_ field: String, _ message: String, _ node: Node? = nil) {
        let line = node?.mark.map { " (line \($0.line))" } ?? ""
        problems.append(field.isEmpty ? message : "\(field)\(line): \(message)")
    }

    mutating func mapping(_ node: Node, at field: String, known: Set<String>?) -> [String: Node]? {
        guard let mapping = node.mapping else {
            fail(field.isEmpty ? "the file" : field, "must be a mapping of keys to values", node)
            return nil
        }
        var result: [String: Node] = [:]
        for (key, value) in mapping {
            guard let name = key.scalar?.string else {
                fail(field, "has a key that is not text", key)
                continue
            }
            if let known, !known.contains(name) {
                fail(field.isEmpty ? name : "\(field).\(name)", "is not a known key; known: \(known.sorted().joined(separator: ", "))", key)
                continue
            }
            result[name] = value
        }
        return result
    }

    mutating func pairs(_ node: Node, at field: String) -> [(key: Node, value: Node)]? {
        guard let mapping = node.mapping else {
            fail(field, "must be a mapping", node)
            return nil
        }
        return mapping.map { ($0.key, $0.value) }
    }

    mutating func sequence(_ node: Node, at field: String) -> [Node]? {
        guard let sequence = node.sequence else {
            fail(field, "must be a list, e.g. [10, 50, 100]", node)
            return nil
        }
        return Array(sequence)
    }

    mutating func string(_ node: Node, at field: String) -> String? {
        guard let scalar = node.scalar else {
            fail(field, "must be a single value", node)
            return nil
        }
        return scalar.string
    }

    mutating func query(_ node: Node, at field: String) -> String? {
        guard let text = string(node, at: field) else { return nil }
        if text.trimmingSpaces().isEmpty {
            fail(field, "is empty; write a PromQL query", node)
            return nil
        }
        return text
    }

    mutating func number(_ node: Node, at field: String) -> Double? {
        guard let text = string(node, at: field) else { return nil }
        guard let value = Double(text.trimmingSpaces()), value.isFinite else {
            fail(field, "is \"\(text)\", not a finite number", node)
            return nil
        }
        return value
    }

    mutating func percent(_ node: Node, at field: String) -> RolloutPercent? {
        guard let text = string(node, at: field) else { return nil }
        guard let percent = RolloutPercent(parsing: text) else {
            fail(field, "is \"\(text)\", not a percent from 0 to 100 with at most three decimals", node)
            return nil
        }
        return percent
    }

    /// A duration inside `range` (see ``PolicyDurationRange``); the message names the range.
    mutating func duration(_ node: Node, at field: String, in range: ClosedRange<Duration>) -> Duration? {
        guard let text = string(node, at: field) else { return nil }
        guard let duration = parsePolicyDuration(text) else {
            fail(field, "is \"\(text)\", not a duration; write e.g. 30s, 15m, 1h or 1h30m", node)
            return nil
        }
        guard range.contains(duration) else {
            fail(field, "is \"\(text)\", outside the allowed \(describeRange(range))", node)
            return nil
        }
        return duration
    }

    /// A whole number in `minimum...maximum`; `meaning` follows the range in the message.
    mutating func count(_ node: Node, at field: String, minimum: Int, maximum: Int? = nil, meaning: String = "") -> Int? {
        guard let text = string(node, at: field) else { return nil }
        guard let value = Int(text.trimmingSpaces()), value >= minimum, value <= (maximum ?? 1_000_000) else {
            fail(field, "is \"\(text)\"; write a whole number from \(minimum)\(maximum.map { " to \($0)" } ?? "")\(meaning)", node)
            return nil
        }
        return value
    }

    mutating func action(_ node: Node, at field: String) -> FeaturePolicy.Check.Action? {
        guard let text = string(node, at: field) else { return nil }
        guard let action = FeaturePolicy.Check.Action(rawValue: text) else {
            fail(field, "is \"\(text)\"; write rollback, hold or alert", node)
            return nil
        }
        return action
    }

    mutating func endpoint(_ text: String, at field: String) -> HTTPEndpoint? {
        switch HTTPEndpoint.parse(text) {
        case .success(let endpoint): return endpoint
        case .failure(let error):
            fail(field, error.message)
            return nil
        }
    }
}

/// The ranges a policy's durations must fall in (docs/controller.md lists them): wide enough for
/// a demanding operator, narrow enough that no arithmetic on them (lock TTLs, deadlines,
/// windows added to now) can overflow.
public enum PolicyDurationRange {
    /// query_timeout, notifications.timeout.
    public static let timeout = Duration.milliseconds(100)...Duration.seconds(300)
    /// notifications.deadline.
    public static let deadline = Duration.milliseconds(100)...Duration.seconds(3600)
    /// dwell, cooldown_after_rollback.
    public static let wait = Duration.zero...Duration.seconds(30 * 86_400)
    /// guard_window, stability_window.
    public static let window = Duration.zero...Duration.seconds(90 * 86_400)
    /// A burn-rate check's period and window pairs.
    public static let burnWindow = Duration.seconds(1)...Duration.seconds(90 * 86_400)
    /// Retry delays (base_delay, max_delay).
    public static let retryDelay = Duration.zero...Duration.seconds(3600)
    /// redis.replica_timeout, `--replica-timeout`: how long a change waits for its replicas.
    public static let replicaTimeout = Duration.milliseconds(1)...Duration.seconds(60)
}

/// `100ms to 5m`: a range as the messages and docs write it.
public func describeRange(_ range: ClosedRange<Duration>) -> String {
    func shown(_ duration: Duration) -> String {
        duration < .seconds(1) && duration > .zero ? "\(duration.wholeMilliseconds)ms" : formatDuration(duration)
    }
    return "\(shown(range.lowerBound)) to \(shown(range.upperBound))"
}

/// Parses `30s`, `15m`, `1h`, `1h30m`, `2d`, `500ms`, `0s`: units in descending order, each once.
public func parsePolicyDuration(_ text: String) -> Duration? {
    let units: [(String, Int64)] = [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)]
    var rest = Substring(text.trimmingSpaces())
    guard !rest.isEmpty else { return nil }
    var milliseconds: Int64 = 0
    var lastUnit = -1
    while !rest.isEmpty {
        let digits = rest.prefix { $0.isNumber && $0.isASCII }
        guard !digits.isEmpty, digits.count <= 9, let value = Int64(digits) else { return nil }
        rest = rest.dropFirst(digits.count)
        let letters = rest.prefix { $0.isLetter }
        guard let index = units.firstIndex(where: { $0.0 == letters }), index > lastUnit else { return nil }
        lastUnit = index
        milliseconds += value * units[index].1
        rest = rest.dropFirst(letters.count)
    }
    return .milliseconds(milliseconds)
}

extension Optional where Wrapped == String {
    /// The value unless it is nil or empty.
    fileprivate var nonEmpty: String? {
        guard let self, !self.isEmpty else { return nil }
        return self
    }
}
