import Foundation
import Hummingbird
import Logging
import RolloutAdmin
import RolloutAudit
import RolloutGate
import RolloutRedis

/// The operator API of `rollout serve` (docs/serve.md, docs/openapi.yaml): features' status
/// read from Redis (scope `read`) and the CLI's switches over HTTP (scope `operate`), through
/// the same ``FeatureStore`` as `rollout flags`, each change audited as `api:<token name>`.
struct OperatorAPI: Sendable {
    let server: FlagServer
    let redis: RedisClient
    let auditLog: AuditLog
    let replicas: ReplicaAcknowledgement
    let logger: Logger

    /// The author of changes made without a tokens file (loopback only).
    static let anonymousAuthor = "api:anonymous"
    /// The bounds of `?limit=` on the audit route, and its default.
    static let auditLimits = 1...1000
    static let defaultAuditLimit = 50
    /// The bounds of `?days=` on the history route, and its default.
    static let historyDays = 1...30
    static let defaultHistoryDays = 7
    /// The most percent changes a history reads (newest first): a feature changed more often
    /// than this in the window shows its newest ones.
    static let maximumHistoryRecords = 10_000
    /// The longest reason taken, in characters.
    static let maximumReasonLength = 1000

    /// The actions of `POST /v1/features/{feature}/{action}`.
    enum Action: String, CaseIterable, Sendable {
        case pause, resume, kill, unkill
        case setPercent = "set-percent"
    }

    func register(on routes: inout Routes) {
        let api = self
        routes.add(.get, "/v1/features") { request, _ -> Response in
            if let refusal = api.server.refusal(request, needing: .read) { return refusal }
            return await api.answer { () async throws(Problem) in try await api.list() }
        }
        routes.add(.get, "/v1/features/{feature}") { request, context -> Response in
            if let refusal = api.server.refusal(request, needing: .read) { return refusal }
            let name = context.parameters.get("feature") ?? ""
            return await api.answer { () async throws(Problem) in try await api.detail(try api.existing(name)) }
        }
        routes.add(.get, "/v1/features/{feature}/audit") { request, context -> Response in
            if let refusal = api.server.refusal(request, needing: .read) { return refusal }
            let name = context.parameters.get("feature") ?? ""
            let limitText = request.uri.queryParameters.get("limit")
            return await api.answer { () async throws(Problem) in
                let limit = try Self.auditLimit(limitText)
                let feature = try await api.existing(name)
                let records = try await api.redisRead { () async throws(RedisError) in
                    try await AuditTrail(redis: api.redis).newest(of: feature, limit: limit)
                }
                return AuditAnswer(feature: feature.rawValue, records: records.map(RecordJSON.init))
            }
        }
        routes.add(.get, "/v1/features/{feature}/history") { request, context -> Response in
            if let refusal = api.server.refusal(request, needing: .read) { return refusal }
            let name = context.parameters.get("feature") ?? ""
            let daysText = request.uri.queryParameters.get("days")
            return await api.answer { () async throws(Problem) in
                let days = try Self.historyDays(daysText)
                return try await api.history(of: try await api.existing(name), days: days)
            }
        }
        for action in Action.allCases {
            routes.add(.post, "/v1/features/{feature}/\(action.rawValue)") { request, context -> Response in
                let author: String
                switch api.server.authorize(request, needing: .operate) {
                case .refused(let refusal): return refusal
                case .allowed(let caller): author = caller.name.map { "api:\($0)" } ?? Self.anonymousAuthor
                }
                let name = context.parameters.get("feature") ?? ""
                var request = request
                let body: [UInt8]
                do {
                    body = Array(buffer: try await request.collectBody(upTo: FlagServer.maximumBodySize))
                } catch let error as any HTTPResponseError where error.status == .contentTooLarge {
                    return Problem.bodyTooLarge.response
                }
                return await api.answer { () async throws(Problem) in
                    let change = try ActionBody.parse(body, for: action)
                    let feature = try await api.existing(name)
                    return try await api.perform(action, change, on: feature, author: author)
                }
            }
        }
    }

