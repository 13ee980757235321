import Foundation
@testable import RolloutController
import RolloutGate
import RolloutRedis
import RolloutTestSupport
import Testing

/// The controller's own HTTP/1.1 client, as Prometheus queries use it: every way an answer can
/// be framed, keep-alive reuse, a connection the server closed, and answers that are not HTTP,
/// against a stand-in that sends exact bytes, and against real Prometheus servers (chunked
/// answers, TLS).
@Suite("The controller's HTTP/1.1 client")
struct HTTP1ClientTests {
    static let sample = #"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1795368038.832,"0.25"]}]}}"#

    static func contentLength(_ body: String = sample, keepAlive: Bool = true) -> String {
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\(keepAlive ? "" : "Connection: close\r\n")\r\n\(body)"
    }

    static func client(_ stand: WebhookReceiver, attempts: Int = 1) throws -> PrometheusClient {
        PrometheusClient(
            base: try HTTPEndpoint.parse(stand.url("")).get(), timeout: .seconds(30), retry: RetryPolicy(baseDelay: .zero, maxAttempts: attempts),
            guards: EndpointGuard(name: "stand-in"))
    }

    static func failure(_ client: PrometheusClient, _ query: String = "up") async -> PrometheusError? {
        do throws(PrometheusError) {
            _ = try await client.value(of: query)
            return nil
        } catch {
            return error
        }
    }

    static let framings: [String] = {
        let body = Array(sample.utf8)
        let thirds = [body[..<40], body[40..<80], body[80...]].map { String(decoding: $0, as: UTF8.self) }
        var chunked = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        for (index, part) in thirds.enumerated() {
            chunked += String(part.utf8.count, radix: 16) + (index == 1 ? ";name=value" : "") + "\r\n" + part + "\r\n"
        }
        chunked += "0\r\nX-Trailer: yes\r\n\r\n"
        return [
            contentLength(),
            chunked,
            "HTTP/1.1 100 Continue\r\n\r\n" + contentLength(),
            "HTTP/1.0 200 OK\r\nContent-Length: \(body.count)\r\n\r\n" + sample,
        ]
    }()

    @Test(.tags(.webhook), arguments: framings)
    func everyFramingOfAnAnswerIsRead(answer: String) async throws {
        let stand = try WebhookReceiver(otherwise: .raw(answer, thenClose: false))
        defer { stand.stop() }
        #expect(try await Self.client(stand).value(of: "up") == 0.25)
    }

    /// No Content-Length, no chunks: the body ends with the connection, which is not reused.
    @Test(.tags(.webhook))
    func anAnswerEndedByTheConnectionIsReadAndNotReused() async throws {
        let stand = try WebhookReceiver(otherwise: .raw("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n" + Self.sample, thenClose: true))
        defer { stand.stop() }
        let client = try Self.client(stand)
        #expect(try await client.value(of: "up") == 0.25)
        #expect(try await client.value(of: "up") == 0.25)
        #expect(stand.connectionsAccepted == 2)
    }

