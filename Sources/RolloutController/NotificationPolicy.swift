import Foundation
import RolloutRedis
import Yams

/// Where notifications go and how hard to try: the policy file's `notifications:` section.
/// Webhook URLs are secrets, so they come only from environment variables named in the file.
public struct NotificationPolicy: Sendable {
    /// The channels, in file order.
    public var channels: [NotificationChannel]
    /// How long one attempt may take.
    public var attemptTimeout: Duration
    /// How long one delivery may take in all, retries and waits included: no caller waits longer.
    public var deadline: Duration
    /// How failed attempts are retried (exponential with full jitter).
    public var retry: RetryPolicy
    /// The JSONL file an event goes to when a channel could not take it.
    public var fallbackFile: String
    /// Where the controller keeps the last notified condition of Redis and Prometheus (a
    /// feature's is kept in Redis, `flags:<f>:notified`; Redis's cannot be).
    public var stateFile = "notifications_state.json"

    /// The default retry: 3 attempts, 1 s then 2 s (capped at 10 s), with full jitter.
    public static let defaultRetry = RetryPolicy(baseDelay: .seconds(1), maxDelay: .seconds(10), maxAttempts: 3, jitter: true)

    /// A policy; the defaults are those of the policy file.
    public init(
        channels: [NotificationChannel], attemptTimeout: Duration = .seconds(5), deadline: Duration = .seconds(30),
        retry: RetryPolicy = NotificationPolicy.defaultRetry, fallbackFile: String = "notifications_fallback.jsonl"
    ) {
        self.channels = channels
        self.attemptTimeout = attemptTimeout
        self.deadline = deadline
        self.retry = retry
        self.fallbackFile = fallbackFile
    }
}

/// One destination: a webhook and the payload format it understands.
public struct NotificationChannel: Sendable, Hashable, CustomStringConvertible {
    /// The payload format (`type:` in the policy file).
    public enum Format: String, Sendable, Hashable, CaseIterable {
        /// `{"text": ...}` in mrkdwn: Slack, Mattermost and Rocket.Chat incoming webhooks.
        case slack
        /// The event's own JSON, for anything else.
        case webhook
        /// An Adaptive Card: Teams Workflows and incoming webhooks.
        case teams
        /// `{"content": ...}`, at most 2000 characters: Discord webhooks.
        case discord
    }

    /// Its name in reports and the fallback file (`name:`; by default `type:url_env`).
    public var name: String
    /// The payload format.
    public var format: Format
    /// Where to POST; never printed.
    public var url: WebhookURL
    /// The kinds it receives; nil for all.
    public var events: Set<NotificationEvent.Kind>?

    /// A channel.
    public init(name: String, format: Format, url: WebhookURL, events: Set<NotificationEvent.Kind>? = nil) {
        self.name = name
        self.format = format
        self.url = url
        self.events = events
    }

    /// Whether it receives events of `kind`.
    public func accepts(_ kind: NotificationEvent.Kind) -> Bool {
        events?.contains(kind) ?? true
    }

    /// Name, format and the URL's scheme and host only.
    public var description: String { "\(name) (\(format), \(url))" }
}