    // MARK: Reading

    /// Every feature with its status, and the stray keys.
    func list() async throws(Problem) -> ListAnswer {
        let store = FeatureStore(redis: redis, auditLog: auditLog)
        let (features, stray) = try await redisRead { () async throws(RedisError) in try await store.listFeatures() }
        let statuses = try await status(of: features)
        return ListAnswer(features: statuses, strayKeys: stray, snapshot: snapshot)
    }

    /// One feature's status with the gate's snapshot.
    func detail(_ feature: FeatureName, warning: String? = nil) async throws(Problem) -> DetailAnswer {
        let statuses = try await status(of: [feature])
        guard let status = statuses.first else { throw Problem.unknownFeature(feature.rawValue, detail: nil) }
        return DetailAnswer(status: status, snapshot: snapshot, warning: warning)
    }

    /// `name` as a feature that has at least one key; 404 otherwise.
    func existing(_ name: String) async throws(Problem) -> FeatureName {
        guard let feature = try? FeatureName(name) else {
            throw Problem.unknownFeature(name, detail: FeatureName.validationError(name)?.message)
        }
        let store = FeatureStore(redis: redis, auditLog: auditLog)
        let marks = try await redisRead { () async throws(RedisError) in try await store.controllerMarks([feature]) }
        guard marks.first?.exists == true else { throw Problem.unknownFeature(name, detail: nil) }
        return feature
    }

    /// The status of `features`: their keys, the controller's marks, and the newest audit
    /// record of each. The stream is read newest first until every feature has its record, so
    /// a feature never changed through the tools costs a read of the whole stream (trimmed to
    /// about ``AuditTrail/maxLength`` records: about 0.3 s on loopback, docs/serve.md).
    func status(of features: [FeatureName]) async throws(Problem) -> [FeatureStatus] {
        let store = FeatureStore(redis: redis, auditLog: auditLog)
        let (states, marks, changes) = try await redisRead { () async throws(RedisError) in
            (
                try await store.read(features), try await store.controllerMarks(features),
                try await AuditTrail(redis: redis).newestOfEach(Set(features))
            )
        }
        return features.indices.map { index in
            FeatureStatus(features[index], states[index], marks[index], lastChange: changes[features[index]])
        }
    }

    /// The gate's snapshot now.
    var snapshot: SnapshotJSON {
        let gate = server.gate
        let freshness = gate.hasSnapshot ? (gate.currentFreshness()?.code ?? "expired") : "none"
        return SnapshotJSON(loaded: gate.hasSnapshot, ageMs: gate.snapshotAge.map(\.wholeMilliseconds), freshness: freshness)
    }

    /// Runs a read of Redis; a failure is 503.
    func redisRead<T>(_ read: () async throws(RedisError) -> T) async throws(Problem) -> T {
        do {
            return try await read()
        } catch {
            throw Problem.redisUnavailable(error)
        }
    }

    /// The feature's percent over the last `days` days from its audit records, and its checks'
    /// values over them from Prometheus when the server has a policy.
    func history(of feature: FeatureName, days: Int, until: Timestamp = Timestamp.now()) async throws(Problem) -> HistoryAnswer {
        let since = until.advanced(by: .seconds(-Int64(days) * 86_400))
        let store = FeatureStore(redis: redis, auditLog: auditLog)
        let (states, records) = try await redisRead { () async throws(RedisError) in
            (
                try await store.read([feature]),
                try await AuditTrail(redis: redis).records(of: feature, since: since, limit: Self.maximumHistoryRecords)
            )
        }
        let current = (try? states.first?.get())?.rolloutPercent
        let percent = PercentHistory.points(newestFirst: records, current: current, since: since, until: until)
        let checks = await server.history?.checks(of: feature, since: since, until: until) ?? []
        return HistoryAnswer(feature: feature.rawValue, since: since.description, until: until.description, percent: percent, checks: checks)
    }