    @Test(.tags(.webhook))
    func keptAliveConnectionsAreReusedAndTheRequestIsAForm() async throws {
        let stand = try WebhookReceiver(otherwise: .raw(Self.contentLength(), thenClose: false))
        defer { stand.stop() }
        let client = try Self.client(stand)
        for _ in 0..<5 { #expect(try await client.value(of: #"max(errors{feature="a b"})"#) == 0.25) }
        #expect(stand.connectionsAccepted == 1)
        let request = try #require(stand.requests.last)
        #expect(request.method == "POST")
        #expect(request.path == "/api/v1/query")
        #expect(request.header("host") == "127.0.0.1:\(stand.port)")
        #expect(request.header("content-type") == "application/x-www-form-urlencoded")
        #expect(request.header("accept-encoding") == nil, "no compression is asked for")
        #expect(request.text == "query=max%28errors%7Bfeature%3D%22a%20b%22%7D%29")
    }

    /// A stand-in that answers the first request and keeps the connection, closes it at the
    /// second without answering, and answers every later one.
    static func closingTheSecondRequest() throws -> WebhookReceiver {
        try WebhookReceiver([.raw(contentLength(), thenClose: false), .close], otherwise: .raw(contentLength(), thenClose: false))
    }

    /// A kept-alive connection the server closes when the next request arrives (its idle
    /// timeout, racing the request) is replaced once by a new connection, without an attempt
    /// of the retry policy; a new connection closed the same way is a failure.
    @Test(.tags(.webhook))
    func aReusedConnectionClosedBeforeItsAnswerIsReplacedOnce() async throws {
        let stand = try Self.closingTheSecondRequest()
        defer { stand.stop() }
        let client = try Self.client(stand)
        #expect(try await client.value(of: "up") == 0.25)
        #expect(try await client.value(of: "up") == 0.25)
        #expect(stand.requests.count == 3)
        #expect(stand.connectionsAccepted == 2)

        let closing = try WebhookReceiver(otherwise: .close)
        defer { closing.stop() }
        let failure = await Self.failure(try Self.client(closing))
        #expect(failure?.code == .unreachable, "\(String(describing: failure))")
        #expect(closing.requests.count == 1)
    }

    /// A child process started while the stand-in holds a connection open does not inherit it,
    /// so the stand-in's close still ends the connection. (An inherited copy kept it open, and
    /// the query waited for its whole timeout: a full test run started servers meanwhile.)
    @Test(.tags(.webhook))
    func aChildStartedMeanwhileDoesNotKeepAClosedConnectionOpen() async throws {
        let stand = try Self.closingTheSecondRequest()
        defer { stand.stop() }
        let client = try Self.client(stand)
        #expect(try await client.value(of: "up") == 0.25)
        // A child that lives until its stdin closes (when `child` is released).
        let child = try PipedProcess("/bin/cat", [])
        #expect(try await client.value(of: "up") == 0.25)
        #expect(stand.connectionsAccepted == 2)
        withExtendedLifetime(child) {}
    }

    static let notHTTP: [(answer: String, says: String)] = [
        ("SSH-2.0-OpenSSH_9.2\r\n\r\n", "HTTP/1.x status line"),
        ("HTTP/1.1 2x0 OK\r\n\r\n", "three digits"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "Transfer-Encoding other than chunked"),
        ("HTTP/1.1 200 OK\r\nContent-Length: 12\r\nContent-Length: 13\r\n\r\n", "Content-Length that is not one number"),
        ("HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "header line without a colon"),
        ("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
        ("HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"status\"", "closed before the end"),
    ]

    @Test(.tags(.webhook), arguments: notHTTP)
    func anAnswerThatIsNotHTTPIsAnUnreachablePrometheus(answer: String, says: String) async throws {
        let stand = try WebhookReceiver(otherwise: .raw(answer, thenClose: true))
        defer { stand.stop() }
        let failure = await Self.failure(try Self.client(stand))
        #expect(failure?.code == .unreachable)
        #expect(failure?.message.contains(says) == true, "\(String(describing: failure))")
    }

    @Test(.tags(.webhook))
    func anAnswerLargerThanTheLimitIsRefusedUnread() async throws {
        let stand = try WebhookReceiver(otherwise: .raw("HTTP/1.1 200 OK\r\nContent-Length: 9000000\r\n\r\n{", thenClose: false))
        defer { stand.stop() }
        let failure = await Self.failure(try Self.client(stand, attempts: 3))
        #expect(failure?.code == .unparsable)
        #expect(failure?.message.contains("more than 8 MiB") == true, "\(String(describing: failure))")
        #expect(stand.requests.count == 1, "not retried")
    }

    @Test func theOriginOfABaseURL() throws {
        func origin(_ text: String) throws -> HTTPOrigin { try HTTPOrigin.parse(HTTPEndpoint.parse(text).get()).get() }
        let v6 = try origin("http://[::1]:9090/prometheus/")
        #expect(v6.host == "::1" && v6.port == 9090 && v6.pathPrefix == "/prometheus" && v6.hostHeader == "[::1]:9090" && !v6.secure)
        let named = try origin("https://prometheus.internal")
        #expect(named.host == "prometheus.internal" && named.port == 443 && named.pathPrefix == "" && named.secure)
        #expect(try origin("http://127.0.0.1").port == 80)
        for bad in ["http://127.0.0.1:99999", "http://127.0.0.1:nine", "http://[::1"] {
            #expect(throws: HTTPOrigin.Problem.self, "\(bad)") { try origin(bad) }
        }
    }

    /// Prometheus (Go's net/http) sends an answer of more than 2 KiB in chunks: 300 series.
    @Test(.requiresPrometheus, .tags(.prometheus))
    func aLargeAnswerFromARealPrometheusIsReadInChunks() async throws {
        let metrics = try MetricsEndpoint()
        metrics.set((0..<300).map { "demo_many{series=\"s\($0)\"} 1\n" }.joined())
        let prometheus = try await offThePool { try PrometheusServer(scraping: [metrics.port]) }
        try await offThePool { try prometheus.waitForData("demo_many") }
        let client = PrometheusClient(base: try HTTPEndpoint.parse(prometheus.url).get(), timeout: .seconds(10))
        do throws(PrometheusError) {
            _ = try await client.value(of: "demo_many")
            Issue.record("300 series gave one value")
        } catch {
            #expect(error.code == .ambiguous && error.message.contains("300 series"), "\(error)")
        }
        #expect(try await client.value(of: "sum(demo_many)") == 300)
        // An evaluation time is sent as the API's Unix seconds: time() answers it back.
        let instant = Timestamp(microsecondsSinceEpoch: 1_733_338_800_250_000)
        #expect(try await client.value(of: "time()", at: instant) == 1_733_338_800.25)
        #expect(try await client.samples(of: "vector(time())", at: instant).first?.value == 1_733_338_800.25)
        await prometheus.stopOffPool()
    }

    /// https:// to a real Prometheus serving TLS with certificates made here: the query is
    /// answered when its CA is trusted, and refused, naming the certificate, when it is not.
    @Test(.requiresPrometheus, .tags(.prometheus))
    func httpsToARealPrometheus() async throws {
        let directory = try makeTemporaryDirectory("prometheus-tls")
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let certificates = try await offThePool { try TestCertificates(directory: directory) }
        try "tls_server_config:\n  cert_file: \(certificates.serverCertificate)\n  key_file: \(certificates.serverKey)\n"
            .write(toFile: directory + "/web.yml", atomically: true, encoding: .utf8)
        try "global:\n  scrape_interval: 1s\n".write(toFile: directory + "/prometheus.yml", atomically: true, encoding: .utf8)
        let port = try freeLoopbackPort()
        let prometheus = try ChildProcess(
            try #require(executablePath("prometheus")),
            [
                "--config.file=\(directory)/prometheus.yml", "--storage.tsdb.path=\(directory)/data", "--web.config.file=\(directory)/web.yml",
                "--web.listen-address=127.0.0.1:\(port)", "--log.level=warn",
            ], output: directory + "/prometheus.log")
        let base = try HTTPEndpoint.parse("https://localhost:\(port)").get()
        func client(trusting ca: String) -> PrometheusClient {
            PrometheusClient(
                base: base, timeout: .seconds(5), retry: RetryPolicy(baseDelay: .zero, maxAttempts: 1), guards: EndpointGuard(name: "tls"),
                clock: ContinuousClock(), trust: RedisURL.TLS(caCertificatePath: ca))
        }
        let trusting = client(trusting: certificates.caCertificate)
        // Prometheus takes a moment to listen (long on a loaded machine): ask until it answers
        // (or has exited).
        let answered = await eventually(within: .seconds(120), every: .milliseconds(100)) {
            if prometheus.hasExited() { return true }
            return (try? await trusting.value(of: "vector(1)")) != nil
        }
        var answer: Double?
        if answered { answer = try? await trusting.value(of: "vector(1)") }
        #expect(answer == 1, "\((try? String(contentsOfFile: directory + "/prometheus.log", encoding: .utf8)) ?? "")")
        let failure = await Self.failure(client(trusting: certificates.otherCACertificate), "vector(1)")
        #expect(failure?.code == .unreachable)
        #expect(failure?.message.contains("certificate was rejected") == true, "\(String(describing: failure))")
        await prometheus.terminateOffPool()
    }
}
