import Foundation
import Logging
import NIOHTTP1
public import RolloutGate
import RolloutRedis

/// Instant queries against Prometheus's HTTP API (`POST /api/v1/query`), with a timeout per
/// attempt (the whole answer, headers to last byte) and retries with exponential backoff for
/// transient failures, all within a total deadline. A failed query is an error, never a
/// number: the original controller turned failures into 0.0 and could promote during an outage.
public struct PrometheusClient: Sendable {
    /// Prometheus's base URL.
    public let base: HTTPEndpoint
    /// The timeout of one attempt: from sending the query to the answer's last byte.
    public let timeout: Duration
    /// How transient failures are retried.
    public let retry: RetryPolicy
    /// The endpoint's circuit breaker, bulkhead and call statistics.
    public let guards: EndpointGuard
    /// What an attempt's timeout is measured on (injected so a test can move time itself).
    public let clock: any Clock<Duration>
    /// Keep-alive connections to `base`, or what is wrong with its host or port.
    private let connections: Result<HTTP1Client, PrometheusError>

    /// A client with its own keep-alive connections (closed when the last copy goes). By default 3
    /// attempts, 200 ms then 400 ms apart, with full jitter; the breaker opens after 5
    /// consecutive failed attempts for 30 s; at most 32 queries in flight.
    public init(
        base: HTTPEndpoint, timeout: Duration,
        retry: RetryPolicy = RetryPolicy(baseDelay: .milliseconds(200), maxDelay: .seconds(5), maxAttempts: 3, jitter: true),
        guards: EndpointGuard = EndpointGuard(name: "prometheus"), clock: any Clock<Duration> = ContinuousClock()
    ) {
        self.init(base: base, timeout: timeout, retry: retry, guards: guards, clock: clock, trust: RedisURL.TLS())
    }

    /// The same, trusting `trust` for an https:// Prometheus (tests pass their own CA; a run
    /// uses the system's store, which `SSL_CERT_FILE` and `SSL_CERT_DIR` can point elsewhere).
    init(base: HTTPEndpoint, timeout: Duration, retry: RetryPolicy, guards: EndpointGuard, clock: any Clock<Duration>, trust: RedisURL.TLS) {
        self.base = base
        self.timeout = timeout
        self.retry = retry
        self.guards = guards
        self.clock = clock
        connections = HTTPOrigin.parse(base)
            .map { HTTP1Client(origin: $0, peer: "Prometheus", trust: trust) }
            .mapError { PrometheusError(.unreachable, "The Prometheus URL \(base) \($0.reason); is prometheus: right?") }
    }

    /// The longest one query can take: every attempt's timeout and the longest wait between
    /// attempts (jitter only shortens them). A query never outlasts it.
    public var longestQuery: Duration {
        (1..<retry.maxAttempts).reduce(timeout * retry.maxAttempts) { total, attempt in
            total + retry.delay(afterAttempt: attempt, random: { 1 })
        }
    }

    /// The value of an instant query: nil when Prometheus has no data (an empty result, NaN,
    /// +Inf or -Inf); an error when the query could not be answered. While the endpoint's
    /// breaker is open the query is not sent and fails at once. Every attempt and wait ends by
    /// `deadline` (by default ``longestQuery`` from now): no retry starts that would cross it.
    /// `time` is the instant Prometheus evaluates at (its own now when nil): the queries a
    /// check combines (a cohort's `_sum` over its `_count`) must share one, or each young
    /// series is extrapolated to a different instant.
    public func value(of query: String, at time: Timestamp? = nil, deadline: ContinuousClock.Instant? = nil) async throws(PrometheusError) -> Double? {
        guard case .value(let value) = try await answer(of: query, shape: .value, at: time, deadline: deadline) else { return nil }
        return value
    }

    /// The samples of an instant query that returns a vector, each with its labels, such as a
    /// histogram's buckets (`sum by (le) (...)`): empty when Prometheus has no data, samples
    /// whose value is NaN or ±Inf left out. The same bounds, retries, timeouts and errors as
    /// ``value(of:at:deadline:)``; a scalar or any other type is refused.
    public func samples(of query: String, at time: Timestamp? = nil, deadline: ContinuousClock.Instant? = nil) async throws(PrometheusError) -> [PrometheusSample] {
        guard case .samples(let samples) = try await answer(of: query, shape: .samples, at: time, deadline: deadline) else { return [] }
        return samples
    }

