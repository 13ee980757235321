import Foundation
public import RolloutGate

/// Something an operator should hear about, sent once when it happens (never once per run).
/// The generic `webhook` channel receives exactly its JSON:
/// `{"details":{...},"feature":"google","kind":"rollback","summary":"...","time":"2025-10-08T15:00:00.000000+00:00"}`.
public struct NotificationEvent: Sendable, Hashable, Encodable {
    /// What happened. The raw values are a contract with receivers and with `events:` filters.
    public enum Kind: String, Sendable, Hashable, CaseIterable, Encodable {
        case rollback
        case flapPause = "flap_pause"
        case guardLocked = "guard_locked"
        case guardReleased = "guard_released"
        case prometheusUnreachable = "prometheus_unreachable"
        case prometheusRecovered = "prometheus_recovered"
        case redisUnreachable = "redis_unreachable"
        case redisRecovered = "redis_recovered"
        case manualChange = "manual_change"
        case promotedToFull = "promoted_to_full"
        case holdStarted = "hold_started"
        case holdEnded = "hold_ended"

        /// A short title for chat messages.
        var title: String {
            switch self {
            case .rollback: return "Rollback"
            case .flapPause: return "Paused by flap protection"
            case .guardLocked: return "Guard locked"
            case .guardReleased: return "Guard released"
            case .prometheusUnreachable: return "Prometheus unreachable"
            case .prometheusRecovered: return "Prometheus reachable again"
            case .redisUnreachable: return "Redis unreachable"
            case .redisRecovered: return "Redis reachable again"
            case .manualChange: return "Manual change detected"
            case .promotedToFull: return "Promoted to 100%"
            case .holdStarted: return "Hold started"
            case .holdEnded: return "Hold ended"
            }
        }
    }

    /// What happened.
    public var kind: Kind
    /// The feature concerned; nil for events about a server (Redis, Prometheus).
    public var feature: String?
    /// One sentence for people.
    public var summary: String
    /// Facts for receivers that filter or template: `from`, `to`, `check`, `value`...
    public var details: [String: String]
    /// When it happened (written in ISO-8601).
    public var time: Timestamp

    /// An event.
    public init(kind: Kind, feature: String?, summary: String, details: [String: String] = [:], time: Timestamp) {
        self.kind = kind
        self.feature = feature
        self.summary = summary
        self.details = details
        self.time = time
    }

    private enum CodingKeys: String, CodingKey {
        case kind, feature, summary, details, time
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(kind, forKey: .kind)
        try container.encode(feature, forKey: .feature)  // null rather than absent: one schema for every kind
        try container.encode(summary, forKey: .summary)
        try container.encode(details, forKey: .details)
        try container.encode(time.description, forKey: .time)
    }

    /// The same document as `encode(to:)`, as an object to embed in others (the fallback line).
    var jsonObject: [String: Any] {
        ["kind": kind.rawValue, "feature": feature ?? NSNull(), "summary": summary, "details": details, "time": time.description]
    }
}

// MARK: - Conditions and their transitions

/// The condition of a subject (a feature, or Redis, or Prometheus) that notifications follow,
/// stored between runs in its string form (`ok`, `hold:no_data`, `prometheus_unreachable`...),
/// so that a condition lasting six hours sends one message when it starts and one when it ends.
public enum NotificationCondition: Sendable, Hashable, LosslessStringConvertible {
    /// Nothing worth a message.
    case ok
    /// Held for a reason worth a message (`hold:<reason>`): no data, a violated check...
    case held(reason: String)
    /// Paused by flap protection (`flap_paused`). Its end is an operator's unpause, which the
    /// controller reports as a manual change, so it has no end event of its own.
    case flapPaused
    /// A guard holds the feature (`guard_locked`).
    case guardLocked
    /// Prometheus does not answer (`prometheus_unreachable`).
    case prometheusUnreachable
    /// Redis does not answer (`redis_unreachable`).
    case redisUnreachable

    /// The condition for a run's hold reason: routine holds (dwell, cooldown, at the last step,
    /// paused or disabled by a person, another controller's lock, a concurrent change, a guard
    /// whose lock and release are events of their own) are `ok`, as they are the normal course
    /// of a rollout; an unreachable server is its own condition.
    public init(holdReason: Verdict.HoldReason?) {
        switch holdReason {
        case nil, .dwell?, .cooldown?, .atLastStep?, .paused?, .disabled?, .locked?, .concurrentChange?, .watching?, .adopted?: self = .ok
        // Its start and end are sent as they happen (guard_locked, guard_released).
        case .guardLocked?: self = .ok
        case .promUnreachable?: self = .prometheusUnreachable
        case .redisError?: self = .redisUnreachable
        case let reason?: self = .held(reason: reason.rawValue)
        }
    }

