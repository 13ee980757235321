import Foundation
import RolloutController
import RolloutGate
import RolloutTestSupport
import Synchronization
import Testing

private let rollbackEvent = NotificationEvent(
    kind: .rollback, feature: "google", summary: "Rolled back from 50% to 10%: error_rate is 0.05, above 0.01.",
    details: ["from": "50", "to": "10", "check": "error_rate"], time: Timestamp(microsecondsSinceEpoch: 1_759_935_600_000_000))

@Suite("Notification payloads and transitions")
struct NotificationPayloadTests {
    @Test func webhookSendsTheEventJSON() throws {
        let expected = #"""
            {"details":{"check":"error_rate","from":"50","to":"10"},"feature":"google","kind":"rollback","summary":"Rolled back from 50% to 10%: error_rate is 0.05, above 0.01.","time":"2025-10-08T15:00:00.000000+00:00"}
            """#
        #expect(NotificationChannel.Format.webhook.payload(for: rollbackEvent) == expected)
        // The Encodable conformance writes the same document.
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        #expect(String(decoding: try encoder.encode(rollbackEvent), as: UTF8.self) == expected)
    }

    @Test func webhookWritesNullForAnEventWithoutFeature() {
        let event = NotificationEvent(kind: .redisUnreachable, feature: nil, summary: "Redis is unreachable.", time: rollbackEvent.time)
        #expect(
            NotificationChannel.Format.webhook.payload(for: event)
                == #"{"details":{},"feature":null,"kind":"redis_unreachable","summary":"Redis is unreachable.","time":"2025-10-08T15:00:00.000000+00:00"}"#)
    }

    @Test func slackSendsMrkdwnText() {
        #expect(
            NotificationChannel.Format.slack.payload(for: rollbackEvent)
                == #"{"text":"*Rollback* `google`\nRolled back from 50% to 10%: error_rate is 0.05, above 0.01.\n• check: error_rate\n• from: 50\n• to: 10\n_2025-10-08T15:00:00Z_"}"#)
    }

    @Test func slackEscapesItsControlCharacters() {
        var event = rollbackEvent
        event.summary = "a <b> & \"c\"\n<!channel>"
        event.details = [:]
        #expect(
            NotificationChannel.Format.slack.payload(for: event)
                == #"{"text":"*Rollback* `google`\na &lt;b&gt; &amp; \"c\"\n&lt;!channel&gt;\n_2025-10-08T15:00:00Z_"}"#)
    }

    @Test func discordSendsContentWithoutMentions() {
        #expect(
            NotificationChannel.Format.discord.payload(for: rollbackEvent)
                == #"{"allowed_mentions":{"parse":[]},"content":"**Rollback** `google`\nRolled back from 50% to 10%: error_rate is 0.05, above 0.01.\n• check: error_rate\n• from: 50\n• to: 10\n_2025-10-08T15:00:00Z_"}"#)
    }

    @Test func discordContentIsCutTo2000CharactersOnACharacterBoundary() throws {
        var event = rollbackEvent
        event.summary = String(repeating: "🚀", count: 1500)  // two UTF-16 units each
        let payload = NotificationChannel.Format.discord.payload(for: event)
        let document = try #require(try JSONSerialization.jsonObject(with: Data(payload.utf8)) as? [String: Any])
        let content = try #require(document["content"] as? String)
        #expect(content.utf16.count <= 2000)
        #expect(content.utf16.count >= 1998)
        #expect(content.hasSuffix("🚀…"))
        #expect(!content.unicodeScalars.contains { $0.properties.generalCategory == .surrogate })
    }

    @Test func teamsSendsAnAdaptiveCard() {
        let expected = #"""
            {"attachments":[{"content":{"$schema":"http://adaptivecards.io/schemas/adaptive-card.json","body":[{"size":"Medium","text":"Rollback: google","type":"TextBlock","weight":"Bolder","wrap":true},{"text":"Rolled back from 50% to 10%: error_rate is 0.05, above 0.01.","type":"TextBlock","wrap":true},{"facts":[{"title":"check","value":"error_rate"},{"title":"from","value":"50"},{"title":"to","value":"10"}],"type":"FactSet"},{"isSubtle":true,"text":"2025-10-08T15:00:00Z","type":"TextBlock","wrap":true}],"type":"AdaptiveCard","version":"1.4"},"contentType":"application/vnd.microsoft.card.adaptive","contentUrl":null}],"type":"message"}
            """#
        #expect(NotificationChannel.Format.teams.payload(for: rollbackEvent) == expected)
    }

    @Test(arguments: NotificationChannel.Format.allCases)
    func everyPayloadIsValidJSONEvenWithControlCharacters(format: NotificationChannel.Format) throws {
        var event = rollbackEvent
        event.summary = "tab\there, quote \" backslash \\ bell \u{07} line\u{2028}end"
        event.details = ["key\n": "value\u{0}"]
        let payload = format.payload(for: event)
        #expect(try JSONSerialization.jsonObject(with: Data(payload.utf8)) is [String: Any])
    }

    struct Transition: Sendable, CustomTestStringConvertible {
        var previous: String?
        var current: NotificationCondition
        var kinds: [NotificationEvent.Kind]
        var testDescription: String { "\(previous ?? "nil") → \(current): \(kinds.map(\.rawValue))" }
    }

    @Test(arguments: [
        Transition(previous: nil, current: .ok, kinds: []),
        Transition(previous: nil, current: .held(reason: "no_data"), kinds: [.holdStarted]),
        Transition(previous: "ok", current: .ok, kinds: []),
        Transition(previous: "ok", current: .held(reason: "no_data"), kinds: [.holdStarted]),
        Transition(previous: "hold:no_data", current: .held(reason: "no_data"), kinds: []),
        Transition(previous: "hold:no_data", current: .ok, kinds: [.holdEnded]),
        Transition(previous: "hold:no_data", current: .held(reason: "check_violated"), kinds: [.holdStarted]),
        Transition(previous: "hold:no_data", current: .prometheusUnreachable, kinds: [.holdEnded, .prometheusUnreachable]),
        Transition(previous: "ok", current: .prometheusUnreachable, kinds: [.prometheusUnreachable]),
        Transition(previous: "prometheus_unreachable", current: .prometheusUnreachable, kinds: []),
        Transition(previous: "prometheus_unreachable", current: .ok, kinds: [.prometheusRecovered]),
        Transition(previous: "ok", current: .redisUnreachable, kinds: [.redisUnreachable]),
        Transition(previous: "redis_unreachable", current: .ok, kinds: [.redisRecovered]),
        Transition(previous: "ok", current: .guardLocked, kinds: [.guardLocked]),
        Transition(previous: "guard_locked", current: .ok, kinds: [.guardReleased]),
        Transition(previous: "ok", current: .flapPaused, kinds: [.flapPause]),
        Transition(previous: "flap_paused", current: .ok, kinds: []),
        Transition(previous: "something-older", current: .ok, kinds: []),
        Transition(previous: "something-older", current: .held(reason: "no_data"), kinds: [.holdStarted]),
    ])
    func transitionsSendOneEventPerChange(_ transition: Transition) {
        let events = transition.current.events(since: transition.previous, feature: "google", time: rollbackEvent.time)
        #expect(events.map(\.kind) == transition.kinds)
        #expect(events.allSatisfy { $0.feature == "google" && $0.time == rollbackEvent.time && $0.summary.hasSuffix(".") })
    }

    @Test func aSixHourNoDataHoldSendsTwoMessages() {
        // One run every 10 minutes: ok, then no data for six hours, then ok again.
        let runs: [NotificationCondition] = [.ok] + Array(repeating: .held(reason: "no_data"), count: 36) + [.ok, .ok]
        var stored: String? = nil
        var sent: [NotificationEvent] = []
        for (index, condition) in runs.enumerated() {
            let time = rollbackEvent.time.advanced(by: .seconds(600 * index))
            sent += condition.events(since: stored, feature: "google", explanation: "error_rate has no data", time: time)
            stored = condition.description
        }
        #expect(sent.map(\.kind) == [.holdStarted, .holdEnded])
        #expect(sent.first?.summary == "google is held (no_data): error_rate has no data.")
        #expect(sent.first?.details == ["reason": "no_data"])
        #expect(sent.last?.time == rollbackEvent.time.advanced(by: .seconds(600 * 37)))
    }

    @Test func aChangeOfHoldReasonNamesThePreviousOne() throws {
        let event = try #require(
            NotificationCondition.held(reason: "check_violated").events(since: "hold:no_data", feature: "google", details: ["check": "latency"], time: rollbackEvent.time).first)
        #expect(event.details == ["check": "latency", "reason": "check_violated", "previous_reason": "no_data"])
    }

    @Test func conditionsRoundTripAndFollowHoldReasons() {
        let all: [NotificationCondition] = [.ok, .held(reason: "no_data"), .flapPaused, .guardLocked, .prometheusUnreachable, .redisUnreachable]
        for condition in all { #expect(NotificationCondition(condition.description) == condition) }
        #expect(NotificationCondition("hold:") == nil)
        #expect(NotificationCondition(holdReason: nil) == .ok)
        #expect(NotificationCondition(holdReason: .dwell) == .ok)
        #expect(NotificationCondition(holdReason: .atLastStep) == .ok)
        #expect(NotificationCondition(holdReason: .noData) == .held(reason: "no_data"))
        #expect(NotificationCondition(holdReason: .invalidData) == .held(reason: "invalid_data"))
        #expect(NotificationCondition(holdReason: .checkViolated) == .held(reason: "check_violated"))
        #expect(NotificationCondition(holdReason: .promUnreachable) == .prometheusUnreachable)
        #expect(NotificationCondition(holdReason: .redisError) == .redisUnreachable)
    }
}

// MARK: - Policy

private let secretSlackURL = "https://hooks.slack.com/services/T0001/B0002/SECRETslackTOKEN"
private let secretEnvironment = [
    "SLACK_WEBHOOK_URL": secretSlackURL,
    "TEAMS_WEBHOOK_URL": "https://prod-01.westeurope.logic.azure.com:443/workflows/abc/triggers/manual/paths/invoke?api-version=2016-06-01&sig=SECRETteamsSIG",
    "DISCORD_WEBHOOK_URL": "https://discord.com/api/webhooks/123/SECRETdiscordTOKEN",
    "ALERTS_WEBHOOK_URL": "http://alerts.internal:8080/rollout?token=SECRETalertsTOKEN",
]
private let secretMarkers = ["SECRETslackTOKEN", "SECRETteamsSIG", "SECRETdiscordTOKEN", "SECRETalertsTOKEN", "/services/", "/workflows/", "/api/webhooks"]

private func policy(notifications: String, environment: [String: String] = secretEnvironment) throws(PolicyError) -> ControllerPolicy {
    try ControllerPolicy(yaml: sampleYAML + "\n" + notifications, environment: environment)
}

private func problems(notifications: String, environment: [String: String] = secretEnvironment) -> [String] {
    do {
        _ = try policy(notifications: notifications, environment: environment)
        return []
    } catch {
        return error.problems
    }
}

@Suite("Notification policy")
struct NotificationPolicyTests {
    @Test func redactionHidesEveryPieceOfTheSecretURL() throws {
        let url = try #require(WebhookURL("https://hooks.example.com/services/T0KEN5ECRET/B0T?token=S1GNATURE%2Fx&v=1"))
        #expect(url.description == "https://hooks.example.com")
        let text = "POST https://hooks.example.com/services/T0KEN5ECRET/B0T?token=S1GNATURE%2Fx&v=1 failed: invalid token T0KEN5ECRET (sig S1GNATURE/x)"
        let redacted = url.redacting(text)
        #expect(!redacted.contains("T0KEN5ECRET") && !redacted.contains("S1GNATURE"), "\(redacted)")
        #expect(redacted.contains("https://hooks.example.com/…") && redacted.contains("invalid token …"), "\(redacted)")
    }

    @Test func parsesTheNotificationsSection() throws {
        let parsed = try policy(
            notifications: """
                notifications:
                  timeout: 3s
                  deadline: 20s
                  fallback_file: /var/lib/rollout/notifications_fallback.jsonl
                  retry: {attempts: 4, base_delay: 500ms, max_delay: 8s}
                  channels:
                    - type: slack
                      url_env: SLACK_WEBHOOK_URL
                      events: [rollback, flap_pause]
                    - {type: teams, url_env: TEAMS_WEBHOOK_URL, name: ops-teams}
                    - {type: discord, url_env: DISCORD_WEBHOOK_URL}
                    - {type: webhook, url_env: ALERTS_WEBHOOK_URL}
                """)
        let notifications = try #require(parsed.notifications)
        #expect(notifications.attemptTimeout == .seconds(3))
        #expect(notifications.deadline == .seconds(20))
        #expect(notifications.fallbackFile == "/var/lib/rollout/notifications_fallback.jsonl")
        #expect(notifications.retry == RetryPolicy(baseDelay: .milliseconds(500), maxDelay: .seconds(8), maxAttempts: 4, jitter: true))
        #expect(notifications.channels.map(\.name) == ["slack:SLACK_WEBHOOK_URL", "ops-teams", "discord:DISCORD_WEBHOOK_URL", "webhook:ALERTS_WEBHOOK_URL"])
        #expect(notifications.channels.map(\.format) == [.slack, .teams, .discord, .webhook])
        #expect(notifications.channels[0].events == [.rollback, .flapPause])
        #expect(notifications.channels[0].accepts(.rollback) && !notifications.channels[0].accepts(.holdStarted))
        #expect(notifications.channels[1].events == nil && notifications.channels[1].accepts(.holdStarted))
        #expect(notifications.channels.map(\.url.description) == [
            "https://hooks.slack.com", "https://prod-01.westeurope.logic.azure.com:443", "https://discord.com", "http://alerts.internal:8080",
        ])
    }

    @Test func defaultsAndAbsence() throws {
        #expect(try ControllerPolicy(yaml: sampleYAML).notifications == nil)
        let notifications = try #require(try policy(notifications: "notifications: {channels: [{type: slack, url_env: SLACK_WEBHOOK_URL}]}").notifications)
        #expect(notifications.attemptTimeout == .seconds(5))
        #expect(notifications.deadline == .seconds(30))
        #expect(notifications.fallbackFile == "notifications_fallback.jsonl")
        #expect(notifications.retry == NotificationPolicy.defaultRetry)
        #expect(notifications.retry.backoff == .exponential && notifications.retry.jitter)
    }

    @Test func aLiteralURLIsRefused() {
        let found = problems(notifications: "notifications: {channels: [{type: slack, url: \"\(secretSlackURL)\"}]}")
        #expect(found.count == 1)
        #expect(found.first?.hasPrefix("notifications.channels[0].url: must not be in the policy file") == true)
        #expect(found.first?.contains("environment variable") == true)
        #expect(!found.joined().contains("SECRET"))
    }

    @Test func aMissingOrEmptyVariableIsNamedWithoutItsValue() {
        let yaml = "notifications: {channels: [{type: slack, url_env: SLACK_WEBHOOK_URL}]}"
        for environment in [[:], ["SLACK_WEBHOOK_URL": ""]] {
            #expect(
                problems(notifications: yaml, environment: environment) == [
                    "notifications.channels[0].url_env: the environment variable SLACK_WEBHOOK_URL is not set or is empty; export it with the channel's webhook URL"
                ])
        }
        let notAURL = problems(notifications: yaml, environment: ["SLACK_WEBHOOK_URL": "hooks.slack.com/services/SECRETslackTOKEN"])
        #expect(notAURL == ["notifications.channels[0].url_env: the environment variable SLACK_WEBHOOK_URL does not hold an http:// or https:// URL with a host"])
    }

    @Test func aURLPastedIntoUrlEnvIsNotEchoed() {
        let found = problems(notifications: "notifications: {channels: [{type: slack, url_env: \"\(secretSlackURL)\"}]}")
        #expect(found.count == 1)
        #expect(found.first?.contains("is not an environment variable name") == true)
        #expect(!found.joined().contains("SECRET") && !found.joined().contains("/services/"))
    }

    @Test func unknownTypesAndEventsAreProblemsWithTheirPaths() {
        let found = problems(
            notifications: """
                notifications:
                  retry: {attempts: 0}
                  channels:
                    - {type: pagerduty, url_env: SLACK_WEBHOOK_URL}
                    - {type: slack, url_env: SLACK_WEBHOOK_URL, events: [rollback, rollbak]}
                    - {type: discord, url_env: DISCORD_WEBHOOK_URL, colour: red}
                """)
        #expect(found.count == 4)
        let expected = [
            ("notifications.retry.attempts (line ", "): is \"0\"; write a whole number from 1 to 20"),
            ("notifications.channels[0].type (line ", "): is \"pagerduty\"; write slack, webhook, teams or discord"),
            ("notifications.channels[1].events[1] (line ", "): is \"rollbak\", not an event; known: rollback, flap_pause,"),
            ("notifications.channels[2].colour (line ", "): is not a known key"),
        ]
        for (field, message) in expected {
            #expect(found.contains { $0.hasPrefix(field) && $0.contains(message) }, "no \(field)…\(message) in \(found)")
        }
    }

    @Test func problemsAreCollectedWithTheRestOfTheFile() {
        let found = problems(notifications: "notifications: {channels: []}", environment: ["PROMETHEUS_BASE_URL": "ftp://prometheus"])
        #expect(found.count == 2)
        #expect(found.contains { $0.hasPrefix("PROMETHEUS_BASE_URL: ") })
        #expect(found.contains("notifications.channels: is empty; list at least one channel, or leave notifications: out"))
    }

    @Test func noDescriptionShowsTheURL() throws {
        let parsed = try policy(
            notifications: """
                notifications:
                  channels:
                    - {type: slack, url_env: SLACK_WEBHOOK_URL}
                    - {type: teams, url_env: TEAMS_WEBHOOK_URL}
                    - {type: discord, url_env: DISCORD_WEBHOOK_URL}
                    - {type: webhook, url_env: ALERTS_WEBHOOK_URL}
                """)
        let notifications = try #require(parsed.notifications)
        var dumped = ""
        dump(notifications, to: &dumped)
        var texts = [dumped, "\(notifications)", String(reflecting: notifications), String(reflecting: parsed)]
        for channel in notifications.channels {
            texts += ["\(channel)", String(reflecting: channel), "\(channel.url)", String(reflecting: channel.url)]
        }
        for text in texts {
            for marker in secretMarkers { #expect(!text.contains(marker), "\(marker) shown in: \(text)") }
        }
    }
}

// MARK: - Delivery

/// A notification policy for one channel at `url`, with short timeouts and delays, writing its
/// fallback file into `directory`.
private func deliveryPolicy(
    _ url: String, format: NotificationChannel.Format = .webhook, directory: String, attempts: Int = 3,
    timeout: Duration = .seconds(30), deadline: Duration = .seconds(60), retry: RetryPolicy? = nil
) throws -> NotificationPolicy {
    NotificationPolicy(
        channels: [NotificationChannel(name: "test-\(format)", format: format, url: try #require(WebhookURL(url)))],
        attemptTimeout: timeout, deadline: deadline,
        retry: retry ?? RetryPolicy(baseDelay: .milliseconds(20), maxDelay: .milliseconds(80), maxAttempts: attempts, jitter: true),
        fallbackFile: directory + "/notifications_fallback.jsonl")
}

/// The fallback file's lines, each parsed as one JSON object.
private func fallbackLines(_ directory: String) throws -> [[String: Any]] {
    guard let text = try? String(contentsOfFile: directory + "/notifications_fallback.jsonl", encoding: .utf8) else { return [] }
    #expect(text.hasSuffix("\n"))
    return try text.split(separator: "\n").map { line in
        try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
    }
}

/// A sleep that records the delays asked for and returns at once.
private final class RecordedSleeps: Sendable {
    let delays = Mutex<[Duration]>([])
    var sleep: @Sendable (Duration) async -> Void { { [self] delay in delays.withLock { $0.append(delay) } } }
}

@Suite("Notification delivery to a real HTTP receiver", .tags(.webhook))
struct NotificationDeliveryTests {
    @Test(arguments: NotificationChannel.Format.allCases)
    func deliversEachFormatAsJSON(format: NotificationChannel.Format) async throws {
        let receiver = try WebhookReceiver()
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A receiver that answers 200: an attempt timeout a busy machine cannot reach.
        let notifier = Notifier(policy: try deliveryPolicy(receiver.url("/hook?token=abc"), format: format, directory: directory, timeout: .seconds(30)))
        let report = await notifier.deliver([rollbackEvent])
        #expect(report.delivered == 1 && report.failed == 0)
        #expect(report.channels.first?.attempts == 1 && report.channels.first?.retries == 0)
        let request = try #require(receiver.requests.first)
        #expect(receiver.requests.count == 1)
        #expect(request.method == "POST" && request.path == "/hook?token=abc")
        #expect(request.header("Content-Type") == "application/json")
        #expect(request.text == format.payload(for: rollbackEvent))
        #expect(try fallbackLines(directory).isEmpty)
    }

    @Test func aReceiverThatEchoesItsTokenNeverGetsItPrinted() async throws {
        let receiver = try WebhookReceiver(otherwise: .echoing(403))
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let notifier = Notifier(policy: try deliveryPolicy(receiver.url("/services/T0KEN5ECRET?sig=S1GNATURE"), directory: directory, attempts: 1))
        let report = await notifier.deliver([rollbackEvent])
        #expect(report.failed == 1)
        #expect(receiver.requests.count == 1)
        let fallback = try String(contentsOfFile: directory + "/notifications_fallback.jsonl", encoding: .utf8)
        let shown = (report.channels.first?.errors ?? []).joined(separator: "\n") + fallback
        #expect(shown.contains("invalid token"), "the answer is still shown: \(shown)")
        #expect(!shown.contains("T0KEN5ECRET") && !shown.contains("S1GNATURE"), "\(shown)")
    }

    @Test func status500IsNotRetriedAndGoesToTheFallbackFile() async throws {
        let receiver = try WebhookReceiver(otherwise: .status(500))
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let sleeps = RecordedSleeps()
        let notifier = Notifier(policy: try deliveryPolicy(receiver.url(), directory: directory), sleep: sleeps.sleep)
        let report = await notifier.deliver([rollbackEvent])
        #expect(receiver.requests.count == 1)
        #expect(sleeps.delays.withLock { $0 }.isEmpty)
        let channel = try #require(report.channels.first)
        #expect(channel.delivered == 0 && channel.failed == 1 && channel.attempts == 1 && channel.retries == 0)
        #expect(report.writtenToFallback == 1 && report.lost == 0)
        #expect(channel.errors.first?.contains("answered HTTP 500") == true)
        let lines = try fallbackLines(directory)
        #expect(lines.count == 1)
        #expect(lines.first?["channel"] as? String == "test-webhook")
        #expect(lines.first?["error_code"] as? String == "http_status")
        #expect(lines.first?["attempts"] as? Int == 1)
        let event = try #require(lines.first?["event"] as? [String: Any])
        #expect(event["kind"] as? String == "rollback" && event["feature"] as? String == "google")
    }

    @Test func status503TwiceThen200IsDeliveredOnTheThirdAttempt() async throws {
        let receiver = try WebhookReceiver([.status(503), .status(503)], otherwise: .status(200))
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let sleeps = RecordedSleeps()
        let notifier = Notifier(policy: try deliveryPolicy(receiver.url(), directory: directory), sleep: sleeps.sleep)
        let report = await notifier.deliver([rollbackEvent])
        let channel = try #require(report.channels.first)
        #expect(channel.delivered == 1 && channel.failed == 0 && channel.attempts == 3 && channel.retries == 2)
        #expect(receiver.requests.count == 3)
        #expect(Set(receiver.requests.map(\.text)).count == 1)
        // Full jitter: each wait is drawn from zero to 20 ms, then 40 ms.
        let delays = sleeps.delays.withLock { $0 }
        #expect(delays.count == 2)
        #expect(delays.count == 2 && delays[0] <= .milliseconds(20) && delays[1] <= .milliseconds(40))
        #expect(try fallbackLines(directory).isEmpty)
    }

    @Test(arguments: [429, 502, 503, 504])
    func transientStatusesAreRetried(status: Int) async throws {
        let receiver = try WebhookReceiver([.status(status)], otherwise: .status(204))
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let report = await Notifier(policy: try deliveryPolicy(receiver.url(), directory: directory)).deliver([rollbackEvent])
        #expect(report.delivered == 1 && report.channels.first?.retries == 1)
    }

    @Test(arguments: [400, 401, 403, 404, 410, 500, 501, 302])
    func finalStatusesAreNotRetried(status: Int) async throws {
        let receiver = try WebhookReceiver(otherwise: .status(status))
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let report = await Notifier(policy: try deliveryPolicy(receiver.url(), directory: directory)).deliver([rollbackEvent])
        #expect(report.failed == 1 && report.channels.first?.attempts == 1)
        #expect(receiver.requests.count == 1)
        #expect(try fallbackLines(directory).count == 1)
    }

    @Test func aHangingReceiverTimesOutEachAttemptThenFallsBack() async throws {
        let receiver = try WebhookReceiver(otherwise: .hang)
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let notifier = Notifier(policy: try deliveryPolicy(receiver.url(), directory: directory, timeout: .milliseconds(300)))
        let started = ContinuousClock.now
        let report = await notifier.deliver([rollbackEvent])
        let elapsed = started.duration(to: .now)
        let channel = try #require(report.channels.first)
        #expect(channel.failed == 1 && channel.attempts == 3 && channel.retries == 2)
        // Each attempt waited for its timeout; no upper bound: a busy machine only makes it slower.
        #expect(elapsed >= .milliseconds(850))
        #expect(receiver.requests.count == 3)
        #expect(channel.errors.first?.contains("did not answer within") == true)
        #expect(try fallbackLines(directory).first?["error_code"] as? String == "timeout")
    }

    @Test func deliverReturnsByTheDeadline() async throws {
        // 503 is retried. The deadline and the waits are on a clock the test moves, so how
        // busy the machine is changes nothing.
        let receiver = try WebhookReceiver(otherwise: .status(503))
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let policy = try deliveryPolicy(
            receiver.url(), directory: directory, deadline: .milliseconds(1500),
            retry: RetryPolicy(backoff: .fixed, baseDelay: .seconds(1), maxAttempts: 5))
        let clock = ManualClock()
        async let delivered = Notifier(policy: policy, clock: clock).deliver([rollbackEvent, rollbackEvent])
        // The first event's first attempt failed; it waits 1 s for its second.
        try #require(await eventually(within: .seconds(120)) { clock.sleepers == 1 })
        #expect(receiver.requests.count == 1)
        clock.advance(by: .seconds(1))
        let report = await delivered
        // At 1 s the second attempt fails and the next wait would end at 2 s, past the 1.5 s
        // deadline: no retry. The second event then gets one attempt, for the same reason.
        // Without the deadline both would use all 5 attempts (10 in all).
        #expect(report.failed == 2 && report.writtenToFallback == 2)
        #expect(report.channels.first?.attempts == 3)
        #expect(receiver.requests.count == 3)
        #expect(clock.sleepers == 0)
        #expect(try fallbackLines(directory).count == 2)
    }

    @Test func aReceiverThatClosesTheConnectionIsRetriedThenFallsBack() async throws {
        let receiver = try WebhookReceiver(otherwise: .close)
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let report = await Notifier(policy: try deliveryPolicy(receiver.url(), directory: directory)).deliver([rollbackEvent])
        let channel = try #require(report.channels.first)
        #expect(channel.failed == 1 && channel.attempts == 3 && channel.retries == 2)
        #expect(receiver.requests.count == 3)
        #expect(try fallbackLines(directory).first?["error_code"] as? String == "unreachable")
    }

    @Test func aClosedConnectionThenSuccessIsDelivered() async throws {
        let receiver = try WebhookReceiver([.close], otherwise: .status(200))
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let report = await Notifier(policy: try deliveryPolicy(receiver.url(), directory: directory)).deliver([rollbackEvent])
        #expect(report.delivered == 1 && report.channels.first?.attempts == 2)
    }

    @Test func connectionRefusedIsRetriedThenFallsBack() async throws {
        let port = try freeLoopbackPort()  // nothing listens there
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let report = await Notifier(policy: try deliveryPolicy("http://127.0.0.1:\(port)/hook", directory: directory, timeout: .milliseconds(300)))
            .deliver([rollbackEvent])
        let channel = try #require(report.channels.first)
        #expect(channel.failed == 1 && channel.attempts == 3)
        #expect(report.writtenToFallback == 1)
        let line = try #require(try fallbackLines(directory).first)
        #expect(["unreachable", "timeout"].contains(line["error_code"] as? String ?? ""))
    }

    @Test func theFallbackFileHasOneJSONObjectPerLineUnderConcurrentWrites() async throws {
        let failing = try WebhookReceiver(otherwise: .status(500))
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var policy = try deliveryPolicy(failing.url(), directory: directory)
        policy.channels.append(NotificationChannel(name: "second", format: .slack, url: try #require(WebhookURL(failing.url("/other")))))
        let events = (0..<20).map { index in
            NotificationEvent(
                kind: .holdStarted, feature: "feature_\(index)", summary: String(repeating: "long summary \(index) ", count: 200),
                details: ["index": "\(index)"], time: rollbackEvent.time)
        }
        // Two notifiers (as two controllers would) appending to one file at once.
        async let first = Notifier(policy: policy).deliver(events)
        async let second = Notifier(policy: policy).deliver(events)
        let reports = await [first, second]
        #expect(reports.map(\.writtenToFallback) == [40, 40])
        let lines = try fallbackLines(directory)
        #expect(lines.count == 80)
        let keys = Set(lines.compactMap { line -> String? in
            guard let event = line["event"] as? [String: Any], let feature = event["feature"] as? String, let channel = line["channel"] as? String
            else { return nil }
            return "\(channel)/\(feature)"
        })
        #expect(keys.count == 40)
    }

    @Test func eventsAreFilteredPerChannel() async throws {
        let receiver = try WebhookReceiver()
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        var policy = try deliveryPolicy(receiver.url("/all"), directory: directory)
        policy.channels.append(
            NotificationChannel(name: "rollbacks", format: .webhook, url: try #require(WebhookURL(receiver.url("/rollbacks"))), events: [.rollback]))
        var hold = rollbackEvent
        hold.kind = .holdStarted
        let report = await Notifier(policy: policy).deliver([rollbackEvent, hold])
        #expect(report.channels.map(\.delivered) == [2, 1])
        #expect(receiver.requests.filter { $0.path == "/rollbacks" }.map(\.text) == [NotificationChannel.Format.webhook.payload(for: rollbackEvent)])
    }

    @Test func noErrorOrFallbackLineShowsTheURL() async throws {
        let directory = try makeTemporaryDirectory("notify")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let receivers = [try WebhookReceiver(otherwise: .status(403)), try WebhookReceiver(otherwise: .close)]
        let refused = try freeLoopbackPort()
        // A short attempt timeout: AsyncHTTPClient retries a refused connection until it ends.
        var policy = try deliveryPolicy(
            receivers[0].url("/services/T0001/B0002/SECRETslackTOKEN"), format: .slack, directory: directory, timeout: .seconds(2))
        policy.channels += [
            NotificationChannel(name: "closing", format: .discord, url: try #require(WebhookURL(receivers[1].url("/api/webhooks/1/SECRETdiscordTOKEN")))),
            NotificationChannel(name: "refused", format: .webhook, url: try #require(WebhookURL("http://127.0.0.1:\(refused)/x?token=SECRETalertsTOKEN"))),
        ]
        let report = await Notifier(policy: policy).deliver([rollbackEvent])
        #expect(report.failed == 3)
        let file = (try? String(contentsOfFile: policy.fallbackFile, encoding: .utf8)) ?? ""
        let texts = report.channels.flatMap(\.errors) + [file]
        #expect(texts.first?.contains("answered HTTP 403: the webhook refused the request") == true)
        for text in texts {
            for marker in secretMarkers { #expect(!text.contains(marker), "\(marker) shown in: \(text)") }
        }
    }
}