    static func historyDays(_ text: String?) throws(Problem) -> Int {
        try wholeNumber(text, named: "days", in: historyDays, default: defaultHistoryDays)
    }

    static func auditLimit(_ text: String?) throws(Problem) -> Int {
        try wholeNumber(text, named: "limit", in: auditLimits, default: defaultAuditLimit)
    }

    /// The query parameter `name`, given as `text`: `fallback` when absent, 400 when it is not
    /// a whole number in `bounds`.
    static func wholeNumber(_ text: String?, named name: String, in bounds: ClosedRange<Int>, default fallback: Int) throws(Problem) -> Int {
        guard let text else { return fallback }
        guard let value = Int(text), bounds.contains(value) else {
            throw Problem(
                .invalidParameter, status: 400,
                detail: "\(name) must be a whole number from \(bounds.lowerBound) to \(bounds.upperBound); it was '\(text.prefix(40))'.",
                field: name)
        }
        return value
    }

    // MARK: Acting

    /// Makes the change as `rollout flags` does, recorded by `author`; answers the new status.
    func perform(_ action: Action, _ body: ActionBody, on feature: FeatureName, author: String) async throws(Problem) -> DetailAnswer {
        let store = FeatureStore(redis: redis, auditLog: auditLog, author: author, replicas: replicas)
        var warning: String?
        do {
            switch action {
            case .pause: try await store.setPaused(feature, true, reason: body.reason)
            case .resume: try await store.setPaused(feature, false, reason: body.reason)
            case .kill: try await store.setEnabled(feature, false, reason: body.reason)
            case .unkill: try await store.setEnabled(feature, true, reason: body.reason)
            case .setPercent:
                guard let percent = body.percent else { throw Problem.missing("percent") }
                try await store.setPercent(feature, to: percent, reason: body.reason)
            }
        } catch let error as AdminError {
            switch error.cause {
            case .recordedNotLogged, .notReplicated:
                // Made and recorded in Redis, but the audit log was not written or too few
                // replicas acknowledged it: the answer is the new state, with the warning.
                warning = error.description
                logger.error("An operator change was made, with a warning", metadata: ["feature.name": "\(feature)", "error": "\(error)"])
            default:
                throw Problem(error)
            }
        } catch let problem as Problem {
            throw problem
        } catch {
            throw Problem(.internalError, status: 500, detail: "\(error)")
        }
        logger.notice("Operator change", metadata: ["feature.name": "\(feature)", "rollout.change": "\(action.rawValue)", "rollout.by": "\(author)"])
        return try await detail(feature, warning: warning)
    }

    // MARK: Answers

    /// The JSON answer of `make`, or its problem.
    func answer<Answer: Encodable>(_ make: () async throws(Problem) -> Answer) async -> Response {
        do {
            return jsonResponse(Self.encode(try await make()), status: .ok, contentType: "application/json")
        } catch {
            return error.response
        }
    }

    static func encode(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        // The answers' members are snake_case, as `rollout --json` prints them.
        encoder.keyEncodingStrategy = .convertToSnakeCase
        return (try? encoder.encode(value)).map { [UInt8]($0) } ?? Array("{}".utf8)
    }
}

/// The body of an action: `{"reason": "...", "percent": 12.5}`.
struct ActionBody: Sendable {
    var reason: String
    var percent: RolloutPercent?