/// A webhook URL: a secret (the token is its path or query), so its `description` shows the
/// scheme and host only, and reflection shows nothing more.
public struct WebhookURL: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The full URL, for the request only.
    let secret: String
    /// `https://hooks.slack.com`: safe for logs, errors and JSON.
    public let description: String

    /// An http:// or https:// URL with a host and no credentials; nil otherwise (no reason is
    /// given, so the value cannot end up in a message).
    public init?(_ text: String) {
        let trimmed = text.trimmingSpaces()
        let scheme: String
        if trimmed.lowercased().hasPrefix("https://") {
            scheme = "https"
        } else if trimmed.lowercased().hasPrefix("http://") {
            scheme = "http"
        } else {
            return nil
        }
        let rest = trimmed.dropFirst(scheme.count + 3)
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        guard !authority.isEmpty, !authority.contains("@"), !authority.hasPrefix(":"), !trimmed.contains(where: \.isWhitespace) else { return nil }
        secret = trimmed
        description = "\(scheme)://\(authority)"
    }

    public var debugDescription: String { description }
    public var customMirror: Mirror { Mirror(self, children: ["redacted": description]) }

    /// `text` (an error, a receiver's answer) with every part of the secret URL replaced by `…`:
    /// the whole URL, what follows the host, and each path segment and query value of four or
    /// more characters (a receiver may echo its token alone, e.g. `invalid token T0KEN`). The
    /// one place where anything that may hold the secret is made safe to show.
    public func redacting(_ text: String) -> String {
        var result = text.replacing(secret, with: description + "/…")
        let afterHost = secret.dropFirst(description.count)
        if afterHost.count > 1 { result = result.replacing(afterHost, with: "/…") }
        let path = afterHost.prefix { $0 != "?" && $0 != "#" }
        let query = afterHost.dropFirst(path.count + 1).prefix { $0 != "#" }
        let values = query.split(separator: "&").compactMap { $0.split(separator: "=", maxSplits: 1).dropFirst().first }
        let pieces = (path.split(separator: "/") + values).map(String.init).filter { $0.count >= 4 }
        for piece in pieces.sorted(by: { $0.count > $1.count }) {
            result = result.replacing(piece, with: "…")
            if let decoded = piece.removingPercentEncoding, decoded != piece { result = result.replacing(decoded, with: "…") }
        }
        return result
    }
}

extension NotificationPolicy {
    /// Parses the `notifications:` section; nil (with problems in `reader`) when it is invalid.
    init?(_ node: Node, environment: [String: String], reader: inout NodeReader) {
        let at = "notifications"
        guard let mapping = reader.mapping(node, at: at, known: ["timeout", "deadline", "fallback_file", "state_file", "retry", "channels"]) else { return nil }
        let problemsBefore = reader.problems.count
        self.init(channels: [])
        if let node = mapping["timeout"], let value = reader.duration(node, at: "\(at).timeout", in: PolicyDurationRange.timeout) { attemptTimeout = value }
        if let node = mapping["deadline"], let value = reader.duration(node, at: "\(at).deadline", in: PolicyDurationRange.deadline) { deadline = value }
        if let node = mapping["fallback_file"], let path = reader.string(node, at: "\(at).fallback_file") {
            if path.trimmingSpaces().isEmpty { reader.fail("\(at).fallback_file", "is empty; leave it out for notifications_fallback.jsonl") }
            fallbackFile = path
        }
        if let node = mapping["state_file"], let path = reader.string(node, at: "\(at).state_file") {
            if path.trimmingSpaces().isEmpty { reader.fail("\(at).state_file", "is empty; leave it out for notifications_state.json") }
            stateFile = path
        }
        if let node = mapping["retry"], let retryMapping = reader.mapping(node, at: "\(at).retry", known: ["attempts", "base_delay", "max_delay"]) {
            if let node = retryMapping["attempts"],
                let attempts = reader.count(node, at: "\(at).retry.attempts", minimum: 1, maximum: 20, meaning: " (attempts in all, the first included)")
            {
                retry.maxAttempts = attempts
            }
            if let node = retryMapping["base_delay"], let value = reader.duration(node, at: "\(at).retry.base_delay", in: PolicyDurationRange.retryDelay) { retry.baseDelay = value }
            if let node = retryMapping["max_delay"], let value = reader.duration(node, at: "\(at).retry.max_delay", in: PolicyDurationRange.retryDelay) { retry.maxDelay = value }
            if let maxDelay = retry.maxDelay, maxDelay < retry.baseDelay {
                reader.fail("\(at).retry", "has max_delay below base_delay: every retry would wait max_delay")
            }
        }
        if let node = mapping["channels"], let sequence = reader.sequence(node, at: "\(at).channels") {
            for (index, item) in sequence.enumerated() {
                if let channel = NotificationChannel(item, at: "\(at).channels[\(index)]", environment: environment, reader: &reader) {
                    if channels.contains(where: { $0.name == channel.name }) {
                        reader.fail("\(at).channels[\(index)]", "has the name \"\(channel.name)\" of a channel before it; give one of them another name:")
                    }
                    channels.append(channel)
                }
            }
            if sequence.isEmpty { reader.fail("\(at).channels", "is empty; list at least one channel, or leave notifications: out") }
        } else if mapping["channels"] == nil {
            reader.fail("\(at).channels", "is required: a list of {type, url_env}, e.g. - {type: slack, url_env: SLACK_WEBHOOK_URL}")
        }
        if reader.problems.count > problemsBefore { return nil }
    }
}

