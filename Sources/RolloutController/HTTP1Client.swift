import Dispatch
import RolloutRedis
import Synchronization

/// A small HTTP/1.1 client for the controller's queries: keep-alive connections over the same
/// sockets and OpenSSL TLS as the Redis client, blocking I/O on a dispatch queue per connection
/// (never on Swift's cooperative pool), every exchange bounded by one deadline from the first
/// byte sent to the last byte of the answer.
///
/// Why not AsyncHTTPClient: a run over 1,000 features sends 3,000 small queries, and profiles
/// (docs/performance.md) put about half of the run's CPU in AsyncHTTPClient's and NIO's
/// per-request machinery; this client does one write and, for a small answer, one read per
/// query. It speaks only what Prometheus's API needs: a request with a body, answers framed by
/// Content-Length, chunked or by the end of the connection, no redirects, no compression.
/// As for Redis, the host name of a new connection is resolved by `getaddrinfo`, which the
/// deadline does not bound; a base URL with an address, or a local resolver, avoids that wait.
final class HTTP1Client: Sendable {
    /// Where the requests go.
    let origin: HTTPOrigin
    /// Who is at the other end, for messages.
    let peer: String
    /// The certificates trusted for https://.
    let trust: RedisURL.TLS
    private let idle = Mutex<[PooledConnection]>([])
    /// The most idle connections kept for reuse.
    private let maxIdle: Int

    init(origin: HTTPOrigin, peer: String, trust: RedisURL.TLS = RedisURL.TLS(), maxIdle: Int = 32) {
        self.origin = origin
        self.peer = peer
        self.trust = trust
        self.maxIdle = maxIdle
    }

    /// Sends `request` (a whole request, head and body, made by ``request(method:path:contentType:body:)``)
    /// and reads the answer by `deadline`; a body over `maxBody` bytes fails. When the task is
    /// cancelled the connection is shut down at once and the exchange fails with `.cancelled`.
    func exchange(_ request: [UInt8], maxBody: Int, deadline: ContinuousClock.Instant) async -> Result<HTTPAnswer, HTTPFailure> {
        let connection = idle.withLock { $0.popLast() } ?? PooledConnection()
        let cancellation = ExchangeCancellation()
        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Result<HTTPAnswer, HTTPFailure>, Never>) in
                connection.queue.async { [self] in
                    continuation.resume(returning: connection.exchange(request, client: self, maxBody: maxBody, deadline: deadline, cancellation: cancellation))
                }
            }
        } onCancel: {
            cancellation.cancel()
        }
        idle.withLock { connections in
            if connections.count < maxIdle { connections.append(connection) }
        }
        return result
    }

    /// The bytes of a request to `path` (below the origin's path prefix) with `body`.
    func request(method: String, path: String, contentType: String, body: [UInt8]) -> [UInt8] {
        var head = "\(method) \(origin.pathPrefix)\(path) HTTP/1.1\r\nHost: \(origin.hostHeader)\r\nUser-Agent: rollout-gate\r\n"
        head += "Accept: application/json\r\nContent-Type: \(contentType)\r\nContent-Length: \(body.count)\r\n\r\n"
        return Array(head.utf8) + body
    }
}

/// The scheme, host, port and path prefix of an ``HTTPEndpoint``.
struct HTTPOrigin: Sendable, Hashable {
    let secure: Bool
    /// The host name or address, without the brackets of an IPv6 literal.
    let host: String
    let port: Int
    /// The base URL's path without its trailing slash: "" or "/prometheus".
    let pathPrefix: String
    /// The Host header: the URL's authority as written.
    let hostHeader: String

    /// What is wrong with a base URL's host or port ("has no host").
    struct Problem: Error {
        let reason: String
    }