    /// Parses `body` for `action`: a JSON object with a non-empty `reason` string and, for
    /// set-percent only, `percent` (a number or a string, 0 to 100, at most three decimals,
    /// as `rollout flags set-percent` takes it). Any other member is refused.
    static func parse(_ body: [UInt8], for action: OperatorAPI.Action) throws(Problem) -> ActionBody {
        var reader = JSONReader(body)
        var reason: JSONReader.Value?
        var percent: JSONReader.Value?
        var unexpected: String?
        do {
            try reader.object { name, reader in
                let value = try reader.value()
                switch name {
                case "reason": reason = value
                case "percent" where action == .setPercent: percent = value
                default: unexpected = unexpected ?? name
                }
            }
            guard reader.atEnd() else { throw JSONReader.Malformed() }
        } catch {
            throw Problem(
                .malformedBody, status: 400,
                detail: "The request body must be a JSON object: {\"reason\": \"why\"\(action == .setPercent ? ", \"percent\": 25" : "")}.")
        }
        if let unexpected {
            throw Problem(
                .invalidField, status: 400,
                detail: "\(unexpected.prefix(40)) is not a member of this action's body: give \(action == .setPercent ? "reason and percent" : "reason") only.",
                field: String(unexpected.prefix(64)))
        }
        guard case .string(let text)? = reason else {
            if reason == nil || reason == .null { throw Problem.missing("reason") }
            throw Problem(.invalidField, status: 400, detail: "reason must be a string: why, for the audit log.", field: "reason")
        }
        let folded = AuditLog.singleLine(text)
        guard !folded.isEmpty else { throw Problem.missing("reason") }
        guard folded.count <= OperatorAPI.maximumReasonLength else {
            throw Problem(.invalidField, status: 400, detail: "reason is longer than \(OperatorAPI.maximumReasonLength) characters.", field: "reason")
        }
        guard action == .setPercent else { return ActionBody(reason: text) }
        let percentText: String
        switch percent {
        case .number(let literal)?: percentText = String(decoding: literal, as: UTF8.self)
        case .string(let literal)?: percentText = literal
        case nil, .null?: throw Problem.missing("percent")
        default: throw Problem.invalidPercent("a \(percent.map(kind) ?? "value")")
        }
        guard let value = RolloutPercent(parsing: percentText) else { throw Problem.invalidPercent("'\(percentText.prefix(40))'") }
        return ActionBody(reason: text, percent: value)
    }

    private static func kind(_ value: JSONReader.Value) -> String {
        switch value {
        case .bool: return "boolean"
        case .array: return "list"
        case .object: return "object"
        default: return "value"
        }
    }
}

/// An RFC 9457 problem: `application/problem+json` with `type`, `title`, `status`, `detail`,
/// and `field` naming the request member at fault when one is.
struct Problem: Error, Sendable, Encodable {
    /// The kinds of problem, each with its `type` URI and `title`.
    enum Kind: String, Sendable {
        case unknownFeature = "unknown-feature"
        case invalidParameter = "invalid-parameter"
        case malformedBody = "malformed-body"
        case invalidField = "invalid-field"
        case bodyTooLarge = "body-too-large"
        case redisUnavailable = "redis-unavailable"
        case auditLogUnwritable = "audit-log-unwritable"
        case changeUnconfirmed = "change-unconfirmed"
        case conflict = "conflict"
        case corruptState = "corrupt-state"
        case internalError = "internal-error"
        case webhookNotConfigured = "webhook-not-configured"
        case invalidAlertPayload = "invalid-alert-payload"
        case alertDependencyUnavailable = "alert-dependency-unavailable"
        case alertInProgress = "alert-in-progress"

        var title: String {
            switch self {
            case .unknownFeature: return "No such feature"
            case .invalidParameter: return "Invalid query parameter"
            case .malformedBody: return "The request body is not JSON"
            case .invalidField: return "Invalid request member"
            case .bodyTooLarge: return "Request body too large"
            case .redisUnavailable: return "Redis is unreachable"
            case .auditLogUnwritable: return "The audit log cannot be written"
            case .changeUnconfirmed: return "The change was not confirmed"
            case .conflict: return "The feature changed meanwhile"
            case .corruptState: return "The feature's keys are invalid"
            case .internalError: return "Internal error"
            case .webhookNotConfigured: return "The Alertmanager webhook is not configured"
            case .invalidAlertPayload: return "The body is not an Alertmanager webhook payload (version 4)"
            case .alertDependencyUnavailable: return "Redis or Prometheus is unreachable"
            case .alertInProgress: return "Another delivery of an alert is being acted on"
            }
        }
    }