    /// The series of a range query (`POST /api/v1/query_range`) from `start` to `end` every
    /// `step` (whole seconds, at least one), each with its labels and its points in time order;
    /// points whose value is NaN or ±Inf left out, no series when Prometheus has no data. The
    /// same bounds, retries, timeouts and errors as ``value(of:at:deadline:)``; an answer of more
    /// than ``maxRangePoints`` points, or of another type than a matrix, is refused.
    public func range(
        of query: String, start: Timestamp, end: Timestamp, step: Duration, deadline: ContinuousClock.Instant? = nil
    ) async throws(PrometheusError) -> [PrometheusSeries] {
        let seconds = max(1, (step.components.seconds) + (step.components.attoseconds > 0 ? 1 : 0))
        guard case .series(let series) = try await answer(of: query, shape: .range(start: start, end: end, stepSeconds: seconds), at: nil, deadline: deadline)
        else { return [] }
        return series
    }

    /// The most points a range answer may hold, all series together (Prometheus's own limit is
    /// 11,000 per series).
    public static let maxRangePoints = 11_000

    /// `time` as the API's Unix seconds, to the microsecond: `1733338800.123456`.
    static func unixSeconds(_ time: Timestamp) -> String {
        let micros = time.microsecondsSinceEpoch
        let (seconds, fraction) = micros.quotientAndRemainder(dividingBy: 1_000_000)
        guard fraction >= 0 else { return String(Double(micros) / 1e6) }
        let digits = String(fraction)
        return "\(seconds)." + String(repeating: "0", count: 6 - digits.count) + digits
    }

    /// What a query's answer is read as.
    enum Shape: Sendable {
        /// One value (``value(of:at:deadline:)``).
        case value
        /// A vector's labelled samples (``samples(of:at:deadline:)``).
        case samples
        /// A range query's series (``range(of:start:end:step:deadline:)``).
        case range(start: Timestamp, end: Timestamp, stepSeconds: Int64)
    }

    /// A query's answer, read as its ``Shape``.
    enum Answer: Sendable {
        case value(Double?)
        case samples([PrometheusSample])
        case series([PrometheusSeries])
    }

    /// The query sent through the endpoint's guards, retried within `deadline`, read as `shape`.
    private func answer(of query: String, shape: Shape, at time: Timestamp?, deadline: ContinuousClock.Instant?) async throws(PrometheusError) -> Answer {
        var answer = Answer.value(nil)
        let deadline = deadline ?? ContinuousClock.now.advanced(by: longestQuery)
        let (failure, _) = await guards.call(
            retry: retry, deadline: deadline,
            stopped: { stop in
                switch stop {
                case .circuitOpen(let last):
                    return PrometheusError(
                        .unreachable,
                        "Prometheus at \(base) failed repeatedly; its circuit breaker is open, so the query was not sent."
                            + (last.map { " Last failure: \($0)" } ?? ""))
                case .deadlinePassed:
                    return PrometheusError(
                        .timeout,
                        "The run's time for Prometheus at \(base) ran out before the query was sent (query: \(query.prefix(120))). "
                            + "Prometheus is slow or too many queries wait; check it, or raise query_timeout.")
                case .retryWouldCrossDeadline(let error):
                    return PrometheusError(error.code, error.message + " Not retried: the run's time for Prometheus ends first.", httpStatus: error.httpStatus)
                }
            }
        ) { _, remaining -> AttemptOutcome<PrometheusError> in
            // Assigned, then returned after the block: no return from inside a typed-throws
            // `do` in an async closure (the pattern the reverted 571fc26 crashed with in release).
            var outcome = AttemptOutcome<PrometheusError>.succeeded
            do throws(PrometheusError) {
                answer = try await once(query, shape: shape, at: time, within: min(timeout, remaining ?? timeout))
            } catch {
                outcome = .failed(error, retryable: error.isTransient, endpointFault: error.isEndpointFailure)
            }
            return outcome
        }
        if let failure { throw failure }
        return answer
    }