    /// The origin of `endpoint`, or what is wrong with its authority.
    static func parse(_ endpoint: HTTPEndpoint) -> Result<HTTPOrigin, Problem> {
        let url = endpoint.url
        let secure = url.hasPrefix("https://")
        let rest = url.dropFirst(secure ? 8 : 7)
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        let path = rest[authority.endIndex...].prefix { $0 != "?" && $0 != "#" }
        var host = Substring(authority)
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return .failure(Problem(reason: "has an IPv6 address without its closing ]")) }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return .failure(Problem(reason: "has text after its IPv6 address")) }
                portText = after.dropFirst()
            }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        }
        var port = secure ? 443 : 80
        if let portText {
            guard let number = Int(portText), (1...65535).contains(number) else { return .failure(Problem(reason: "has a port that is not a number from 1 to 65535")) }
            port = number
        }
        guard !host.isEmpty else { return .failure(Problem(reason: "has no host")) }
        var prefix = String(path)
        while prefix.hasSuffix("/") { prefix.removeLast() }
        return .success(HTTPOrigin(secure: secure, host: String(host), port: port, pathPrefix: prefix, hostHeader: String(authority)))
    }
}

/// An HTTP answer: its status and whole body.
struct HTTPAnswer: Sendable {
    let status: Int
    let body: [UInt8]
}

/// Why an exchange gave no answer.
enum HTTPFailure: Error, Sendable {
    /// The connection failed: refused, reset, TLS, or the deadline passed (`error.code == .timeout`).
    case transport(RedisError)
    /// The bytes received are not an HTTP/1.x answer this client reads.
    case malformed(String)
    /// The body is larger than the caller accepts.
    case tooLarge(limit: Int)
    /// The task was cancelled (its time limit on another clock passed).
    case cancelled
}

/// Lets a cancelled task shut down the connection its exchange is blocked on.
private final class ExchangeCancellation: Sendable {
    private struct State: @unchecked Sendable {
        var cancelled = false
        /// The stream being used, while an exchange runs (owned by its connection's queue).
        var stream: (any ByteStream)?
    }
    private let state = Mutex(State())

    func cancel() {
        state.withLock {
            $0.cancelled = true
            $0.stream?.shutdown()
        }
    }

    /// Registers the stream an exchange is about to use; false when already cancelled.
    func attach(_ stream: any ByteStream) -> Bool {
        state.withLock { state in
            if state.cancelled { return false }
            state.stream = stream
            return true
        }
    }

    /// Ends the registration: after it, the stream may be closed (shutdown never runs on a closed descriptor).
    func detach() -> Bool {
        state.withLock { state in
            state.stream = nil
            return state.cancelled
        }
    }
}

/// One keep-alive connection and the serial queue its blocking I/O runs on. Its link is
/// touched only on that queue; the pool hands it to one exchange at a time.
private final class PooledConnection: @unchecked Sendable {
    let queue = DispatchQueue(label: "rollout-gate.http")
    private var link: HTTP1Link?

    /// One request and its answer, on `queue`. A kept-alive connection the server closed
    /// before answering (its idle timeout) is replaced once by a new one.
    func exchange(
        _ request: [UInt8], client: HTTP1Client, maxBody: Int, deadline: ContinuousClock.Instant, cancellation: ExchangeCancellation
    ) -> Result<HTTPAnswer, HTTPFailure> {
        if let open = link, open.stream.isReadableWhileIdle {
            open.stream.close()
            link = nil
        }
        var attempt = 0
        while true {
            attempt += 1
            let reused = link != nil
            let current: HTTP1Link
            if let link {
                current = link
            } else {
                do throws(RedisError) {
                    current = try HTTP1Link(origin: client.origin, peer: client.peer, trust: client.trust, deadline: deadline)
                } catch {
                    return .failure(.transport(error))
                }
            }
            link = current
            guard cancellation.attach(current.stream) else { return drop(current, .cancelled) }
            let result = current.exchange(request, maxBody: maxBody, deadline: deadline)
            if cancellation.detach() { return drop(current, .cancelled) }
            switch result {
            case .success(let answer):
                if !current.reusable { drop(current) }
                return .success(answer)
            case .failure(.transport(let error)) where reused && attempt == 1 && !current.receivedAny && error.code != .timeout:
                drop(current)
            case .failure(let failure):
                return drop(current, failure)
            }
        }
    }

