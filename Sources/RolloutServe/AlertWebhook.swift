import Foundation
import Hummingbird
public import Logging
import Metrics
public import RolloutController
import RolloutGate
import RolloutRedis

/// `POST /v1/alerts`: Alertmanager's webhook (payload version 4). A firing alert whose
/// feature label names a feature of the policy runs that feature's evaluation at once, as
/// `rollout watch` does (rollback checks act, promotions are held); one labelled
/// `rollout_action="rollback"` forces the rollback without waiting for the checks. Each
/// (fingerprint, startsAt) is acted on once across every server sharing the policy's Redis:
/// its claim is `rollout:alert:<sha256 hex of fingerprint NUL startsAt>`.
public struct AlertWebhook: Sendable {
    /// The controller that evaluates (the policy given to `rollout serve --config`).
    public let controller: Controller
    /// The label naming the feature (`--alert-feature-label`, default `feature`).
    public let featureLabel: String
    private let redis: RedisClient
    private let logger: Logger

    /// How long a claim lasts once acted on: Alertmanager resends a firing alert every
    /// `repeat_interval` (4 h by default) with the same startsAt, and each is a duplicate.
    public static let doneTTL = Duration.seconds(7 * 24 * 3600)

    /// A webhook evaluating with `controller`, claims in the policy's Redis.
    public init(controller: Controller, featureLabel: String = "feature", logger: Logger) {
        self.controller = controller
        self.featureLabel = featureLabel
        self.logger = logger
        redis = RedisClient(url: controller.policy.redis)
    }

    /// How long a claim of an alert being acted on lasts: past it (a server that died while
    /// acting), a retry acts. At least a minute, and longer than an evaluation may hold its lock.
    var pendingTTL: Duration { max(.seconds(60), controller.lockTTL + .seconds(10)) }

    /// Adds `POST /v1/alerts` (scope `alerts`) to `router`. Without a webhook (no `--config`) the
    /// route answers 501 with a problem saying so: Alertmanager counts it as a failed
    /// notification and retries, and nothing is lost once the server has a policy.
    static func addRoute(to routes: inout Routes, webhook: AlertWebhook?, server: FlagServer) {
        routes.add(.post, "/v1/alerts") { request, _ -> Response in
            if let refusal = server.refusal(request, needing: .alerts) { return refusal }
            var request = request
            let body = try await request.collectBody(upTo: FlagServer.maximumBodySize)
            guard let webhook else {
                return Problem(
                    .webhookNotConfigured, status: 501,
                    detail: "rollout serve was started without --config: the webhook needs the controller's policy (rollout serve --config rollout.yaml).").response
            }
            return await webhook.answer(Array(buffer: body))
        }
    }

    /// The answer to one delivery.
    func answer(_ body: [UInt8]) async -> Response {
        let payload: AlertmanagerPayload
        switch AlertmanagerPayload.parse(body) {
        case .failure(let fault):
            logger.warning("Alertmanager payload refused", metadata: ["alert.field": "\(fault.field)", "error": "\(fault.detail)"])
            return Problem(.invalidAlertPayload, status: 400, detail: fault.detail, field: fault.field.isEmpty ? nil : fault.field).response
        case .success(let parsed): payload = parsed
        }
        var results: [AlertResult] = []
        var unavailable: String?
        var inProgress = false
        for alert in payload.alerts {
            if let reason = unavailable {
                results.append(AlertResult(alert, outcome: .notActed, detail: "not acted on: \(reason); Alertmanager's retry acts"))
                continue
            }
            let result = await handle(alert)
            if result.outcome == .unavailable { unavailable = result.detail }
            if result.outcome == .inProgress { inProgress = true }
            results.append(result)
        }
        for result in results {
            Counter(label: "rollout_serve_alerts_total", dimensions: [("outcome", result.outcome.rawValue)]).increment()
        }
        let encoded = AlertAnswer(receiver: payload.receiver, groupKey: payload.groupKey, alerts: results)
        if let unavailable {
            return Problem(
                .alertDependencyUnavailable, status: 503,
                detail: "\(unavailable). The alerts not acted on were released: Alertmanager retries a 5xx, and its retry acts.",
                alerts: results).response
        }
        if inProgress {
            return Problem(
                .alertInProgress, status: 503,
                detail: "Another delivery of the same alert (fingerprint and startsAt) is being acted on now. Alertmanager retries a 5xx; the retry answers with its outcome.",
                alerts: results).response
        }
        return json(encoded, status: .ok)
    }

