import Foundation
public import Hummingbird
import HummingbirdCore
public import Logging
import Metrics
public import Prometheus
public import RolloutRedis
public import RolloutAudit
import ServiceLifecycle
import UnixSignals
public import RolloutGate

/// `rollout serve`'s HTTP side: OFREP evaluations from the gate's snapshot, and the health
/// endpoints. An evaluation never touches Redis: it reads the snapshot, as a check in a
/// service does.
public struct FlagServer: Sendable {
    /// The gate answering (run it in the same ServiceGroup).
    public let gate: FeatureGate
    /// The tokens accepted; nil: no authentication (loopback only, enforced by the caller).
    public let tokens: TokenStore?
    /// What `/metrics` shows (scope `read`); nil: no `/metrics`, and requests are not measured.
    public let metrics: PrometheusCollectorRegistry?
    /// The Alertmanager webhook (`POST /v1/alerts`); nil without a policy: the route answers 501.
    public let alerts: AlertWebhook?
    /// The checks a feature's history draws (the webhook's policy); nil without one: no checks.
    let history: CheckHistory?
    /// Where operator actions are recorded; nil: no operator API (`/v1/features...` is 404).
    public let auditLog: AuditLog?
    /// The operator API's own Redis connection (status reads and changes; evaluations never use it).
    let operatorRedis: RedisClient?
    /// The change-event streams and their URL credentials.
    let events: ChangeEvents
    /// Signs the dashboard's CSRF tokens.
    let signingKey = SigningKey()
    /// How many replicas must acknowledge an operator change (`WAIT`).
    let replicas: ReplicaAcknowledgement
    /// The largest request body read; larger is 413.
    public static let maximumBodySize = 64 * 1024

    /// A server answering from `gate`, to requests carrying one of `tokens` when given, showing
    /// `metrics` (see ``bootstrapMetrics()``) at `/metrics` when given, acting on Alertmanager's
    /// alerts with `alerts` when given, with the operator API (`/v1/features`) recording its
    /// changes in `auditLog` when given (each acknowledged by `replicas`: fewer answer with a
    /// warning), with `events`' bounds on change-event streams.
    public init(
        gate: FeatureGate, tokens: TokenStore? = nil, metrics: PrometheusCollectorRegistry? = nil, alerts: AlertWebhook? = nil,
        auditLog: AuditLog? = nil, replicas: ReplicaAcknowledgement = .automatic, events: ChangeEvents = ChangeEvents()
    ) {
        self.events = events
        self.replicas = replicas
        self.gate = gate
        self.tokens = tokens
        self.metrics = metrics
        self.alerts = alerts
        history = alerts.map(CheckHistory.init(webhook:))
        self.auditLog = auditLog
        operatorRedis = auditLog.map { _ in RedisClient(url: gate.redisURL) }
    }

    /// nil when `request` may use a route of `scope`; else the answer: 401 without a known
    /// token (`Authorization: Bearer` or `X-API-Key`), 403 with one lacking the scope. Neither
    /// has a body.
    func refusal(_ request: Request, needing scope: Scope) -> Response? {
        if case .refused(let response) = authorize(request, needing: scope) { return response }
        return nil
    }

    /// What ``authorize(_:needing:)`` found.
    enum Authorization {
        /// Allowed, with who is asking.
        case allowed(Caller)
        /// Refused with this answer.
        case refused(Response)
    }

    /// Who an allowed request comes from: its token's name, scopes and the token itself (the
    /// dashboard signs its CSRF token with it). Without a tokens file: no name, an empty token,
    /// every scope.
    struct Caller {
        var name: String?
        var token: String
        var scopes: Set<Scope>

        static let unauthenticated = Caller(name: nil, token: "", scopes: Set(Scope.allCases))
    }

