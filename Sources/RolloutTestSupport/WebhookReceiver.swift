public import Foundation
import Synchronization
public import Testing

extension Tag {
    /// Tests that talk HTTP to a ``WebhookReceiver`` on loopback.
    @Tag public static var webhook: Self
}

/// A webhook endpoint (or a hostile Prometheus) the test controls: a real HTTP/1.1 server on a free loopback port, on
/// threads of its own (never Swift's cooperative pool). It records every request and answers
/// each by the next scripted ``Behaviour``, then by `otherwise`. Keep-alive connections are
/// served request after request; `Connection: close` is honoured. Stopped by ``stop()`` or
/// when released, which also ends hanging answers.
public final class WebhookReceiver: Sendable {
    /// How to answer one request.
    public enum Behaviour: Sendable, Hashable {
        /// Answer with this status (and a short text body, none for 204).
        case status(Int)
        /// Never answer: hold the connection until the client gives up or the receiver stops.
        case hang
        /// Close the connection without answering.
        case close
        /// Send a 200 head promising a body, then nothing: hold the connection until the client
        /// gives up or the receiver stops.
        case stallAfterHead
        /// Send a 200 head promising a large body, then one byte of it every `interval`, never
        /// finishing, until the client gives up or the receiver stops.
        case trickle(every: Duration)
        /// Answer with this status and a body that echoes the request target (path and query),
        /// as a careless receiver echoes the token it refuses.
        case echoing(Int)
        /// Send these bytes as they are (an answer framed any way, or not HTTP at all), then
        /// close the connection when `thenClose`, else read the next request on it.
        case raw(String, thenClose: Bool)
    }

    /// One request as received.
    public struct Request: Sendable {
        /// `POST`, `GET`...
        public var method: String
        /// The request target: path and query.
        public var path: String
        /// Header names lowercased, in the order received.
        public var headers: [(name: String, value: String)]
        /// The body (by Content-Length).
        public var body: Data

        /// The first value of header `name` (any case).
        public func header(_ name: String) -> String? {
            headers.first { $0.name == name.lowercased() }?.value
        }

        /// The body as UTF-8 text.
        public var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// The port on 127.0.0.1.
    public let port: Int
    private let server: Server

    /// Starts listening: requests get `script` in order, then `otherwise`.
    public init(_ script: [Behaviour] = [], otherwise: Behaviour = .status(200)) throws {
        let (fd, port) = try listenOnLoopback()
        self.port = port
        server = Server(listener: fd, script: script, otherwise: otherwise)
        // The thread holds the server, not this object, so releasing the receiver stops it.
        let server = self.server
        Thread { server.acceptLoop() }.start()
    }

    deinit { server.stop() }

    /// `http://127.0.0.1:PORT` followed by `path`.
    public func url(_ path: String = "/hook") -> String { "http://127.0.0.1:\(port)\(path)" }

    /// The requests received so far, in order of arrival.
    public var requests: [Request] { server.state.withLock { $0.requests } }

    /// How many connections the client closed while this receiver was holding an answer back
    /// (``Behaviour/hang``, ``Behaviour/stallAfterHead``, ``Behaviour/trickle(every:)``); a
    /// connection ended by ``stop()`` does not count.
    public var closedByClient: Int { server.state.withLock { $0.closedByClient } }

    /// How many connections were accepted: with keep-alive, fewer than the requests.
    public var connectionsAccepted: Int { server.state.withLock { $0.accepted } }

    /// Stops accepting, ends every connection (hanging ones included) and waits for their
    /// threads to finish.
    public func stop() { server.stop() }
}

private final class Server: Sendable {
    struct State {
        var requests: [WebhookReceiver.Request] = []
        var script: [WebhookReceiver.Behaviour]
        var connections: Set<Int32> = []
        var closedByClient = 0
        var accepted = 0
        var listening = true
        var stopped = false
    }

    let listener: Int32
    let otherwise: WebhookReceiver.Behaviour
    let state: Mutex<State>
    /// Counts live threads (the accept loop and one per connection); stop() waits for zero.
    let running = Atomic<Int>(1)

    init(listener: Int32, script: [WebhookReceiver.Behaviour], otherwise: WebhookReceiver.Behaviour) {
        self.listener = listener
        self.otherwise = otherwise
        state = Mutex(State(script: script))
    }

    func stop() {
        // shutdown() under the lock, and close() under it too (below): a descriptor is never
        // shut down after its number was closed and reused elsewhere in the test process.
        state.withLock { state in
            guard !state.stopped else { return }
            state.stopped = true
            if state.listening { shutdown(listener, Int32(SHUT_RDWR)) }
            for fd in state.connections { shutdown(fd, Int32(SHUT_RDWR)) }
        }
        let deadline = Date().addingTimeInterval(5)
        while running.load(ordering: .acquiring) > 0 && Date() < deadline { usleep(1000) }
    }

    func acceptLoop() {
        defer {
            state.withLock { state in
                close(listener)
                state.listening = false
            }
            running.subtract(1, ordering: .releasing)
        }
        while true {
            let client = acceptClosingOnExec(listener)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            let accepted = state.withLock { state -> Bool in
                guard !state.stopped else { return false }
                state.connections.insert(client)
                state.accepted += 1
                return true
            }
            guard accepted else {
                close(client)
                return
            }
            running.add(1, ordering: .relaxed)
            Thread { [self] in
                serve(client)
                state.withLock { state in
                    state.connections.remove(client)
                    close(client)
                }
                running.subtract(1, ordering: .releasing)
            }.start()
        }
    }

