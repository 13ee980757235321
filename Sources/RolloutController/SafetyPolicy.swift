public import Foundation
import RolloutRedis
public import RolloutGate
import Yams

/// An error-budget check (`type: burn_rate`): the error ratio over pairs of windows, against
/// the budget an SLO leaves. A pair is violated only when both its windows burn faster than
/// its factor, so a short spike alone or an old incident alone does not act.
public struct BurnRateCheck: Sendable, Hashable {
    /// Its name in output, JSON and telemetry.
    public var name: String
    /// The error-ratio query, with `$window` where the range goes (`[$window]`).
    public var query: String
    /// The SLO target, e.g. 0.99: the error budget is 1 − slo.
    public var slo: Double
    /// The SLO period `rollout budget` reports over (default 30 days).
    public var period: Duration
    /// The window pairs, judged in order.
    public var windows: [WindowPair]
    /// A violated pair acts only after this many consecutive violating runs.
    public var consecutive: Int

    /// Two windows and the burn factor both must exceed.
    public struct WindowPair: Sendable, Hashable {
        /// The long window: the burn is real, not a blip.
        public var long: Duration
        /// The short window: the burn is still going on.
        public var short: Duration
        /// Violated when both windows burn faster than this many times the budget.
        public var factor: Double
        /// What a violation does.
        public var onViolation: FeaturePolicy.Check.Action

        /// A pair.
        public init(long: Duration, short: Duration, factor: Double, onViolation: FeaturePolicy.Check.Action) {
            self.long = long
            self.short = short
            self.factor = factor
            self.onViolation = onViolation
        }

        /// `1h/5m`: how the pair is named in output.
        public var label: String { "\(formatDuration(long))/\(formatDuration(short))" }
    }

    /// The SRE workbook's pairs: 14.4× over 1h and 5m rolls back (fast burn: 2% of a 30-day
    /// budget in an hour); 6× over 6h and 30m holds and alerts (slow burn: 5% in six hours).
    public static let defaultWindows = [
        WindowPair(long: .seconds(3600), short: .seconds(300), factor: 14.4, onViolation: .rollback),
        WindowPair(long: .seconds(6 * 3600), short: .seconds(1800), factor: 6, onViolation: .hold),
    ]

    /// The error budget: the share of requests allowed to fail.
    public var budget: Double { 1 - slo }

    /// The query for one window: `$window` replaced by a Prometheus duration.
    public func query(window: Duration) -> String {
        query.replacingOccurrences(of: "$window", with: formatDuration(window))
    }

    /// Every window the pairs use, each once, shortest first.
    public var distinctWindows: [Duration] {
        Array(Set(windows.flatMap { [$0.long, $0.short] })).sorted()
    }

    /// The burn rate of an error ratio: how many times faster than the budget allows.
    public func burnRate(errorRatio: Double) -> Double { errorRatio / budget }

    /// How fast `pair` burns, from the error ratio of each window: the slower of its two
    /// windows, since both must exceed the factor; nil when either window has no data.
    public func burnRate(of pair: WindowPair, errorRatios: [Duration: Double?]) -> Double? {
        guard let long = errorRatios[pair.long] ?? nil, let short = errorRatios[pair.short] ?? nil else { return nil }
        return min(burnRate(errorRatio: long), burnRate(errorRatio: short))
    }

    /// The name `pair` is judged under, in output, JSON, streaks and alerts: `errors[1h/5m]`.
    public func outcomeName(of pair: WindowPair) -> String { "\(name)[\(pair.label)]" }