    let type: String
    let title: String
    let status: Int
    let detail: String
    let field: String?
    let feature: String?
    /// The webhook's per-alert results, when it acted on some before failing.
    let alerts: [AlertResult]?

    init(_ kind: Kind, status: Int, detail: String, field: String? = nil, feature: String? = nil, alerts: [AlertResult]? = nil) {
        type = "urn:rollout-gate:problem:" + kind.rawValue
        title = kind.title
        self.status = status
        self.detail = detail
        self.field = field
        self.feature = feature
        self.alerts = alerts
    }

    static func unknownFeature(_ name: String, detail: String?) -> Problem {
        let shown = String(name.prefix(80))
        return Problem(
            .unknownFeature, status: 404,
            detail: detail ?? "No key of \(shown) exists: `rollout flags init \(shown)` creates it.", feature: shown)
    }

    static func missing(_ field: String) -> Problem {
        Problem(
            .invalidField, status: 400,
            detail: field == "reason" ? "reason is required: say why, for the audit log." : "\(field) is required.", field: field)
    }

    static func invalidPercent(_ given: String) -> Problem {
        Problem(
            .invalidField, status: 400, detail: "percent \(given) is not a percent from 0 to 100 with at most three decimals (e.g. 10, 0.5, 37.125).",
            field: "percent")
    }

    static let bodyTooLarge = Problem(.bodyTooLarge, status: 413, detail: "The request body is larger than \(FlagServer.maximumBodySize / 1024) KiB.")

    /// Redis did not answer a read (the detail names the failure, never the URL's password).
    static func redisUnavailable(_ error: RedisError) -> Problem {
        Problem(.redisUnavailable, status: 503, detail: "Redis did not answer (\(error.code)): \(error.message)")
    }

    /// The problem of a change `FeatureStore` refused or could not confirm.
    init(_ error: AdminError) {
        switch error.cause {
        case .redis(let redis): self = .redisUnavailable(redis)
        case .auditLog: self.init(.auditLogUnwritable, status: 500, detail: error.description)
        case .unconfirmed: self.init(.changeUnconfirmed, status: 503, detail: error.description)
        case .conflict: self.init(.conflict, status: 409, detail: error.description)
        case .corruptState: self.init(.corruptState, status: 409, detail: error.description)
        case .invalidInput: self.init(.invalidField, status: 400, detail: error.description)
        case .recordedNotLogged, .notReplicated: self.init(.internalError, status: 500, detail: error.description)
        }
    }

    var response: Response {
        jsonResponse(OperatorAPI.encode(self), status: HTTPResponse.Status(code: status), contentType: "application/problem+json")
    }
}

// MARK: The answers' JSON (docs/openapi.yaml describes them)

/// `GET /v1/features`.
struct ListAnswer: Encodable {
    let features: [FeatureStatus]
    let strayKeys: [String]
    let snapshot: SnapshotJSON
}

/// `GET /v1/features/{feature}` and every action: the status and the gate's snapshot.
struct DetailAnswer: Encodable {
    let status: FeatureStatus
    let snapshot: SnapshotJSON
    /// Set when the change was made but the Markdown audit log was not written.
    let warning: String?

    enum CodingKeys: String, CodingKey { case snapshot, warning }

    func encode(to encoder: any Encoder) throws {
        try status.encode(to: encoder)
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(snapshot, forKey: .snapshot)
        try container.encodeIfPresent(warning, forKey: .warning)
    }
}

/// `GET /v1/features/{feature}/audit`.
struct AuditAnswer: Encodable {
    let feature: String
    let records: [RecordJSON]
}

/// The gate's snapshot: whether one is loaded, its age, how current checks are.
struct SnapshotJSON: Encodable {
    let loaded: Bool
    let ageMs: Int64?
    let freshness: String
}