    /// One attempt, its whole answer (head and body) within `limit`. The sockets' deadline, on
    /// the continuous clock, ends a stalled or trickling answer and closes its connection; on
    /// another clock (a test's), the attempt is also raced against `clock`, and the loser is
    /// cancelled, which shuts the connection down at once.
    private func once(_ query: String, shape: Shape, at time: Timestamp?, within limit: Duration) async throws(PrometheusError) -> Answer {
        let connections = try self.connections.get()
        var form = "query=" + formEncoded(query)
        var path = "/api/v1/query"
        if case .range(let start, let end, let step) = shape {
            path = "/api/v1/query_range"
            form += "&start=" + Self.unixSeconds(start) + "&end=" + Self.unixSeconds(end) + "&step=" + String(step)
        } else if let time {
            form += "&time=" + Self.unixSeconds(time)
        }
        let request = connections.request(method: "POST", path: path, contentType: "application/x-www-form-urlencoded", body: Array(form.utf8))
        let deadline = ContinuousClock.now.advanced(by: limit)
        let outcome: Result<HTTPAnswer, HTTPFailure>?
        if clock is ContinuousClock {
            outcome = await connections.exchange(request, maxBody: Self.maxAnswerBytes, deadline: deadline)
        } else {
            switch await withTimeLimit(limit, clock: clock, { await connections.exchange(request, maxBody: Self.maxAnswerBytes, deadline: deadline) }) {
            case .success(let exchanged)?: outcome = exchanged
            case .failure?, nil: outcome = nil
            }
        }
        switch outcome {
        case .success(let answer)?:
            let status = HTTPResponseStatus(statusCode: answer.status)
            switch shape {
            case .value: return .value(try parse(body: Data(answer.body), status: status, query: query))
            case .samples: return .samples(try parseSamples(body: Data(answer.body), status: status, query: query))
            case .range: return .series(try parseSeries(body: Data(answer.body), status: status, query: query))
            }
        case .failure(.transport(let error))? where error.code != .timeout:
            throw PrometheusError(.unreachable, "Cannot reach Prometheus at \(base): \(error.message) Is it running, and is prometheus: right?")
        case .failure(.malformed(let why))?:
            throw PrometheusError(.unreachable, "Prometheus at \(base) sent \(why); is something else listening there, or a proxy in between?")
        case .failure(.tooLarge(let limit))?:
            throw PrometheusError(
                .unparsable, "Prometheus at \(base) sent an answer of more than \(limit / 1024 / 1024) MiB (query: \(query.prefix(120))); a check needs one value.")
        case .failure(.transport)?, .failure(.cancelled)?, nil:
            let cut = limit < timeout ? " (cut to the \(limit.wholeMilliseconds) ms left of the run's time for Prometheus)" : ""
            throw PrometheusError(
                .timeout,
                "Prometheus at \(base) did not answer within query_timeout \(formatDuration(timeout))\(cut), headers to last byte "
                    + "(query: \(query.prefix(120))). "
                    + "Is it overloaded, or is a proxy in between stalling?")
        }
    }

    /// The largest answer read: a hostile or broken endpoint cannot make the run hold more.
    static let maxAnswerBytes = 8 * 1024 * 1024

    /// The value in Prometheus's answer: the one-sample shapes read directly (``quickSample(_:)``),
    /// anything else through ``parseDocument(body:status:query:)``.
    func parse(body: Data, status: HTTPResponseStatus, query: String) throws(PrometheusError) -> Double? {
        if status == .ok, let quick = body.withUnsafeBytes(quickSample) { return quick }
        return try parseDocument(body: body, status: status, query: query)
    }

    /// The value in Prometheus's answer read as a JSON document, with what is wrong when it is not one value.
    func parseDocument(body: Data, status: HTTPResponseStatus, query: String) throws(PrometheusError) -> Double? {
        let (resultType, data, shown) = try resultData(body: body, status: status, query: query)
        let sample: [Any]
        switch resultType {
        case "vector":
            guard let series = data["result"] as? [[String: Any]] else { throw PrometheusError(.unparsable, "Malformed vector from Prometheus (query: \(shown)).") }
            if series.isEmpty { return nil }
            guard series.count == 1 else {
                throw PrometheusError(
                    .ambiguous, "The query returns \(series.count) series; a check needs one value. Aggregate it, e.g. with sum(...). Query: \(shown)")
            }
            guard let value = series[0]["value"] as? [Any] else { throw PrometheusError(.unparsable, "Malformed sample from Prometheus (query: \(shown)).") }
            sample = value
        case "scalar":
            guard let value = data["result"] as? [Any] else { throw PrometheusError(.unparsable, "Malformed scalar from Prometheus (query: \(shown)).") }
            sample = value
        default:
            throw PrometheusError(.ambiguous, "The query returns a \(resultType), not one value (query: \(shown)).")
        }
        return try Self.sampleValue(sample, shown: shown)
    }