    /// Parses the stored form; nil for anything else (an older or corrupted value).
    public init?(_ description: String) {
        switch description {
        case "ok": self = .ok
        case "flap_paused": self = .flapPaused
        case "guard_locked": self = .guardLocked
        case "prometheus_unreachable": self = .prometheusUnreachable
        case "redis_unreachable": self = .redisUnreachable
        default:
            guard description.hasPrefix("hold:"), description.count > 5 else { return nil }
            self = .held(reason: String(description.dropFirst(5)))
        }
    }

    /// The stored form.
    public var description: String {
        switch self {
        case .ok: return "ok"
        case .held(let reason): return "hold:\(reason)"
        case .flapPaused: return "flap_paused"
        case .guardLocked: return "guard_locked"
        case .prometheusUnreachable: return "prometheus_unreachable"
        case .redisUnreachable: return "redis_unreachable"
        }
    }

    private var startKind: NotificationEvent.Kind? {
        switch self {
        case .ok: return nil
        case .held: return .holdStarted
        case .flapPaused: return .flapPause
        case .guardLocked: return .guardLocked
        case .prometheusUnreachable: return .prometheusUnreachable
        case .redisUnreachable: return .redisUnreachable
        }
    }

    private var endKind: NotificationEvent.Kind? {
        switch self {
        case .ok, .flapPaused: return nil
        case .held: return .holdEnded
        case .guardLocked: return .guardReleased
        case .prometheusUnreachable: return .prometheusRecovered
        case .redisUnreachable: return .redisRecovered
        }
    }

    /// The events for a change from the condition last notified (`previous`, as stored; nil
    /// when nothing was stored yet, which counts as `ok`) to `self`: none when nothing changed;
    /// one when a condition starts or ends; for a change between two conditions, the end of the
    /// old one and the start of the new one, except between two hold reasons, which is one
    /// `hold_started` naming the previous reason. An unreadable `previous` is treated as
    /// unknown: the current condition is announced if it is not `ok`.
    ///
    /// The caller stores `description` after the events are handed to the notifier.
    public func events(
        since previous: String?, feature: String?, explanation: String? = nil, details: [String: String] = [:], time: Timestamp
    ) -> [NotificationEvent] {
        let before: NotificationCondition?
        if let previous { before = NotificationCondition(previous) } else { before = .ok }
        if before == self { return [] }
        var events: [NotificationEvent] = []
        func event(_ kind: NotificationEvent.Kind, _ summary: String, extra: [String: String] = [:]) -> NotificationEvent {
            var sentence = summary
            if let explanation, !explanation.isEmpty { sentence += ": " + explanation }
            return NotificationEvent(
                kind: kind, feature: feature, summary: sentence + (sentence.hasSuffix(".") ? "" : "."),
                details: details.merging(extra) { given, _ in given }, time: time)
        }
        if case .held(let old)? = before, case .held(let new) = self {
            return [event(.holdStarted, "\(subject(feature)) is held (\(new)); it was held for \(old)", extra: ["reason": new, "previous_reason": old])]
        }
        if let before, let end = before.endKind {
            events.append(event(end, before.endSentence(feature), extra: before.reasonDetail))
        }
        if let start = startKind {
            events.append(event(start, startSentence(feature), extra: reasonDetail))
        }
        return events
    }

    private var reasonDetail: [String: String] {
        if case .held(let reason) = self { return ["reason": reason] }
        return [:]
    }

    private func startSentence(_ feature: String?) -> String {
        switch self {
        case .ok: return "\(subject(feature)) is ok"
        case .held(let reason): return "\(subject(feature)) is held (\(reason))"
        case .flapPaused: return "\(subject(feature)) is paused by flap protection: it rolled back too often"
        case .guardLocked: return "\(subject(feature)) is locked by a guard"
        case .prometheusUnreachable: return "Prometheus is unreachable" + (feature.map { "; \($0) is held until it answers" } ?? "")
        case .redisUnreachable: return "Redis is unreachable" + (feature.map { "; \($0) is held until it answers" } ?? "")
        }
    }