    /// One alert.
    private func handle(_ alert: AlertmanagerPayload.Alert) async -> AlertResult {
        let name = alert.labels["alertname"]
        if alert.status == "resolved" {
            logger.info(
                "Resolved alert logged; resolving changes nothing",
                metadata: ["alert.name": "\(name ?? "")", "alert.fingerprint": "\(alert.fingerprint)", "feature.name": "\(alert.labels[featureLabel] ?? "")"])
            return AlertResult(alert, feature: alert.labels[featureLabel], outcome: .resolvedLogged, detail: "resolved: logged, nothing changes")
        }
        guard let label = alert.labels[featureLabel] else {
            return AlertResult(alert, outcome: .skipped, detail: "no label \(featureLabel): not about a feature")
        }
        guard let feature = try? FeatureName(label), controller.policy.features.contains(where: { $0.feature == feature }) else {
            return AlertResult(alert, feature: label, outcome: .skipped, detail: "\(featureLabel)=\(label) is not a feature of the policy")
        }
        let action = alert.labels["rollout_action"]
        guard action == nil || action == "rollback" else {
            return AlertResult(alert, feature: label, outcome: .skipped, detail: "rollout_action=\(action ?? "") is not an action (only rollback is)")
        }
        let key = Self.claimKey(fingerprint: alert.fingerprint, startsAt: alert.startsAt)
        let token = "pending:" + String(UInt64.random(in: 0...UInt64.max), radix: 16)
        do {
            let claimed = try await redis.send(RedisCommand("SET", key, token, "NX", "PX", String(pendingTTL.wholeMilliseconds)))
            if claimed.isNull {
                let previous = (try? await redis.send("GET", key).string) ?? nil
                logger.info(
                    "Duplicate alert delivery: nothing done",
                    metadata: ["alert.name": "\(name ?? "")", "alert.fingerprint": "\(alert.fingerprint)", "feature.name": "\(label)"])
                guard let previous, previous.hasPrefix("done:") else {
                    // Another delivery is acting now, or one died while acting (its claim expires):
                    // a 503, so that Alertmanager's retry finds the outcome, or acts.
                    return AlertResult(
                        alert, feature: label, outcome: .inProgress, detail: "another delivery of this alert is being acted on; the retry will tell its outcome")
                }
                return AlertResult(alert, feature: label, outcome: .duplicate, detail: "duplicate of a delivery already handled: " + previous.dropFirst("done:".count))
            }
        } catch {
            return AlertResult(alert, feature: label, outcome: .unavailable, detail: "Redis: \(error)")
        }

        let requester = Self.requester(alert)
        let forced = action == "rollback" ? ForcedRollback(requestedBy: requester) : nil
        let marker = ChangeMarker(key: key, value: "done:rolled_back", ttl: Self.doneTTL)
        let report = await controller.run(features: [feature], promotions: false, forcedRollback: forced, marker: marker, requestedBy: requester)
        let result = Self.result(of: report.features.first, alert: alert, feature: label, forced: forced != nil, dryRun: report.dryRun)
        if result.outcome == .unavailable {
            // Nothing was changed (or the change set the claim to done in its own step, which
            // this compare-and-delete leaves): the retry acts.
            _ = try? await redis.evaluate(Self.releaseClaim, keys: [key], arguments: [token])
        } else {
            _ = try? await redis.send(
                RedisCommand("SET", key, "done:" + result.summary, "XX", "PX", String(Self.doneTTL.wholeMilliseconds)))
        }
        logger.notice(
            "Alert handled",
            metadata: [
                "alert.name": "\(name ?? "")", "alert.fingerprint": "\(alert.fingerprint)", "feature.name": "\(label)",
                "alert.outcome": "\(result.outcome.rawValue)", "alert.detail": "\(result.detail)",
            ])
        if report.features.first?.applied == true {
            // Notifications beside the answer: a slow chat webhook never delays Alertmanager's.
            let controller = controller
            Task { _ = await controller.notify(report) }
        }
        return result
    }