    /// The name of the token `request` carries when it may use a route of `scope` (nil without
    /// a tokens file), or the refusal: see ``refusal(_:needing:)``. The token comes from
    /// `Authorization: Bearer`, `X-API-Key`, or the dashboard's cookie; a request that changes
    /// something (any method but GET and HEAD) is also refused (403) when a browser says it
    /// comes from another site, and, with the cookie, without the page's CSRF token
    /// (`X-CSRF-Token`). Without a tokens file, a `Host` that is not a loopback name is 403:
    /// a page of another site cannot reach an unauthenticated server by rebinding its name.
    func authorize(_ request: Request, needing scope: Scope) -> Authorization {
        let changes = request.method != .get && request.method != .head
        if changes, RequestOrigin.isCrossSite(request.headers, authority: request.head.authority) { return .refused(Response(status: .forbidden)) }
        guard let tokens else {
            return RequestOrigin.isLoopbackHost(request.head.authority) ? .allowed(.unauthenticated) : .refused(Response(status: .forbidden))
        }
        guard let (token, fromCookie) = Self.credential(in: request), let entry = tokens.file.entry(for: token) else {
            return .refused(Self.unauthorized)
        }
        guard entry.scopes.contains(scope) else { return .refused(Response(status: .forbidden)) }
        if changes && fromCookie {
            let given = RequestOrigin.field(request.headers, Dashboard.csrfHeader) ?? ""
            guard signingKey.verify(given, of: Dashboard.csrfMessage(token)) else { return .refused(Response(status: .forbidden)) }
        }
        return .allowed(Caller(name: entry.name, token: token, scopes: entry.scopes))
    }

    /// The token a request carries, and whether it came in the dashboard's cookie: a header
    /// (`Authorization: Bearer`, `X-API-Key`) wins over the cookie.
    static func credential(in request: Request) -> (token: String, fromCookie: Bool)? {
        if let authorization = request.headers[.authorization], authorization.lowercased().hasPrefix("bearer ") {
            let token = String(authorization.dropFirst("bearer ".count)).trimmingCharacters(in: .whitespaces)
            return token.isEmpty ? nil : (token, false)
        }
        if let key = RequestOrigin.field(request.headers, "x-api-key") {
            let token = key.trimmingCharacters(in: .whitespaces)
            return token.isEmpty ? nil : (token, false)
        }
        if let cookie = request.cookies[Dashboard.cookieName]?.value, !cookie.isEmpty { return (cookie, true) }
        return nil
    }

    private static var unauthorized: Response {
        var headers = HTTPFields()
        headers[.wwwAuthenticate] = "Bearer"
        return Response(status: .unauthorized, headers: headers)
    }

    /// Where a client that got this bulk answer listens for changes (OFREP ADR-0008): the
    /// events path, with a credential for `token` when tokens are required.
    func eventStream(for token: String?) -> OFREP.EventStream {
        var uri = "/ofrep/v1/events"
        if let token, let credential = events.credential(for: token, now: Timestamp.now().microsecondsSinceEpoch / 1_000_000) {
            uri += "?credential=" + credential
        }
        return OFREP.EventStream(requestURI: uri)
    }

