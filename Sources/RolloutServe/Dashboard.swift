import CRolloutDashboard
import Foundation
import Hummingbird
import HummingbirdCore

/// The live dashboard of `rollout serve` (docs/serve.md, "The dashboard"): `GET /` (scope
/// `read`), its script and style, and `GET /v1/events`, the change events for the page. The
/// page itself is plain HTML, CSS and JavaScript compiled into the binary
/// (Sources/CRolloutDashboard/assets); it reads and acts through the operator API.
struct Dashboard: Sendable {
    let server: FlagServer

    /// The cookie that keeps a token given as `/?token=`.
    static let cookieName = "rollout_token"
    /// The header a page's change must carry when its token came in the cookie.
    static let csrfHeader = "x-csrf-token"

    /// What the CSRF token of a page opened with `token` signs.
    static func csrfMessage(_ token: String) -> String { "csrf." + token }

    /// What every page and asset answers with: no framing, no sniffing, no referrer (the first
    /// request's address may carry a token), nothing loaded from elsewhere.
    static func addSecurityHeaders(to headers: inout HTTPFields) {
        headers[.contentSecurityPolicy] =
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        headers[.xContentTypeOptions] = "nosniff"
        if let referrerPolicy = HTTPFields.Element.Name("Referrer-Policy") { headers[referrerPolicy] = "no-referrer" }
    }

    func register(on routes: inout Routes) {
        let dashboard = self
        routes.add(.get, "/") { request, _ -> Response in dashboard.page(request) }
        routes.add(.get, "/dashboard.js") { _, _ -> Response in
            Self.asset(CRolloutDashboard_script(), contentType: "text/javascript; charset=utf-8")
        }
        routes.add(.get, "/dashboard.css") { _, _ -> Response in
            Self.asset(CRolloutDashboard_style(), contentType: "text/css; charset=utf-8")
        }
        // Browsers ask for it; the page has no icon.
        routes.add(.get, "/favicon.ico") { _, _ -> Response in Response(status: .noContent) }
        routes.add(.get, "/v1/events") { request, _ -> Response in
            if let refusal = dashboard.server.refusal(request, needing: .read) { return refusal }
            return dashboard.server.eventResponse()
        }
    }

    /// `GET /`: with `?token=`, keeps a known token in the cookie and redirects to `/`;
    /// without, the page for the request's token (header or cookie), or the sign-in page.
    func page(_ request: Request) -> Response {
        if let token = request.uri.queryParameters.get("token") {
            return signIn(String(token), request)
        }
        switch server.authorize(request, needing: .read) {
        case .refused(let refusal):
            return Self.signInPage(status: refusal.status)
        case .allowed(let caller):
            let canOperate = caller.scopes.contains(.operate)
            let who = caller.name.map { "Token \($0)" + (canOperate ? " (can pause, resume and kill)" : " (read only)") }
                ?? "No authentication (loopback only, no --tokens-file)"
            let html = Self.fill(
                CRolloutDashboard_page(),
                ["csrf": server.signingKey.sign(Self.csrfMessage(caller.token)) ?? "", "operate": canOperate ? "true" : "false", "who": who])
            return Self.html(html, status: .ok)
        }
    }

    /// `/?token=T`: a token of scope `read` goes into the cookie (HttpOnly, SameSite=Strict,
    /// Secure when the request came over TLS through a proxy that says so), and the browser is
    /// sent to `/`, so the token leaves the address bar and the history.
    func signIn(_ token: String, _ request: Request) -> Response {
        guard let tokens = server.tokens else { return Self.redirectHome(cookie: nil) }
        guard let entry = tokens.file.entry(for: token) else { return Self.signInPage(status: .unauthorized) }
        guard entry.scopes.contains(.read) else { return Self.signInPage(status: .forbidden) }
        // A token of the file is URL-safe base64 behind `rg_`: a valid cookie value. Anything
        // else (a hand-made entry) is refused rather than written into a header.
        guard token.utf8.allSatisfy(Self.isCookieByte) else { return Self.signInPage(status: .unauthorized) }
        // Another site's link never signs a browser in: its next changes would be made, and
        // audited, under a token of that site's choosing. (Checking for a cookie already set
        // would not do: a browser does not send a SameSite=Strict cookie on a navigation from
        // another site.) A bookmark and a typed address say `Sec-Fetch-Site: none`.
        if RequestOrigin.isCrossSite(request.headers, authority: request.head.authority) {
            return Self.signInPage(status: .forbidden, fromALink: true)
        }
        var cookie = "\(Self.cookieName)=\(token); Path=/; HttpOnly; SameSite=Strict"
        if RequestOrigin.cameOverTLS(request.headers) { cookie += "; Secure" }
        return Self.redirectHome(cookie: cookie)
    }

    private static func isCookieByte(_ byte: UInt8) -> Bool {
        // RFC 6265 cookie-octet, without the ones a token never has.
        (0x30...0x39).contains(byte) || (0x41...0x5A).contains(byte) || (0x61...0x7A).contains(byte) || byte == UInt8(ascii: "-")
            || byte == UInt8(ascii: "_") || byte == UInt8(ascii: ".")
    }

    private static func redirectHome(cookie: String?) -> Response {
        var headers = HTTPFields()
        headers[.location] = "/"
        headers[.cacheControl] = "no-store"
        if let cookie { headers[.setCookie] = cookie }
        addSecurityHeaders(to: &headers)
        return Response(status: .seeOther, headers: headers)
    }