    /// The alert as named in the audit record: its alertname and fingerprint, folded to a safe
    /// length; never its generatorURL (a query string may carry anything).
    static func requester(_ alert: AlertmanagerPayload.Alert) -> String {
        func clean(_ text: String, _ limit: Int) -> String {
            String(text.unicodeScalars.filter { $0.properties.generalCategory != .control }.map(Character.init).prefix(limit))
        }
        let name = alert.labels["alertname"].map { clean($0, 128) } ?? "(no alertname)"
        return "alert \(name) (fingerprint \(clean(alert.fingerprint, 64)))"
    }

    /// `rollout:alert:<hex SHA-256 of fingerprint NUL startsAt>`.
    static func claimKey(fingerprint: String, startsAt: String) -> String {
        "rollout:alert:" + sha256Hex(Data(fingerprint.utf8) + [0] + Data(startsAt.utf8))
    }

    /// Deletes a claim only while it is still this delivery's pending one.
    static let releaseClaim = RedisScript(
        "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0")

    /// What the run did for the alert.
    static func result(of report: FeatureReport?, alert: AlertmanagerPayload.Alert, feature: String, forced: Bool, dryRun: Bool) -> AlertResult {
        guard let report else { return AlertResult(alert, feature: feature, outcome: .skipped, detail: "not evaluated") }
        var result = AlertResult(alert, feature: feature, outcome: .held, detail: report.explanation.isEmpty ? report.verdict?.explanation ?? "" : report.explanation)
        result.forced = forced
        result.from = report.state?.rolloutPercent.description
        if let reason = report.holdReason {
            result.reason = reason.rawValue
            switch reason {
            case .redisError, .promUnreachable, .locked: result.outcome = .unavailable
            case .paused, .disabled, .atRollbackTarget: result.outcome = .nothingToDo
            default: break
            }
            return result
        }
        if report.result == "rollback" {
            result.outcome = report.applied ? .rolledBack : (dryRun ? .wouldRollBack : .held)
            result.to = report.targetPercent?.description
            result.pausedByFlapProtection = report.pausedByFlapProtection
            result.guardLocked = report.guardEvent == .locked
        }
        return result
    }
}

/// What happened to one alert.
struct AlertResult: Encodable, Sendable {
    enum Outcome: String, Encodable, Sendable {
        case rolledBack = "rolled_back"
        case wouldRollBack = "would_roll_back"
        case held
        case nothingToDo = "nothing_to_do"
        case duplicate
        case skipped
        case resolvedLogged = "resolved_logged"
        /// Redis or Prometheus unreachable (or another controller holding the lock): released, retried.
        case unavailable
        /// Not tried: an earlier alert of the delivery found Redis or Prometheus unreachable.
        case notActed = "not_acted"
        /// Another delivery of the alert holds its claim, acting now (or it died acting, and the
        /// claim expires): 503, so the retry finds the outcome.
        case inProgress = "in_progress"
    }

    var fingerprint: String
    var alertname: String?
    var status: String
    var feature: String?
    var outcome: Outcome
    var forced = false
    var from: String?
    var to: String?
    var reason: String?
    var detail: String
    var guardLocked = false
    var pausedByFlapProtection = false

    init(_ alert: AlertmanagerPayload.Alert, feature: String? = nil, outcome: Outcome, detail: String) {
        fingerprint = alert.fingerprint
        alertname = alert.labels["alertname"]
        status = alert.status
        self.feature = feature
        self.outcome = outcome
        self.detail = detail
    }

    /// The claim's value once acted on: `rolled_back 10% -> 0%`, `held watching`.
    var summary: String {
        switch outcome {
        case .rolledBack: return "rolled_back \(from ?? "?")% -> \(to ?? "?")%"
        case .held, .nothingToDo: return outcome.rawValue + (reason.map { " " + $0 } ?? "")
        default: return outcome.rawValue
        }
    }

    enum CodingKeys: String, CodingKey {
        case fingerprint, alertname, status, feature, outcome, forced, from, to, reason, detail
        case guardLocked = "guard_locked", pausedByFlapProtection = "paused_by_flap_protection"
    }
}