    /// The routes: `POST /ofrep/v1/evaluate/flags/{key}`, `POST /ofrep/v1/evaluate/flags`
    /// (bulk, with ETag and If-None-Match), `POST /v1/alerts` (Alertmanager), `GET /healthz`,
    /// `GET /readyz`, and with an audit log the operator API (`/v1/features...`, see
    /// OperatorAPI.swift).
    public func router(logger: Logger = Logger(label: "rollout-serve")) -> Router<BasicRequestContext> {
        let router = Router()
        var routes = Routes(router: router)
        let gate = gate
        let server = self
        if let metrics {
            // Every route after this one is counted and timed, by route pattern and status.
            router.add(middleware: MetricsMiddleware())
            routes.add(.get, "/metrics") { request, _ -> Response in
                if let refusal = server.refusal(request, needing: .read) { return refusal }
                var headers = HTTPFields()
                headers[.contentType] = "text/plain; version=0.0.4; charset=utf-8"
                return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.emitToBuffer())))
            }
        }
        routes.add(.post, "/ofrep/v1/evaluate/flags/{key}") { request, context -> Response in
            if let refusal = server.refusal(request, needing: .evaluate) { return refusal }
            let key = context.parameters.get("key") ?? ""
            var request = request
            let body = try await request.collectBody(upTo: Self.maximumBodySize)
            let evaluation: OFREP.Evaluation
            switch OFREP.Context.parse(Array(buffer: body)) {
            case .failure(let error): evaluation = .invalid(key: key, error)
            case .success(let parsed): evaluation = OFREP.evaluate(key, context: parsed, gate: gate)
            }
            return json(evaluation.json, status: HTTPResponse.Status(code: evaluation.status))
        }
        routes.add(.post, "/ofrep/v1/evaluate/flags") { request, _ -> Response in
            let token: String?
            switch server.authorize(request, needing: .evaluate) {
            case .refused(let refusal): return refusal
            case .allowed(let caller): token = caller.name
            }
            var request = request
            let body = try await request.collectBody(upTo: Self.maximumBodySize)
            switch OFREP.Context.parse(Array(buffer: body)) {
            case .failure(let error):
                return json(OFREP.encode(["errorCode": error.code.rawValue, "errorDetails": error.details]), status: .badRequest)
            case .success(let parsed):
                let (answer, etag) = OFREP.bulk(context: parsed, gate: gate, eventStream: server.eventStream(for: token))
                var headers = HTTPFields()
                headers[.eTag] = etag
                if let match = request.headers[.ifNoneMatch], Self.matches(match, etag) {
                    return Response(status: .notModified, headers: headers)
                }
                headers[.contentType] = "application/json"
                return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: answer)))
            }
        }
        routes.add(.get, "/ofrep/v1/events") { request, _ -> Response in
            // A browser's EventSource cannot send headers: the URL's own credential will do.
            let credential = request.uri.queryParameters.get("credential")
            if let credential, let tokens = server.tokens {
                // Genuine, not expired, and made for a token that still has the scope.
                let name = server.events.verify(credential, now: Timestamp.now().microsecondsSinceEpoch / 1_000_000)
                guard let name, tokens.file.entries.contains(where: { $0.name == name && $0.scopes.contains(.evaluate) }) else {
                    return Self.unauthorized
                }
            } else if let refusal = server.refusal(request, needing: .evaluate) {
                return refusal
            }
            return server.eventResponse()
        }
        AlertWebhook.addRoute(to: &routes, webhook: alerts, server: server)
        if let auditLog, let operatorRedis {
            OperatorAPI(server: self, redis: operatorRedis, auditLog: auditLog, replicas: replicas, logger: logger).register(on: &routes)
            // The page reads and acts through the operator API.
            Dashboard(server: server).register(on: &routes)
        }
        routes.add(.get, "/healthz") { _, _ -> Response in
            text("ok\n", status: .ok)
        }
        routes.add(.get, "/readyz") { _, _ -> Response in
            gate.hasSnapshot ? text("ready\n", status: .ok) : text("no snapshot loaded yet\n", status: .serviceUnavailable)
        }
        routes.answerOtherMethods()
        return router
    }

    /// Serves on `host`:`port` with the gate refreshing beside it until SIGTERM or SIGINT: then
    /// it stops accepting, lets requests in flight finish (at most 10 s), stops the gate's
    /// refresher and returns. Connections are bounded (`maximumConnections` at once, further
    /// ones wait to be accepted; closed after `idleTimeout` idle), bodies too
    /// (``maximumBodySize``: 413), headers by NIO's HTTP/1.1 parser (80 KiB: the connection closes).
    public func run(
        host: String, port: Int, maximumConnections: Int = 1024, idleTimeout: Duration = .seconds(60), logger: Logger
    ) async throws {
        let gate = gate
        let tokens = tokens
        let app = Application(
            router: router(logger: logger),
            server: .http1(configuration: .init(idleTimeout: .milliseconds(idleTimeout.wholeMilliseconds))),
            configuration: .init(
                address: .hostname(host, port: port), serverName: "rollout-serve",
                availableConnectionsDelegate: MaximumAvailableConnections(maximumConnections)),
            onServerRunning: { channel in
                logger.notice(
                    tokens == nil ? "rollout serve is listening on loopback only, without authentication (no --tokens-file)" : "rollout serve is listening",
                    metadata: ["address": "\(channel.localAddress.map { "\($0)" } ?? "\(host):\(port)")", "redis.url": "\(gate.redisURL)"])
            },
            logger: logger)
        // Shut down in reverse order: the server stops first, then the gate's refresher.
        var group = ServiceGroupConfiguration(services: [gate] + (tokens.map { [$0] } ?? []) + [app], logger: logger)
        group.gracefulShutdownSignals = [.sigterm, .sigint]
        group.maximumGracefulShutdownDuration = .seconds(10)
        defer { operatorRedis?.close() }
        try await ServiceGroup(configuration: group).run()
    }

    /// The event stream: a comment at once, `refetchEvaluation` after each change (bursts
    /// coalesced by the gate's change stream), a keep-alive comment every
    /// ``ChangeEvents/keepAliveInterval``; it ends at a graceful shutdown. 503 when
    /// ``ChangeEvents/maximumSubscribers`` are open. The gate's change stream also yields when
    /// the snapshot goes stale or is fresh again, so a client (the dashboard) hears of Redis
    /// going away, which changes no feature.
    func eventResponse() -> Response {
        guard let slot = events.slot() else { return Response(status: .serviceUnavailable) }
        let events = events
        let changes = gate.changes()
        var headers = HTTPFields()
        headers[.contentType] = "text/event-stream"
        headers[.cacheControl] = "no-store"
        return Response(
            status: .ok, headers: headers,
            body: ResponseBody { writer in
                defer { slot.release() }
                let (ticks, tick) = AsyncStream.makeStream(of: StreamTick.self, bufferingPolicy: .bufferingNewest(8))
                try await writer.write(ByteBuffer(string: ": rollout serve change events\n\n"))
                try await withGracefulShutdownHandler {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            for await _ in changes { tick.yield(.change) }
                            tick.finish()
                        }
                        group.addTask {
                            while !Task.isCancelled {
                                try await Task.sleep(for: events.keepAliveInterval)
                                tick.yield(.keepAlive)
                            }
                        }
                        for await event in ticks {
                            try await writer.write(ByteBuffer(string: event.text))
                        }
                        group.cancelAll()
                    }
                } onGracefulShutdown: {
                    tick.finish()
                }
                try await writer.finish(nil)
            })
    }

    /// Makes the process's metrics (swift-metrics, so the gate's own too) go to a new
    /// Prometheus registry, and returns it for ``init(gate:tokens:metrics:)``. Call it once, at
    /// start, before the gate is made: swift-metrics has one backend a process. Hummingbird's
    /// request metrics are renamed `rollout_serve_requests_total`,
    /// `rollout_serve_request_duration_seconds` (a histogram from 100 µs to 10 s),
    /// `rollout_serve_request_errors_total` and `rollout_serve_active_requests`, labelled
    /// `route` (the pattern, never the path asked for), `method` and `status`.
    public static func bootstrapMetrics() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.nameAndLabelSanitizer = { name, labels in
            (requestMetricNames[name] ?? name, labels.map { (requestLabelNames[$0.0] ?? $0.0, $0.1) })
        }
        factory.durationHistogramBuckets["rollout_serve_request_duration_seconds"] = [
            .microseconds(100), .microseconds(250), .microseconds(500), .milliseconds(1), .microseconds(2500), .milliseconds(5),
            .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250), .seconds(1),
            .milliseconds(2500), .seconds(10),
        ]
        MetricsSystem.bootstrap(factory)
        return registry
    }

    private static let requestMetricNames = [
        "hb.requests": "rollout_serve_requests_total", "http.server.request.duration": "rollout_serve_request_duration_seconds",
        "hb.request.errors": "rollout_serve_request_errors_total", "http.server.active_requests": "rollout_serve_active_requests",
    ]
    private static let requestLabelNames = [
        "http.route": "route", "http.request.method": "method", "http.response.status_code": "status", "error.type": "status",
    ]

    /// Whether an `If-None-Match` value names `etag` (a list, `*`, or weak forms of it).
    static func matches(_ header: String, _ etag: String) -> Bool {
        header.split(separator: ",").contains { candidate in
            let tag = candidate.trimmingCharacters(in: .whitespaces)
            return tag == "*" || tag == etag || tag == "W/" + etag
        }
    }
}