    private func endSentence(_ feature: String?) -> String {
        switch self {
        case .ok: return "\(subject(feature)) is ok"
        case .held(let reason): return "\(subject(feature)) is no longer held (it was held for \(reason))"
        case .flapPaused: return "\(subject(feature)) is no longer paused by flap protection"
        case .guardLocked: return "The guard on \(subject(feature)) is released"
        case .prometheusUnreachable: return "Prometheus answers again" + (feature.map { " for \($0)" } ?? "")
        case .redisUnreachable: return "Redis answers again" + (feature.map { " for \($0)" } ?? "")
        }
    }

    private func subject(_ feature: String?) -> String { feature ?? "The controller" }
}

// MARK: - Payloads

extension NotificationChannel.Format {
    /// The JSON body this format POSTs for `event`.
    public func payload(for event: NotificationEvent) -> String {
        switch self {
        case .webhook:
            return compactJSON(event.jsonObject)
        case .slack:
            return compactJSON(["text": chatText(event, bold: "*", escape: slackEscaped)])
        case .discord:
            // allowed_mentions: a summary that contains "@everyone" must not ping anyone.
            let content = truncated(chatText(event, bold: "**", escape: { $0 }), toUTF16: 2000)
            return compactJSON(["content": content, "allowed_mentions": ["parse": [String]()]])
        case .teams:
            return compactJSON(teamsCard(event))
        }
    }

    /// Title, summary, one bullet per detail (sorted by key) and the time, for chat services.
    private func chatText(_ event: NotificationEvent, bold: String, escape: (String) -> String) -> String {
        var lines = [bold + escape(event.kind.title) + bold + (event.feature.map { " `\(escape($0))`" } ?? ""), escape(event.summary)]
        for (key, value) in event.details.sorted(by: { $0.key < $1.key }) {
            lines.append("• \(escape(key)): \(escape(value))")
        }
        lines.append("_\(event.time.secondsDescription)_")
        return lines.joined(separator: "\n")
    }

    /// An Adaptive Card in a `message` envelope. Chosen over the older MessageCard because the
    /// Workflows app ("When a Teams webhook request is received"), which replaces the retired
    /// Office 365 connectors, accepts Adaptive Cards only, and the remaining connector webhooks
    /// accept this envelope too. Version 1.4 is the newest every Teams client renders.
    private func teamsCard(_ event: NotificationEvent) -> [String: Any] {
        var body: [[String: Any]] = [
            [
                "type": "TextBlock", "text": event.kind.title + (event.feature.map { ": \($0)" } ?? ""), "weight": "Bolder", "size": "Medium",
                "wrap": true,
            ],
            ["type": "TextBlock", "text": event.summary, "wrap": true],
        ]
        if !event.details.isEmpty {
            let facts = event.details.sorted { $0.key < $1.key }.map { ["title": $0.key, "value": $0.value] }
            body.append(["type": "FactSet", "facts": facts])
        }
        body.append(["type": "TextBlock", "text": event.time.secondsDescription, "isSubtle": true, "wrap": true])
        let card: [String: Any] = [
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json", "type": "AdaptiveCard", "version": "1.4", "body": body,
        ]
        return [
            "type": "message",
            "attachments": [["contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": NSNull(), "content": card]],
        ]
    }
}

/// Slack's mrkdwn control characters, escaped as its docs require (also right for Mattermost
/// and Rocket.Chat, which show the entities as the characters).
private func slackEscaped(_ text: String) -> String {
    var result = ""
    for character in text {
        switch character {
        case "&": result += "&amp;"
        case "<": result += "&lt;"
        case ">": result += "&gt;"
        default: result.append(character)
        }
    }
    return result
}

/// `text` cut on a character boundary so that it, with a final "…", is at most `limit` UTF-16
/// units (Discord counts characters; UTF-16 units are never fewer).
func truncated(_ text: String, toUTF16 limit: Int) -> String {
    guard text.utf16.count > limit else { return text }
    var result = ""
    var count = 0
    for character in text {
        let width = character.utf16.count
        if count + width > limit - 1 { break }
        result.append(character)
        count += width
    }
    return result + "…"
}

// MARK: - JSON

/// `object` as compact JSON with sorted keys and "/" unescaped, so payloads are byte-for-byte
/// predictable (tests compare them exactly). The payloads hold only strings, numbers, booleans,
/// NSNull, arrays and dictionaries, which JSONSerialization always writes.
func compactJSON(_ object: [String: Any]) -> String {
    let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data("{}".utf8)
    return String(decoding: data, as: UTF8.self)
}