    /// The samples of a vector in Prometheus's answer, with their labels; NaN and ±Inf values
    /// left out (no data), an empty vector empty.
    func parseSamples(body: Data, status: HTTPResponseStatus, query: String) throws(PrometheusError) -> [PrometheusSample] {
        let (resultType, data, shown) = try resultData(body: body, status: status, query: query)
        guard resultType == "vector" else {
            throw PrometheusError(.ambiguous, "The query returns a \(resultType), not a vector of labelled samples (query: \(shown)).")
        }
        guard let series = data["result"] as? [[String: Any]] else { throw PrometheusError(.unparsable, "Malformed vector from Prometheus (query: \(shown)).") }
        var samples: [PrometheusSample] = []
        for item in series {
            guard let labels = item["metric"] as? [String: String], let sample = item["value"] as? [Any] else {
                throw PrometheusError(.unparsable, "Malformed sample from Prometheus (query: \(shown)).")
            }
            if let value = try Self.sampleValue(sample, shown: shown) { samples.append(PrometheusSample(labels: labels, value: value)) }
        }
        return samples
    }

    /// The series of a matrix in Prometheus's answer (a range query's), with their labels and
    /// their points in time order; NaN and ±Inf points left out, an empty matrix empty.
    func parseSeries(body: Data, status: HTTPResponseStatus, query: String) throws(PrometheusError) -> [PrometheusSeries] {
        let (resultType, data, shown) = try resultData(body: body, status: status, query: query)
        guard resultType == "matrix" else {
            throw PrometheusError(.ambiguous, "A range query answered a \(resultType), not a matrix (query: \(shown)).")
        }
        guard let items = data["result"] as? [[String: Any]] else { throw PrometheusError(.unparsable, "Malformed matrix from Prometheus (query: \(shown)).") }
        var series: [PrometheusSeries] = []
        var total = 0
        for item in items {
            guard let labels = item["metric"] as? [String: String], let values = item["values"] as? [[Any]] else {
                throw PrometheusError(.unparsable, "Malformed series from Prometheus (query: \(shown)).")
            }
            total += values.count
            guard total <= Self.maxRangePoints else {
                throw PrometheusError(.unparsable, "Prometheus answered more than \(Self.maxRangePoints) points (query: \(shown)); a wider step gives fewer.")
            }
            var points: [PrometheusSeries.Point] = []
            points.reserveCapacity(values.count)
            for pair in values {
                // The time is a JSON number (seconds, with a fraction); the value a string.
                guard pair.count == 2, !(pair[0] is String), let time = Self.number(pair[0]), time.isFinite else {
                    throw PrometheusError(.unparsable, "Malformed point from Prometheus (query: \(shown)).")
                }
                if let value = try Self.sampleValue(pair, shown: shown) { points.append(PrometheusSeries.Point(time: time, value: value)) }
            }
            guard zip(points, points.dropFirst()).allSatisfy({ $0.time < $1.time }) else {
                throw PrometheusError(.unparsable, "Prometheus answered points out of time order (query: \(shown)).")
            }
            series.append(PrometheusSeries(labels: labels, points: points))
        }
        return series
    }

    /// A JSON number as JSONSerialization gives it (an NSNumber, or a Swift number).
    private static func number(_ value: Any) -> Double? {
        if let number = value as? NSNumber { return number.doubleValue }
        if let number = value as? Double { return number }
        if let number = value as? Int { return Double(number) }
        return nil
    }

    /// The value of one `[timestamp, "value"]` pair: nil for NaN and ±Inf.
    private static func sampleValue(_ sample: [Any], shown: String) throws(PrometheusError) -> Double? {
        guard sample.count == 2, let text = sample[1] as? String else {
            throw PrometheusError(.unparsable, "Malformed sample from Prometheus (query: \(shown)).")
        }
        // Prometheus writes special values as "NaN", "+Inf", "-Inf": no data, never healthy.
        guard let value = Double(text) else {
            throw PrometheusError(.unparsable, "Prometheus sent the value \"\(text)\", which is not a number (query: \(shown)).")
        }
        return value.isFinite ? value : nil
    }

