import Foundation
public import Hummingbird
import HummingbirdCore
public import Logging
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
    /// The largest request body read; larger is 413.
    public static let maximumBodySize = 64 * 1024

    /// A server answering from `gate`, to requests carrying one of `tokens` when given.
    public init(gate: FeatureGate, tokens: TokenStore? = nil) {
        self.gate = gate
        self.tokens = tokens
    }

    /// nil when `request` may use a route of `scope`; else the answer: 401 without a known
    /// token (`Authorization: Bearer` or `X-API-Key`), 403 with one lacking the scope. Neither
    /// has a body.
    func refusal(_ request: Request, needing scope: Scope) -> Response? {
        guard let tokens else { return nil }
        var token: String?
        if let authorization = request.headers[.authorization], authorization.lowercased().hasPrefix("bearer ") {
            token = String(authorization.dropFirst("bearer ".count)).trimmingCharacters(in: .whitespaces)
        } else if let key = request.headers.first(where: { $0.name.canonicalName == "x-api-key" })?.value {
            token = key.trimmingCharacters(in: .whitespaces)
        }
        guard let token, !token.isEmpty, let entry = tokens.file.entry(for: token) else {
            var headers = HTTPFields()
            headers[.wwwAuthenticate] = "Bearer"
            return Response(status: .unauthorized, headers: headers)
        }
        return entry.scopes.contains(scope) ? nil : Response(status: .forbidden)
    }

    /// The routes: `POST /ofrep/v1/evaluate/flags/{key}`, `POST /ofrep/v1/evaluate/flags`
    /// (bulk, with ETag and If-None-Match), `GET /healthz`, `GET /readyz`.
    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        let gate = gate
        let server = self
        router.post("/ofrep/v1/evaluate/flags/{key}") { request, context -> Response in
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
        router.post("/ofrep/v1/evaluate/flags") { request, _ -> Response in
            if let refusal = server.refusal(request, needing: .evaluate) { return refusal }
            var request = request
            let body = try await request.collectBody(upTo: Self.maximumBodySize)
            switch OFREP.Context.parse(Array(buffer: body)) {
            case .failure(let error):
                return json(OFREP.encode(["errorCode": error.code.rawValue, "errorDetails": error.details]), status: .badRequest)
            case .success(let parsed):
                let (answer, etag) = OFREP.bulk(context: parsed, gate: gate)
                var headers = HTTPFields()
                headers[.eTag] = etag
                if let match = request.headers[.ifNoneMatch], Self.matches(match, etag) {
                    return Response(status: .notModified, headers: headers)
                }
                headers[.contentType] = "application/json"
                return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: answer)))
            }
        }
        router.get("/healthz") { _, _ -> Response in
            text("ok\n", status: .ok)
        }
        router.get("/readyz") { _, _ -> Response in
            gate.hasSnapshot ? text("ready\n", status: .ok) : text("no snapshot loaded yet\n", status: .serviceUnavailable)
        }
        return router
    }

    /// Serves on `host`:`port` with the gate refreshing beside it until SIGTERM or SIGINT: then
    /// it stops accepting, lets requests in flight finish (at most 10 s), stops the gate's
    /// refresher and returns. Connections are bounded (1,024 at once, 60 s idle), bodies too
    /// (``maximumBodySize``: 413).
    public func run(host: String, port: Int, logger: Logger) async throws {
        let gate = gate
        let tokens = tokens
        let app = Application(
            router: router(),
            server: .http1(configuration: .init(idleTimeout: .seconds(60))),
            configuration: .init(
                address: .hostname(host, port: port), serverName: "rollout-serve",
                availableConnectionsDelegate: MaximumAvailableConnections(1024)),
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
        try await ServiceGroup(configuration: group).run()
    }

    /// Whether an `If-None-Match` value names `etag` (a list, `*`, or weak forms of it).
    static func matches(_ header: String, _ etag: String) -> Bool {
        header.split(separator: ",").contains { candidate in
            let tag = candidate.trimmingCharacters(in: .whitespaces)
            return tag == "*" || tag == etag || tag == "W/" + etag
        }
    }
}

private func json(_ data: [UInt8], status: HTTPResponse.Status) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "application/json"
    return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: data)))
}

private func text(_ text: String, status: HTTPResponse.Status) -> Response {
    var headers = HTTPFields()
    headers[.contentType] = "text/plain; charset=utf-8"
    return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
}