/// What an event stream writes next.
private enum StreamTick: Sendable {
    case change
    case keepAlive

    var text: String {
        switch self {
        case .change: return "data: {\"type\":\"refetchEvaluation\"}\n\n"
        case .keepAlive: return ": keep-alive\n\n"
        }
    }
}

private func json(_ data: [UInt8], status: HTTPResponse.Status) -> Response {
    jsonResponse(data, status: status, contentType: "application/json")
}

/// A JSON answer (`application/json`, or `application/problem+json` for a problem).
func jsonResponse(_ data: [UInt8], status: HTTPResponse.Status, contentType: String) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = contentType
    return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
}

private func text(_ text: String, status: HTTPResponse.Status) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "text/plain; charset=utf-8"
    return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
}

/// The server's routes, registered through here so that a path answers the methods it does not
/// serve with 405 and an `Allow` header (RFC 9110 §15.5.6), not 404.
struct Routes {
    let router: Router<BasicRequestContext>
    private var methods: [MethodNotAllowed.Route] = []

    init(router: Router<BasicRequestContext>) { self.router = router }

    mutating func add(
        _ method: HTTPRequest.Method, _ path: String, _ handler: @escaping @Sendable (Request, BasicRequestContext) async throws -> Response
    ) {
        router.on(RouterPath(path), method: method, use: handler)
        if let index = methods.firstIndex(where: { $0.pattern == path }) {
            methods[index].methods.append(method)
        } else {
            methods.append(MethodNotAllowed.Route(pattern: path, methods: [method]))
        }
    }