    /// A successful answer's result type and data, or what is wrong with the answer; with the
    /// query as messages show it.
    private func resultData(body: Data, status: HTTPResponseStatus, query: String) throws(PrometheusError) -> (String, [String: Any], String) {
        let shown = query.count > 120 ? String(query.prefix(120)) + "…" : query
        guard let document = try? JSONSerialization.jsonObject(with: body) as? [String: Any] else {
            // A proxy's error page (429, 502, 503...) is an HTTP failure, retried by its status;
            // only a 200 that is not Prometheus's JSON is unparsable.
            let code: PrometheusError.Code = status == .ok ? .unparsable : .httpStatus
            throw PrometheusError(
                code, "Prometheus answered HTTP \(status.code) with a body that is not its JSON API (query: \(shown)).",
                httpStatus: Int(status.code))
        }
        if document["status"] as? String == "error" {
            let type = document["errorType"] as? String ?? "unknown"
            let message = document["error"] as? String ?? ""
            let code: PrometheusError.Code = (type == "bad_data" || status.code == 400 || status.code == 422) ? .badQuery : .httpStatus
            throw PrometheusError(code, "Prometheus refused the query (\(type)): \(message). Query: \(shown)", httpStatus: Int(status.code))
        }
        guard status == .ok, document["status"] as? String == "success", let data = document["data"] as? [String: Any],
            let resultType = data["resultType"] as? String
        else {
            throw PrometheusError(.httpStatus, "Prometheus answered HTTP \(status.code) without a result (query: \(shown)).", httpStatus: Int(status.code))
        }
        return (resultType, data, shown)
    }
}

/// One sample of a vector: its labels (such as a bucket's `le`) and its value.
public struct PrometheusSample: Sendable, Hashable {
    /// The series' labels.
    public var labels: [String: String]
    /// Its value, finite.
    public var value: Double

    public init(labels: [String: String], value: Double) {
        self.labels = labels
        self.value = value
    }
}

/// One series of a range query: its labels and its points in time order.
public struct PrometheusSeries: Sendable, Hashable {
    /// One point: Unix seconds and a finite value.
    public struct Point: Sendable, Hashable {
        /// Unix seconds, as Prometheus wrote them.
        public var time: Double
        /// The value, finite.
        public var value: Double

        public init(time: Double, value: Double) {
            self.time = time
            self.value = value
        }
    }

    /// The series' labels.
    public var labels: [String: String]
    /// Its points, oldest first.
    public var points: [Point]

    public init(labels: [String: String], points: [Point]) {
        self.labels = labels
        self.points = points
    }
}