    /// The sign-in page, answered with 401 (no known token) or 403 (no scope `read`).
    static func signInPage(status: HTTPResponse.Status, fromALink: Bool = false) -> Response {
        let (title, detail) =
            fromALink
            ? ("Open this address yourself", "A link from another page cannot sign this browser in: paste the address into the address bar, or bookmark it.")
            : status == .forbidden
            ? ("This token cannot read", "The token given has no scope read, or this server is not reachable under this name.")
            : ("Sign in", "No token was given, or the one given is not in this server's tokens file.")
        var response = html(fill(CRolloutDashboard_signIn(), ["title": title, "detail": detail]), status: status)
        if status == .unauthorized { response.headers[.wwwAuthenticate] = "Bearer" }
        return response
    }

    private static func html(_ text: String, status: HTTPResponse.Status) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = "text/html; charset=utf-8"
        headers[.cacheControl] = "no-store"
        addSecurityHeaders(to: &headers)
        return Response(status: status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(string: text)))
    }

    private static func asset(_ asset: CRolloutDashboard_Asset, contentType: String) -> Response {
        var headers = HTTPFields()
        headers[.contentType] = contentType
        headers[.cacheControl] = "no-cache"
        addSecurityHeaders(to: &headers)
        let bytes = UnsafeBufferPointer(start: asset.bytes, count: asset.count)
        return Response(status: .ok, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: bytes)))
    }

    /// `asset` with each `{{name}}` replaced by its value, HTML-escaped.
    static func fill(_ asset: CRolloutDashboard_Asset, _ values: [String: String]) -> String {
        var text = String(decoding: UnsafeBufferPointer(start: asset.bytes, count: asset.count), as: UTF8.self)
        for (name, value) in values {
            text = text.replacingOccurrences(of: "{{\(name)}}", with: escapeHTML(value))
        }
        return text
    }

    static func escapeHTML(_ text: String) -> String {
        var escaped = ""
        for character in text {
            switch character {
            case "&": escaped += "&amp;"
            case "<": escaped += "&lt;"
            case ">": escaped += "&gt;"
            case "\"": escaped += "&quot;"
            case "'": escaped += "&#39;"
            default: escaped.append(character)
            }
        }
        return escaped
    }
}

/// A feature's status as one word: the dashboard's badge and `data-status`, and `status` in
/// the operator API's answers. The first that holds wins, in this order.
enum FeatureBadge: String, Sendable, Encodable, CaseIterable {
    /// Some key breaks the keyspace's contract (the gate answers off).
    case invalid
    /// The kill switch is on (`enabled` is false).
    case killed
    /// Flap protection paused it (`paused` with the controller's `paused_reason`).
    case frozen
    /// Paused by a person.
    case paused
    /// A guard lock holds promotions (after a rollback, or an operator's lock).
    case guardLocked = "guard"
    /// The controller's last run held it for want of data.
    case noData = "no-data"
    /// At 0%.
    case off
    /// At 100%.
    case full
    /// Between 0% and 100%.
    case rollingOut = "rolling-out"

    /// The badge of a feature from what Redis holds: `valid`, its kill switch, pause, flap
    /// pause, guard, the controller's last hold reason, and its percent in thousandths.
    static func of(
        valid: Bool, enabled: Bool, paused: Bool, frozen: Bool, guardLocked: Bool, lastHoldReason: String?, thousandths: Int
    ) -> FeatureBadge {
        if !valid { return .invalid }
        if !enabled { return .killed }
        if frozen { return .frozen }
        if paused { return .paused }
        if guardLocked { return .guardLocked }
        if lastHoldReason == "no_data" { return .noData }
        if thousandths <= 0 { return .off }
        if thousandths >= 100_000 { return .full }
        return .rollingOut
    }
}

/// Where a request comes from, as a browser tells it.
enum RequestOrigin {
    /// Whether a browser says the request comes from another site: `Sec-Fetch-Site` other
    /// than `same-origin` or `none`, or else an `Origin` whose host and port are not the
    /// request's `Host`. A request without either (curl, the CLI, Alertmanager) is not.
    static func isCrossSite(_ headers: HTTPFields, authority: String?) -> Bool {
        if let site = field(headers, "sec-fetch-site") {
            return site != "same-origin" && site != "none"
        }
        guard let origin = headers[.origin] else { return false }
        guard let host = authority, let separator = origin.range(of: "://") else { return true }
        return origin[separator.upperBound...].lowercased() != host.lowercased()
    }

    /// Whether `host` (a request's authority, its `Host`: name or address, maybe a port) names this machine's
    /// loopback: `localhost`, `127.x.x.x` or `[::1]`. No header (HTTP/1.0) counts as loopback.
    static func isLoopbackHost(_ host: String?) -> Bool {
        guard var name = host?.lowercased() else { return true }
        if name.hasPrefix("[") {
            guard let end = name.firstIndex(of: "]") else { return false }
            return name[name.index(after: name.startIndex)..<end] == "::1"
        }
        if let colon = name.lastIndex(of: ":") { name = String(name[..<colon]) }
        if name == "localhost" || name.hasSuffix(".localhost") { return true }
        let octets = name.split(separator: ".", omittingEmptySubsequences: false)
        return octets.count == 4 && octets[0] == "127" && octets.allSatisfy { UInt8($0) != nil }
    }

    /// Whether a proxy in front says the request came over TLS (`X-Forwarded-Proto: https`,
    /// or `Forwarded: proto=https`): rollout serve itself speaks plain HTTP.
    static func cameOverTLS(_ headers: HTTPFields) -> Bool {
        if let proto = field(headers, "x-forwarded-proto"), proto.lowercased().hasPrefix("https") { return true }
        return field(headers, "forwarded")?.lowercased().contains("proto=https") == true
    }

    /// The first value of the field named `canonicalName` (lowercased).
    static func field(_ headers: HTTPFields, _ canonicalName: String) -> String? {
        headers.first(where: { $0.name.canonicalName == canonicalName })?.value
    }
}