    init?(_ item: Node, at place: String, reader: inout NodeReader) {
        guard let check = reader.mapping(item, at: place, known: ["name", "type", "query", "slo", "period", "windows", "consecutive"])
        else { return nil }
        let problemsBefore = reader.problems.count
        let name = check["name"].flatMap { reader.string($0, at: "\(place).name") }
        let query = check["query"].flatMap { reader.query($0, at: "\(place).query") }
        let slo = check["slo"].flatMap { reader.number($0, at: "\(place).slo") }
        if check["name"] == nil { reader.fail("\(place).name", "is required") }
        if check["query"] == nil { reader.fail("\(place).query", "is required: an error-ratio query with $window, e.g. sum(rate(errors[$window])) / sum(rate(requests[$window]))") }
        if let query, !query.contains("$window") {
            reader.fail("\(place).query", "has no $window: write the range as [$window] so each window can be queried")
        }
        if check["slo"] == nil { reader.fail("\(place).slo", "is required: the SLO target, e.g. 0.99 for a 1% error budget") }
        if let slo, !(slo > 0 && slo < 1) { reader.fail("\(place).slo", "is \(slo); write a target between 0 and 1, e.g. 0.999") }
        period = check["period"].flatMap { reader.duration($0, at: "\(place).period", in: PolicyDurationRange.burnWindow) } ?? .seconds(30 * 86_400)
        consecutive = check["consecutive"].flatMap { reader.count($0, at: "\(place).consecutive", minimum: 1) } ?? 1
        windows = Self.defaultWindows
        if let node = check["windows"], let sequence = reader.sequence(node, at: "\(place).windows") {
            windows = []
            for (index, pairNode) in sequence.enumerated() {
                let at = "\(place).windows[\(index)]"
                guard let pair = reader.mapping(pairNode, at: at, known: ["long", "short", "factor", "on_violation"]) else { continue }
                let long = pair["long"].flatMap { reader.duration($0, at: "\(at).long", in: PolicyDurationRange.burnWindow) }
                let short = pair["short"].flatMap { reader.duration($0, at: "\(at).short", in: PolicyDurationRange.burnWindow) }
                let factor = pair["factor"].flatMap { reader.number($0, at: "\(at).factor") }
                let action = pair["on_violation"].flatMap { reader.action($0, at: "\(at).on_violation") } ?? .rollback
                for key in ["long", "short", "factor"] where pair[key] == nil { reader.fail("\(at).\(key)", "is required") }
                if let factor, factor <= 0 { reader.fail("\(at).factor", "must be more than 0") }
                if let long, let short, short >= long { reader.fail(at, "has short \(formatDuration(short)) not below long \(formatDuration(long))") }
                if let long, let short, let factor { windows.append(WindowPair(long: long, short: short, factor: factor, onViolation: action)) }
            }
            if sequence.isEmpty { reader.fail("\(place).windows", "is empty; leave it out for the SRE workbook's pairs") }
        }
        guard let name, let query, let slo, reader.problems.count == problemsBefore else { return nil }
        self.name = name
        self.query = query
        self.slo = slo
    }
}

/// A weekly (or daily) window in a time zone during which promotions wait; rollbacks still
/// happen. `from: Fri 12:00, to: Mon 08:00, time_zone: Europe/Paris`.
public struct FreezeWindow: Sendable, Hashable, CustomStringConvertible {
    /// Minutes from Monday 00:00 (weekly) or from midnight (daily).
    let start: Int
    let end: Int
    /// Weekly when the bounds name a weekday, daily otherwise.
    let weekly: Bool
    /// The zone the bounds are read in.
    public let timeZone: TimeZone
    /// How the file wrote it.
    public let description: String

    private static let weekdays = ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]

    /// Parses one bound: `Fri 12:00` (weekly) or `18:30` (daily); nil when malformed.
    static func bound(_ text: String) -> (minute: Int, weekly: Bool)? {
        let parts = text.trimmingSpaces().lowercased().split(separator: " ", omittingEmptySubsequences: true)
        guard parts.count == 1 || parts.count == 2, let clock = parts.last else { return nil }
        let hm = clock.split(separator: ":")
        guard hm.count == 2, hm[1].count == 2, let hour = Int(hm[0]), let minute = Int(hm[1]), (0...23).contains(hour), (0...59).contains(minute)
        else { return nil }
        guard parts.count == 2 else { return (hour * 60 + minute, false) }
        guard let day = weekdays.firstIndex(where: { $0 == parts[0] || $0.prefix(3) == parts[0] }) else { return nil }
        return (day * 1440 + hour * 60 + minute, true)
    }

    init?(from: String, to: String, timeZone: TimeZone, zoneName: String) {
        guard let start = Self.bound(from), let end = Self.bound(to), start.weekly == end.weekly, start.minute != end.minute else { return nil }
        self.start = start.minute
        self.end = end.minute
        weekly = start.weekly
        self.timeZone = timeZone
        description = "\(from) to \(to) (\(zoneName))"
    }

    /// Whether `time` falls inside the window; a window may wrap (Friday to Monday, 22:00 to 06:00).
    public func contains(_ time: Timestamp) -> Bool {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = timeZone
        let date = Date(timeIntervalSince1970: Double(time.microsecondsSinceEpoch) / 1e6)
        let parts = calendar.dateComponents([.weekday, .hour, .minute], from: date)
        guard let weekday = parts.weekday, let hour = parts.hour, let minute = parts.minute else { return false }
        // Calendar counts Sunday as 1; the window counts from Monday.
        let dayIndex = (weekday + 5) % 7
        let now = (weekly ? dayIndex * 1440 : 0) + hour * 60 + minute
        return start < end ? (now >= start && now < end) : (now >= start || now < end)
    }
}