/// The answer of an instant query in the exact bytes Prometheus writes for one unlabelled sample,
/// a scalar or an empty vector, read without building a JSON document (`JSONSerialization` was
/// a measurable part of a run's CPU): `.some(value)`, `.some(nil)` for no data (empty, NaN,
/// ±Inf), or nil when the body is any other shape, which the full parser then reads. It accepts
/// nothing the full parser would refuse or read differently.
func quickSample(_ body: UnsafeRawBufferPointer) -> Double?? {
    var reader = ByteReader(body)
    guard reader.skip(#"{"status":"success","data":{"resultType":""#) else { return nil }
    let closing: StaticString
    if reader.skip(#"vector","result":["#) {
        if reader.skip("]}}") { return reader.atEnd ? .some(nil) : nil }
        guard reader.skip(#"{"metric":{},"value":["#) else { return nil }
        closing = #""]}]}}"#
    } else if reader.skip(#"scalar","result":["#) {
        closing = #""]}}"#
    } else {
        return nil
    }
    // The timestamp (seconds with a fraction), then the value as a JSON string without escapes.
    guard reader.skip(while: { $0 == UInt8(ascii: ".") || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) > 0,
        reader.skip(#",""#)
    else { return nil }
    let start = reader.offset
    guard reader.skip(while: { $0 != UInt8(ascii: "\"") && $0 != UInt8(ascii: "\\") }) > 0 else { return nil }
    let text = String(decoding: UnsafeRawBufferPointer(rebasing: body[start..<reader.offset]), as: UTF8.self)
    guard reader.skip(closing), reader.atEnd, let value = Double(text) else { return nil }
    return .some(value.isFinite ? value : nil)
}

/// A cursor over bytes for ``quickSample(_:)``.
private struct ByteReader {
    let bytes: UnsafeRawBufferPointer
    private(set) var offset = 0

    init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    /// Whether only JSON whitespace is left.
    var atEnd: Bool {
        bytes[offset...].allSatisfy { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\n") || $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\t") }
    }

    /// Moves past `literal` when the bytes continue with it.
    mutating func skip(_ literal: StaticString) -> Bool {
        let count = literal.utf8CodeUnitCount
        guard bytes.count - offset >= count else { return false }
        let matches = literal.withUTF8Buffer { expected in
            expected.indices.allSatisfy { bytes[offset + $0] == expected[$0] }
        }
        if matches { offset += count }
        return matches
    }

    /// Moves past the bytes that satisfy `accepted`; how many.
    mutating func skip(while accepted: (UInt8) -> Bool) -> Int {
        let start = offset
        while offset < bytes.count, accepted(bytes[offset]) { offset += 1 }
        return offset - start
    }
}

/// Why a Prometheus query failed. Any of them holds the feature and exits 1.
public struct PrometheusError: Error, Sendable, CustomStringConvertible {
    /// The kind of failure.
    public enum Code: String, Sendable {
        /// Connection refused, DNS, reset.
        case unreachable
        /// No answer within query_timeout.
        case timeout
        /// An HTTP status other than 200 (a 5xx is retried).
        case httpStatus = "http_status"
        /// Prometheus refused the query (bad_data): fix the policy file.
        case badQuery = "bad_query"
        /// A body that is not Prometheus's JSON.
        case unparsable
        /// The query returns several series or a non-instant type.
        case ambiguous
    }

    /// The kind of failure.
    public let code: Code
    /// What happened and what to do.
    public let message: String
    /// The HTTP status, when there was one.
    public let httpStatus: Int?

    init(_ code: Code, _ message: String, httpStatus: Int? = nil) {
        self.code = code
        self.message = message
        self.httpStatus = httpStatus
    }

    /// Worth another attempt: connection failures, timeouts, 429 and 502/503/504.
    public var isTransient: Bool {
        switch code {
        case .unreachable, .timeout: return true
        case .httpStatus: return httpStatus.map(RetryPolicy.transientHTTPStatuses.contains) ?? false
        case .badQuery, .unparsable, .ambiguous: return false
        }
    }

    /// Says something about Prometheus's health (for its circuit breaker): unreachable, timed
    /// out, or an HTTP error; a refused or ambiguous query does not.
    public var isEndpointFailure: Bool {
        switch code {
        case .unreachable, .timeout, .httpStatus: return true
        case .badQuery, .unparsable, .ambiguous: return false
        }
    }

    public var description: String { message }
}

/// application/x-www-form-urlencoded: unreserved characters kept, everything else %XX.
func formEncoded(_ text: String) -> String {
    var result = ""
    for byte in text.utf8 {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
            UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
            result.unicodeScalars.append(Unicode.Scalar(byte))
        default:
            let hex = Array("0123456789ABCDEF".utf8)
            result += "%" + String(decoding: [hex[Int(byte >> 4)], hex[Int(byte & 0xf)]], as: UTF8.self)
        }
    }
    return result
}

/// What `operation` gave, or nil when `clock` moved `limit` on first; the loser is cancelled,
/// and both have ended when it returns.
func withTimeLimit<Value: Sendable>(
    _ limit: Duration, clock: any Clock<Duration>, _ operation: @escaping @Sendable () async throws -> Value
) async -> Result<Value, any Error>? {
    await withTaskGroup(of: Result<Value, any Error>?.self) { group in
        group.addTask {
            do {
                return .success(try await operation())
            } catch {
                return .failure(error)
            }
        }
        group.addTask {
            // Cancelled only once the operation has finished (or the caller was cancelled).
            try? await clock.sleep(for: limit)
            return nil
        }
        let first = await group.next() ?? nil
        group.cancelAll()
        return first
    }
}