/// The 200 answer.
private struct AlertAnswer: Encodable {
    var receiver: String?
    var groupKey: String?
    var alerts: [AlertResult]
}

/// Alertmanager's webhook body, version 4. Strict about the shape of what is read (a wrong
/// type or a missing field is a 400 naming it), lenient about fields it does not know.
struct AlertmanagerPayload: Decodable, Sendable {
    var version: String
    var status: String
    var receiver: String?
    var groupKey: String?
    var truncatedAlerts: Int?
    var groupLabels: [String: String]?
    var commonLabels: [String: String]?
    var commonAnnotations: [String: String]?
    var externalURL: String?
    var alerts: [Alert]

    struct Alert: Decodable, Sendable {
        var status: String
        var labels: [String: String]
        var annotations: [String: String]?
        var startsAt: String
        var endsAt: String?
        var generatorURL: String?
        var fingerprint: String
    }

    /// A field at fault and what is wrong with it.
    struct Fault: Error {
        var field: String
        var detail: String
    }

    /// Decodes and checks `body`.
    static func parse(_ body: [UInt8]) -> Result<AlertmanagerPayload, Fault> {
        let payload: AlertmanagerPayload
        do {
            payload = try JSONDecoder().decode(AlertmanagerPayload.self, from: Data(body))
        } catch let error as DecodingError {
            return .failure(fault(error))
        } catch {
            return .failure(Fault(field: "", detail: "the body is not JSON"))
        }
        guard payload.version == "4" else {
            return .failure(Fault(field: "version", detail: "version is \"\(payload.version.prefix(20))\": only Alertmanager's webhook version \"4\" is read"))
        }
        guard ["firing", "resolved"].contains(payload.status) else {
            return .failure(Fault(field: "status", detail: "status must be \"firing\" or \"resolved\""))
        }
        for (index, alert) in payload.alerts.enumerated() {
            guard ["firing", "resolved"].contains(alert.status) else {
                return .failure(Fault(field: "alerts[\(index)].status", detail: "alerts[\(index)].status must be \"firing\" or \"resolved\""))
            }
            guard !alert.fingerprint.isEmpty, alert.fingerprint.unicodeScalars.count <= 256 else {
                return .failure(Fault(field: "alerts[\(index)].fingerprint", detail: "alerts[\(index)].fingerprint must be 1 to 256 characters"))
            }
            guard !alert.startsAt.isEmpty, alert.startsAt.unicodeScalars.count <= 64 else {
                return .failure(Fault(field: "alerts[\(index)].startsAt", detail: "alerts[\(index)].startsAt must be an RFC 3339 time"))
            }
        }
        return .success(payload)
    }

    /// The decoder's error as the field it names (`alerts[2].labels`).
    private static func fault(_ error: DecodingError) -> Fault {
        func path(_ keys: [any CodingKey]) -> String {
            keys.reduce("") { path, key in
                if let index = key.intValue { return path + "[\(index)]" }
                return path.isEmpty ? key.stringValue : path + "." + key.stringValue
            }
        }
        switch error {
        case .keyNotFound(let key, let context):
            let field = path(context.codingPath + [key])
            return Fault(field: field, detail: "\(field) is required")
        case .typeMismatch(let type, let context):
            let field = path(context.codingPath)
            let expected = type == String.self ? "a string" : type is [Any].Type ? "an array" : type == Int.self ? "an integer" : "an object of strings"
            return Fault(field: field, detail: field.isEmpty ? "the body must be a JSON object" : "\(field) must be \(expected)")
        case .valueNotFound(_, let context):
            let field = path(context.codingPath)
            return Fault(field: field, detail: "\(field) must not be null")
        case .dataCorrupted(let context):
            let field = path(context.codingPath)
            return Fault(field: field, detail: field.isEmpty ? "the body is not JSON" : "\(field) is not valid")
        @unknown default:
            return Fault(field: "", detail: "the body is not a webhook payload")
        }
    }
}

private func json(_ value: some Encodable, status: HTTPResponse.Status, contentType: String = "application/json") -> Response {
    jsonResponse(OFREP.encode(value), status: status, contentType: contentType)
}