    private func drop(_ current: HTTP1Link) {
        current.stream.close()
        link = nil
    }

    private func drop(_ current: HTTP1Link, _ failure: HTTPFailure) -> Result<HTTPAnswer, HTTPFailure> {
        drop(current)
        return .failure(failure)
    }
}

/// A connected stream and the bytes received on it but not read yet: one HTTP/1.1 exchange at a time.
private final class HTTP1Link {
    let stream: any ByteStream
    /// Whether the connection may carry another request after the last answer.
    private(set) var reusable = true
    /// Whether any byte of the current answer arrived (a reused connection that got none was
    /// closed by the server before the request reached it, and may be retried).
    private(set) var receivedAny = false
    private var pending: [UInt8] = []
    private var offset = 0
    private let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: 16 * 1024, alignment: 16)

    /// The longest head (status line and headers) and chunk-size line read.
    static let maxHeadBytes = 64 * 1024

    init(origin: HTTPOrigin, peer: String, trust: RedisURL.TLS, deadline: ContinuousClock.Instant) throws(RedisError) {
        let socket = try SocketStream.connectTCP(host: origin.host, port: origin.port, peer: peer, deadline: deadline)
        stream = origin.secure ? try TLSStream.connect(socket: socket, host: origin.host, settings: trust, deadline: deadline) : socket
    }

    deinit {
        stream.close()
        scratch.deallocate()
    }

    func exchange(_ request: [UInt8], maxBody: Int, deadline: ContinuousClock.Instant) -> Result<HTTPAnswer, HTTPFailure> {
        receivedAny = false
        pending.removeAll(keepingCapacity: true)
        offset = 0
        do throws(HTTPFailure) {
            let sent = request.withUnsafeBytes { bytes in Result { () throws(RedisError) in try stream.write(bytes, deadline: deadline) } }
            if case .failure(let error) = sent { throw .transport(error) }
            var head = try readHead(deadline: deadline)
            while (100...199).contains(head.status) { head = try readHead(deadline: deadline) }  // 100 Continue and the like
            let body = try readBody(head, maxBody: maxBody, deadline: deadline)
            if offset != pending.count { reusable = false }  // bytes after the answer: out of step
            return .success(HTTPAnswer(status: head.status, body: body))
        } catch {
            reusable = false
            return .failure(error)
        }
    }

    private struct Head {
        var status = 0
        var contentLength: Int?
        var chunked = false
        var keepAlive = true
    }

    /// Receives more bytes; false at the end of the stream.
    private func receive(deadline: ContinuousClock.Instant) throws(HTTPFailure) -> Bool {
        do {
            let count = try stream.read(into: scratch, deadline: deadline)
            receivedAny = true
            if offset > 0 && offset == pending.count {
                pending.removeAll(keepingCapacity: true)
                offset = 0
            }
            pending.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[0..<count]))
            return true
        } catch where error.code == .connectionClosed && receivedAny {
            return false
        } catch {
            throw .transport(error)
        }
    }

    /// The bytes up to the next CRLF (not included), which is consumed.
    private func readLine(deadline: ContinuousClock.Instant) throws(HTTPFailure) -> ArraySlice<UInt8> {
        var searched = offset
        while true {
            if let end = pending[searched...].firstIndex(of: UInt8(ascii: "\n")) {
                let line = pending[offset..<end]
                offset = end + 1
                return line.last == UInt8(ascii: "\r") ? line.dropLast() : line
            }
            searched = pending.count
            guard pending.count - offset <= Self.maxHeadBytes else { throw .malformed("a header line longer than \(Self.maxHeadBytes) bytes") }
            guard try receive(deadline: deadline) else { throw .malformed("the connection closed in the middle of the answer's head") }
        }
    }

    private func readHead(deadline: ContinuousClock.Instant) throws(HTTPFailure) -> Head {
        let started = offset
        let statusLine = try readLine(deadline: deadline)
        // "HTTP/1.1 200 OK": the version, a space, three digits.
        let version = statusLine.prefix(8)
        guard version.elementsEqual("HTTP/1.1".utf8) || version.elementsEqual("HTTP/1.0".utf8), statusLine.count >= 12,
            statusLine[statusLine.startIndex + 8] == UInt8(ascii: " ")
        else { throw .malformed("an answer that does not start with an HTTP/1.x status line") }
        var status = 0
        for digit in statusLine[(statusLine.startIndex + 9)..<(statusLine.startIndex + 12)] {
            guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(digit) else { throw .malformed("a status that is not three digits") }
            status = status * 10 + Int(digit - UInt8(ascii: "0"))
        }
        var head = Head(status: status, keepAlive: version.last == UInt8(ascii: "1"))
        while true {
            let line = try readLine(deadline: deadline)
            if line.isEmpty { break }
            guard offset - started <= Self.maxHeadBytes else { throw .malformed("an answer head larger than \(Self.maxHeadBytes) bytes") }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { throw .malformed("a header line without a colon") }
            let name = String(decoding: line[..<colon], as: UTF8.self).lowercased()
            let value = String(decoding: line[(colon + 1)...], as: UTF8.self).trimmingSpaces().lowercased()
            switch name {
            case "content-length":
                guard let length = Int(value), length >= 0, head.contentLength == nil || head.contentLength == length else {
                    throw .malformed("a Content-Length that is not one number")
                }
                head.contentLength = length
            case "transfer-encoding":
                // Only chunked is read; the request asks for no compression.
                guard value == "chunked" else { throw .malformed("a Transfer-Encoding other than chunked (\(value.prefix(40)))") }
                head.chunked = true
            case "connection":
                let options = value.split(separator: ",").map { $0.trimmingSpaces() }
                if options.contains("close") { head.keepAlive = false }
                if options.contains("keep-alive") { head.keepAlive = true }
            default:
                continue
            }
        }
        return head
    }

    private func readBody(_ head: Head, maxBody: Int, deadline: ContinuousClock.Instant) throws(HTTPFailure) -> [UInt8] {
        if !head.keepAlive { reusable = false }
        if head.status == 204 || head.status == 304 { return [] }
        if head.chunked {
            var body: [UInt8] = []
            while true {
                let line = try readLine(deadline: deadline)
                let digits = line.prefix { $0 != UInt8(ascii: ";") && $0 != UInt8(ascii: " ") }
                guard !digits.isEmpty, digits.count <= 15, let size = Int(String(decoding: digits, as: UTF8.self), radix: 16) else {
                    throw .malformed("a chunk size that is not a hexadecimal number")
                }
                if size == 0 {
                    while try !readLine(deadline: deadline).isEmpty {}  // trailers
                    return body
                }
                guard body.count + size <= maxBody else { throw .tooLarge(limit: maxBody) }
                try receive(atLeast: size + 2, deadline: deadline)
                body.append(contentsOf: pending[offset..<(offset + size)])
                guard pending[offset + size] == UInt8(ascii: "\r"), pending[offset + size + 1] == UInt8(ascii: "\n") else {
                    throw .malformed("a chunk not followed by CRLF")
                }
                offset += size + 2
            }
        }
        if let length = head.contentLength {
            guard length <= maxBody else { throw .tooLarge(limit: maxBody) }
            try receive(atLeast: length, deadline: deadline)
            defer { offset += length }
            return Array(pending[offset..<(offset + length)])
        }
        // Neither: the body ends with the connection.
        reusable = false
        while try receive(deadline: deadline) {
            guard pending.count - offset <= maxBody else { throw .tooLarge(limit: maxBody) }
        }
        defer { offset = pending.count }
        return Array(pending[offset...])
    }

    /// Receives until `count` unread bytes are there.
    private func receive(atLeast count: Int, deadline: ContinuousClock.Instant) throws(HTTPFailure) {
        while pending.count - offset < count {
            guard try receive(deadline: deadline) else { throw .malformed("the connection closed before the end of the answer's body") }
        }
    }
}