extension NotificationChannel {
    init?(_ node: Node, at place: String, environment: [String: String], reader: inout NodeReader) {
        guard let mapping = reader.mapping(node, at: place, known: ["type", "url_env", "url", "events", "name"]) else { return nil }
        let problemsBefore = reader.problems.count
        if mapping["url"] != nil {
            // Never echo the value: it is the secret.
            reader.fail(
                "\(place).url", "must not be in the policy file: a webhook URL is a secret. Put it in an environment variable and name that variable in url_env:, e.g. url_env: SLACK_WEBHOOK_URL")
        }
        var format: Format?
        if let node = mapping["type"], let text = reader.string(node, at: "\(place).type") {
            format = Format(rawValue: text)
            if format == nil { reader.fail("\(place).type", "is \"\(text)\"; write slack, webhook, teams or discord", node) }
        } else if mapping["type"] == nil {
            reader.fail("\(place).type", "is required: slack, webhook, teams or discord")
        }
        var url: WebhookURL?
        var variable: String?
        if let node = mapping["url_env"], let name = reader.string(node, at: "\(place).url_env") {
            if isEnvironmentVariableName(name) {
                variable = name
                if let value = environment[name], !value.isEmpty {
                    url = WebhookURL(value)
                    if url == nil {
                        reader.fail("\(place).url_env", "the environment variable \(name) does not hold an http:// or https:// URL with a host")
                    }
                } else {
                    reader.fail("\(place).url_env", "the environment variable \(name) is not set or is empty; export it with the channel's webhook URL")
                }
            } else {
                // Not echoed either: a URL pasted here by mistake is a secret too.
                reader.fail("\(place).url_env", "is not an environment variable name (letters, digits and _); the URL itself goes in that variable", node)
            }
        } else if mapping["url_env"] == nil && mapping["url"] == nil {
            reader.fail("\(place).url_env", "is required: the environment variable that holds the webhook URL, e.g. SLACK_WEBHOOK_URL")
        }
        var events: Set<NotificationEvent.Kind>?
        if let node = mapping["events"], let sequence = reader.sequence(node, at: "\(place).events") {
            var kinds = Set<NotificationEvent.Kind>()
            for (index, item) in sequence.enumerated() {
                guard let text = reader.string(item, at: "\(place).events[\(index)]") else { continue }
                if let kind = NotificationEvent.Kind(rawValue: text) {
                    kinds.insert(kind)
                } else {
                    let known = NotificationEvent.Kind.allCases.map(\.rawValue).joined(separator: ", ")
                    reader.fail("\(place).events[\(index)]", "is \"\(text)\", not an event; known: \(known)", item)
                }
            }
            if sequence.isEmpty { reader.fail("\(place).events", "is empty; leave it out to receive every event") }
            events = kinds
        }
        var name: String?
        if let node = mapping["name"], let text = reader.string(node, at: "\(place).name") {
            if text.trimmingSpaces().isEmpty { reader.fail("\(place).name", "is empty") }
            name = text
        }
        guard reader.problems.count == problemsBefore, let format, let url, let variable else { return nil }
        self.init(name: name ?? "\(format.rawValue):\(variable)", format: format, url: url, events: events)
    }
}

private func isEnvironmentVariableName(_ text: String) -> Bool {
    guard let first = text.unicodeScalars.first, first == "_" || (first.isASCII && first.properties.isAlphabetic) else { return false }
    return text.unicodeScalars.allSatisfy { $0 == "_" || ($0.isASCII && ($0.properties.isAlphabetic || ("0"..."9").contains($0))) }
}