extension NodeReader {
    /// `freeze:`: a list of `{from, to, time_zone}`.
    mutating func freezeWindows(_ node: Node, at field: String) -> [FreezeWindow]? {
        guard let sequence = sequence(node, at: field) else { return nil }
        var windows: [FreezeWindow] = []
        for (index, item) in sequence.enumerated() {
            let at = "\(field)[\(index)]"
            guard let window = mapping(item, at: at, known: ["from", "to", "time_zone"]) else { continue }
            let from = window["from"].flatMap { string($0, at: "\(at).from") }
            let to = window["to"].flatMap { string($0, at: "\(at).to") }
            let zoneName = window["time_zone"].flatMap { string($0, at: "\(at).time_zone") } ?? "UTC"
            for key in ["from", "to"] where window[key] == nil { fail("\(at).\(key)", "is required, e.g. \"Fri 12:00\" or \"18:00\"") }
            guard let timeZone = TimeZone(identifier: zoneName) else {
                fail("\(at).time_zone", "is \"\(zoneName)\", not a known time zone; write e.g. UTC or Europe/Paris (is tzdata installed?)")
                continue
            }
            guard let from, let to else { continue }
            guard let parsed = FreezeWindow(from: from, to: to, timeZone: timeZone, zoneName: zoneName) else {
                fail(
                    at, "from \"\(from)\" to \"\(to)\" is not a window; write both as \"Fri 12:00\" (weekly) or both as \"18:00\" (daily), different",
                    item)
                continue
            }
            windows.append(parsed)
        }
        return windows
    }
}

/// `environments:` overrides, merged over the base settings before they are read: at the top
/// (`environments.production.prometheus`) and in each feature (`features.f.environments.production.dwell`).
/// Keys are replaced whole; the top-level environment's feature keys are merged last, so they
/// win over the feature's own environment.
struct EnvironmentOverrides {
    let name: String?
    private let top: [String: Node]
    private let topFeatures: [String: Node]

    init(root: Node, name: String?, reader: inout NodeReader) {
        self.name = name
        var top: [String: Node] = [:]
        var defined: Set<String> = []
        if let environments = root.mapping?["environments"], let mapping = environments.mapping {
            for (key, value) in mapping {
                guard let environment = key.scalar?.string else { continue }
                defined.insert(environment)
                if environment == name { top = reader.mapping(value, at: "environments.\(environment)", known: nil) ?? [:] }
            }
        }
        for (_, feature) in root.mapping?["features"]?.mapping ?? Node.Mapping([]) {
            for (key, _) in feature.mapping?["environments"]?.mapping ?? Node.Mapping([]) {
                if let environment = key.scalar?.string { defined.insert(environment) }
            }
        }
        if let name, !defined.contains(name) {
            reader.fail(
                "--env", "\"\(name)\" is not an environment of this file"
                    + (defined.isEmpty ? "; it defines none" : "; it defines \(defined.sorted().joined(separator: ", "))"))
        }
        self.top = top
        topFeatures = top["features"]?.mapping.map { Dictionary($0.compactMap { key, value in key.scalar.map { ($0.string, value) } }) { a, _ in a } } ?? [:]
        // A typo under an environment's features must not silently leave a guard unapplied.
        let known = Set((root.mapping?["features"]?.mapping ?? Node.Mapping([])).compactMap { $0.key.scalar?.string })
        for feature in topFeatures.keys.sorted() where !known.contains(feature) {
            reader.fail("environments.\(name ?? "").features.\(feature)", "is not a feature of this file; features: \(known.sorted().joined(separator: ", "))")
        }
    }

    /// The top-level mapping with the environment's keys (except `features`) merged in.
    func top(_ root: Node) -> Node {
        merge(root, with: top.filter { $0.key != "features" })
    }

    /// A feature's mapping with its own environment's keys, then the top-level environment's.
    func feature(_ feature: String, _ node: Node, reader: inout NodeReader) -> Node {
        guard let name else { return node }
        var overrides: [String: Node] = [:]
        if let own = node.mapping?["environments"]?.mapping?[name] {
            overrides = reader.mapping(own, at: "features.\(feature).environments.\(name)", known: nil) ?? [:]
        }
        if let shared = topFeatures[feature] {
            for (key, value) in reader.mapping(shared, at: "environments.\(name).features.\(feature)", known: nil) ?? [:] { overrides[key] = value }
        }
        return merge(node, with: overrides)
    }

    private func merge(_ node: Node, with overrides: [String: Node]) -> Node {
        guard !overrides.isEmpty, let mapping = node.mapping else { return node }
        var pairs: [(Node, Node)] = []
        var seen: Set<String> = []
        for (key, value) in mapping {
            let name = key.scalar?.string ?? ""
            seen.insert(name)
            pairs.append((key, overrides[name] ?? value))
        }
        for (name, value) in overrides.sorted(by: { $0.key < $1.key }) where !seen.contains(name) {
            pairs.append((Node(name), value))
        }
        return .mapping(Node.Mapping(pairs, mapping.tag, mapping.style, mapping.mark))
    }
}