    /// Serves requests on one connection until it closes, asks to, or the script says so.
    private func serve(_ fd: Int32) {
        var buffer: [UInt8] = []
        while let request = readRequest(fd, &buffer) {
            let behaviour = state.withLock { state -> WebhookReceiver.Behaviour in
                state.requests.append(request)
                return state.script.isEmpty ? otherwise : state.script.removeFirst()
            }
            switch behaviour {
            case .close:
                return
            case .hang:
                holdUntilClosed(fd)
                return
            case .stallAfterHead:
                holdUntilClosed(fd, head: Self.longHead)
                return
            case .trickle(let interval):
                holdUntilClosed(fd, head: Self.longHead, tricklingEvery: interval)
                return
            case .raw(let bytes, let thenClose):
                guard sendAll(fd, Array(bytes.utf8)), !thenClose else { return }
            case .status(let code), .echoing(let code):
                let closing = request.header("connection")?.lowercased() == "close"
                var body = code == 204 || code == 304 ? "" : (200..<300).contains(code) ? "ok" : "scripted failure \(code)"
                if case .echoing = behaviour {
                    let token = request.path.split(separator: "/").last.map(String.init) ?? ""
                    body = "invalid token \(token.split(separator: "?").first ?? "") for \(request.path)"
                }
                let head =
                    "HTTP/1.1 \(code) \(code < 400 ? "OK" : "Scripted Failure")\r\nContent-Type: text/plain\r\n"
                    + "Content-Length: \(body.utf8.count)\r\nConnection: \(closing ? "close" : "keep-alive")\r\n\r\n"
                let bytes = Array((head + body).utf8)
                guard sendAll(fd, bytes), !closing else { return }
            }
        }
    }

    /// A 200 head whose body never comes in full.
    static let longHead = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\n\r\n"

    /// Sends `head`, then waits until the client closes (or stop() shuts the socket down),
    /// sending one byte (a JSON space) every `interval` meanwhile if given; a close by the
    /// client is counted, even one that came before the head could be sent.
    private func holdUntilClosed(_ fd: Int32, head: String = "", tricklingEvery interval: Duration? = nil) {
        defer {
            state.withLock { state in
                if !state.stopped { state.closedByClient += 1 }
            }
        }
        guard sendAll(fd, Array(head.utf8)) else { return }
        let timeout = interval.map { Int32(clamping: $0.components.seconds * 1000 + $0.components.attoseconds / 1_000_000_000_000_000) } ?? -1
        var scratch = [UInt8](repeating: 0, count: 1024)
        while true {
            var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let ready = poll(&poller, 1, timeout)
            if ready < 0 && errno == EINTR { continue }
            if ready > 0 {
                // Readable: the client closed (0) or reset (-1); extra bytes are ignored.
                if recv(fd, &scratch, scratch.count, 0) > 0 { continue }
                break
            }
            if ready < 0 || !sendAll(fd, [UInt8(ascii: " ")]) { break }
        }
    }

    /// Reads one request (head, then a Content-Length body); nil when the connection ends first.
    private func readRequest(_ fd: Int32, _ buffer: inout [UInt8]) -> WebhookReceiver.Request? {
        let separator: [UInt8] = Array("\r\n\r\n".utf8)
        var headEnd: Int?
        while true {
            if let end = buffer.firstRange(of: separator)?.upperBound {
                headEnd = end
                break
            }
            guard buffer.count < 1 << 20, receive(fd, into: &buffer) else { return nil }
        }
        guard let headEnd else { return nil }
        let head = String(decoding: buffer[..<headEnd], as: UTF8.self)
        var lines = head.components(separatedBy: "\r\n").filter { !$0.isEmpty }
        guard !lines.isEmpty else { return nil }
        let requestLine = lines.removeFirst().split(separator: " ")
        guard requestLine.count >= 2 else { return nil }
        let headers = lines.compactMap { line -> (name: String, value: String)? in
            guard let colon = line.firstIndex(of: ":") else { return nil }
            return (line[..<colon].lowercased(), line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        let length = headers.first { $0.name == "content-length" }.flatMap { Int($0.value) } ?? 0
        while buffer.count < headEnd + length {
            guard receive(fd, into: &buffer) else { return nil }
        }
        let body = Data(buffer[headEnd..<headEnd + length])
        buffer.removeFirst(headEnd + length)
        return WebhookReceiver.Request(method: String(requestLine[0]), path: String(requestLine[1]), headers: headers, body: body)
    }

    private func receive(_ fd: Int32, into buffer: inout [UInt8]) -> Bool {
        var chunk = [UInt8](repeating: 0, count: 16384)
        let count = recv(fd, &chunk, chunk.count, 0)
        guard count > 0 else { return false }
        buffer.append(contentsOf: chunk[..<count])
        return true
    }

    private func sendAll(_ fd: Int32, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else { return false }
            offset += sent
        }
        return true
    }
}