    /// Call it once, after the last ``add(_:_:_:)``: the router's not-found answer becomes 405
    /// where the path is one of the routes (and the method is not).
    func answerOtherMethods() {
        router.add(middleware: MethodNotAllowed(routes: methods))
    }
}

/// Turns the router's 404 for a known path asked with another method into 405 with `Allow`.
struct MethodNotAllowed: RouterMiddleware {
    struct Route: Sendable {
        var pattern: String
        var methods: [HTTPRequest.Method]

        /// Whether `path` matches, `{name}` standing for any one segment.
        func matches(_ path: Substring) -> Bool {
            let want = pattern.split(separator: "/", omittingEmptySubsequences: false)
            let have = path.split(separator: "/", omittingEmptySubsequences: false)
            guard want.count == have.count else { return false }
            return zip(want, have).allSatisfy { wanted, had in wanted.hasPrefix("{") ? !had.isEmpty : wanted == had }
        }
    }
    let routes: [Route]

    func handle(
        _ request: Request, context: BasicRequestContext, next: (Request, BasicRequestContext) async throws -> Response
    ) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            guard let route = routes.first(where: { $0.matches(Substring(request.uri.path)) }) else { throw error }
            var headers = HTTPFields()
            headers[.allow] = route.methods.map(\.rawValue).joined(separator: ", ")
            return Response(status: .methodNotAllowed, headers: headers)
        }
    }
}
