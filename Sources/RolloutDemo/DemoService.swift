import Foundation
public import Hummingbird
import Logging
public import Prometheus
public import RolloutGate
import Synchronization

/// The demo service of the quickstart: every request goes through the gate; the new code path
/// (feature on) can be made to fail or slow down at will; `/metrics` exposes what the
/// controller's checks read: `action_exec_total`, `action_error_total` and the
/// `action_latency_seconds` histogram, labelled `provider` (the feature) and `path` (new|old),
/// and the gate's own series from `registry`, among them the cohort counts each request is
/// recorded in (``FeatureHandle/record(_:failed:duration:)``), which a `cohort` check compares.
public struct DemoService: Sendable {
    /// The feature gating the new code path.
    public let feature: FeatureName
    /// The gate the requests go through.
    public let gate: FeatureGate
    private let state: DemoState
    private let registry: PrometheusCollectorRegistry

    /// A demo for `feature` through `gate`; `registry` is the one swift-metrics was
    /// bootstrapped with (`PrometheusMetricsFactory(registry:)`), served on `/metrics`.
    public init(feature: FeatureName, gate: FeatureGate, registry: PrometheusCollectorRegistry) {
        self.feature = feature
        self.gate = gate
        self.registry = registry
        state = DemoState(provider: feature.rawValue)
    }

    /// The routes: `GET /action?actor=ID`, `GET /metrics`, `POST /faults?error_rate=0.2&latency=0.8`
    /// (the new path's error probability and added latency in seconds).
    public func router() -> Router<BasicRequestContext> {
        let router = Router()
        let handle = gate.feature(feature)
        router.get("/action") { request, _ -> Response in
            let actor = request.uri.queryParameters.get("actor") ?? "anonymous"
            let outcome = await serve(handle: handle, actor: actor)
            return Response(status: outcome.failed ? .internalServerError : .ok, body: .init(byteBuffer: ByteBuffer(string: outcome.path + "\n")))
        }
        router.get("/metrics") { _, _ -> Response in
            var headers = HTTPFields()
            headers[.contentType] = "text/plain; version=0.0.4"
            var text = [UInt8](state.exposition().utf8)
            registry.emit(into: &text)
            return Response(status: .ok, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: text)))
        }
        router.post("/faults") { request, _ -> String in
            let errorRate = request.uri.queryParameters.get("error_rate").flatMap(Double.init)
            let latency = request.uri.queryParameters.get("latency").flatMap(Double.init)
            let faults = state.setFaults(errorRate: errorRate, latency: latency)
            return "new path: error_rate=\(faults.errorRate) latency=+\(faults.latency)s\n"
        }
        return router
    }

    /// Sends `requestsPerSecond` requests a second from random actors through the gate, in
    /// process, until cancelled: traffic for the quickstart without another tool.
    public func generateLoad(requestsPerSecond: Int) async {
        guard requestsPerSecond > 0 else { return }
        let handle = gate.feature(feature)
        let pause = Duration.nanoseconds(1_000_000_000 / Int64(requestsPerSecond))
        while !Task.isCancelled {
            let actor = "user-\(Int.random(in: 0..<100_000))"
            Task { _ = await serve(handle: handle, actor: actor) }
            try? await Task.sleep(for: pause)
        }
    }

    /// One request: old path, or new path with the injected faults, recorded in its cohort.
    func serve(handle: FeatureHandle, actor: String) async -> (path: String, failed: Bool) {
        let decision = handle.decision(for: Subject(id: actor))
        let isNew = decision.isOn
        let faults = state.faults()
        // The old path takes 20-60 ms; the new one the same plus the injected latency.
        var seconds = Double.random(in: 0.020...0.060)
        if isNew { seconds += faults.latency }
        try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
        let failed = isNew && Double.random(in: 0..<1) < faults.errorRate
        state.record(path: isNew ? "new" : "old", seconds: seconds, failed: failed)
        handle.record(decision, failed: failed, duration: .nanoseconds(Int64(seconds * 1e9)))
        return (isNew ? "new" : "old", failed)
    }
}

/// Counters and a histogram per path, and the injected faults.
final class DemoState: Sendable {
    static let buckets: [Double] = [0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5]
    let provider: String
    private let counts = Mutex<[String: PathCounts]>(["new": PathCounts(), "old": PathCounts()])
    private let injected = Mutex<(errorRate: Double, latency: Double)>((0.001, 0))

    init(provider: String) { self.provider = provider }

    struct PathCounts {
        var requests = 0
        var errors = 0
        var sum = 0.0
        var buckets = [Int](repeating: 0, count: DemoState.buckets.count)
    }

    func faults() -> (errorRate: Double, latency: Double) { injected.withLock { $0 } }

    func setFaults(errorRate: Double?, latency: Double?) -> (errorRate: Double, latency: Double) {
        injected.withLock { faults in
            if let errorRate { faults.errorRate = min(1, max(0, errorRate)) }
            if let latency { faults.latency = max(0, latency) }
            return faults
        }
    }

    func record(path: String, seconds: Double, failed: Bool) {
        counts.withLock { counts in
            var entry = counts[path] ?? PathCounts()
            entry.requests += 1
            if failed { entry.errors += 1 }
            entry.sum += seconds
            for (index, bound) in Self.buckets.enumerated() where seconds <= bound { entry.buckets[index] += 1 }
            counts[path] = entry
        }
    }

    /// Prometheus's text format. The new path carries provider=<feature>; the old one
    /// provider="<feature>-legacy", so the controller's queries see the new code only.
    func exposition() -> String {
        let snapshot = counts.withLock { $0 }
        var text = "# TYPE action_exec_total counter\n# TYPE action_error_total counter\n# TYPE action_latency_seconds histogram\n"
        for (path, entry) in snapshot.sorted(by: { $0.key < $1.key }) {
            let labels = "provider=\"\(path == "new" ? provider : provider + "-legacy")\",path=\"\(path)\""
            text += "action_exec_total{\(labels)} \(entry.requests)\n"
            text += "action_error_total{\(labels)} \(entry.errors)\n"
            for (index, bound) in Self.buckets.enumerated() {
                text += "action_latency_seconds_bucket{\(labels),le=\"\(bound)\"} \(entry.buckets[index])\n"
            }
            text += "action_latency_seconds_bucket{\(labels),le=\"+Inf\"} \(entry.requests)\n"
            text += "action_latency_seconds_sum{\(labels)} \(entry.sum)\n"
            text += "action_latency_seconds_count{\(labels)} \(entry.requests)\n"
        }
        return text
    }
}