/// One feature as Redis holds it now.
struct FeatureStatus: Encodable {
    let feature: String
    /// The dashboard's badge: see ``FeatureBadge``.
    let status: FeatureBadge
    let exists: Bool
    let valid: Bool
    let enabled: Bool?
    let rolloutPercent: Double?
    let internalOnly: Bool?
    let paused: Bool?
    let pausedReason: String?
    let frozen: Bool
    let bucketing: String?
    let lastPercent: Double?
    let lastChangeTime: String?
    let `guard`: GuardJSON?
    let invalidKeys: [InvalidKeyJSON]
    let lastChange: RecordJSON?
    /// The controller's last verdict (`flags:<f>:last_verdict`); absent when none is readable.
    let lastVerdict: VerdictJSON?

    init(_ feature: FeatureName, _ result: Result<FeatureState, InvalidFeatureState>, _ marks: ControllerMarks, lastChange: AuditRecord?) {
        self.feature = feature.rawValue
        let state = try? result.get()
        exists = marks.exists
        valid = state != nil
        enabled = state?.enabled
        rolloutPercent = state.map { Double($0.rolloutPercent.thousandths) / 1000 }
        internalOnly = state?.internalOnly
        paused = state?.paused
        pausedReason = marks.pausedReason
        // Flap protection pauses with a reason; a resume clears both.
        frozen = state?.paused == true && marks.pausedReason != nil
        bucketing = state?.bucketing.rawValue
        lastPercent = state?.lastPercent.map { Double($0.thousandths) / 1000 }
        lastChangeTime = state?.lastChangeTime?.description
        `guard` = marks.guardLock.map(GuardJSON.init)
        if case .failure(let invalid) = result {
            invalidKeys = invalid.problems.map { InvalidKeyJSON(key: $0.key, message: $0.message) }
        } else {
            invalidKeys = []
        }
        self.lastChange = lastChange.map(RecordJSON.init)
        lastVerdict = marks.lastVerdict.map(VerdictJSON.init)
        let holdReason = marks.lastVerdict.flatMap { $0.result == .hold ? $0.reason : nil }
        status = FeatureBadge.of(
            valid: state != nil, enabled: state?.enabled ?? true, paused: state?.paused ?? false, frozen: frozen,
            guardLocked: marks.guardLock != nil, lastHoldReason: holdReason, thousandths: state?.rolloutPercent.thousandths ?? 0)
    }
}

/// The controller's last verdict: promote, rollback or hold, when, and the reason code.
struct VerdictJSON: Encodable {
    let result: String
    let time: String
    let reason: String

    init(_ verdict: LastVerdict) {
        result = verdict.result.rawValue
        time = verdict.time.description
        reason = verdict.reason
    }
}

/// A guard lock: its value, who set it, what is left of it.
struct GuardJSON: Encodable {
    let value: String
    let origin: String?
    let remainingMs: Int64?


    init(_ lock: GuardLock) {
        value = lock.value
        origin = lock.origin?.rawValue
        remainingMs = lock.remaining?.wholeMilliseconds
    }
}

/// A key that breaks the keyspace's contract.
struct InvalidKeyJSON: Encodable {
    let key: String?
    let message: String
}

/// An audit record; `from` and `to` for a percent change (`10% -> 25%`).
struct RecordJSON: Encodable {
    let id: String?
    let time: String
    let feature: String
    let change: String
    let from: Double?
    let to: Double?
    let reason: String
    let by: String
    let run: String

    init(_ record: AuditRecord) {
        id = record.id
        time = record.time.description
        feature = record.feature.rawValue
        change = record.change
        reason = record.reason
        by = record.by
        run = record.run
        // `10% -> 25%`; a side that is not a percent (`"fifty" (invalid) -> 10%`) is left out.
        let sides = record.change.components(separatedBy: " -> ")
        func percent(_ side: String) -> Double? {
            guard sides.count == 2, side.hasSuffix("%"), let value = RolloutPercent(parsing: side.dropLast()) else { return nil }
            return Double(value.thousandths) / 1000
        }
        from = sides.first.flatMap(percent)
        to = sides.last.flatMap(percent)
    }
}
