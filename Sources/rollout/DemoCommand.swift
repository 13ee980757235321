import ArgumentParser
import Hummingbird
import Logging
import Metrics
import Prometheus
import RolloutDemo
import RolloutGate

struct DemoServiceCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "demo-service",
        abstract: "A demo service whose requests go through the gate, with Prometheus metrics on /metrics (scripts/quickstart.sh).",
        discussion: """
            GET /action?actor=ID answers through the gate; GET /metrics serves action_exec_total, \
            action_error_total and action_latency_seconds, and the gate's series, with each request \
            recorded in its cohort (rollout_cohort_requests_total, rollout_cohort_failures_total, \
            rollout_cohort_duration_seconds); POST /faults?error_rate=0.3&latency=0.8 \
            makes the new code path fail or slow down.
            """
    )
    @OptionGroup var options: ConnectionOptions
    @Option(help: "The feature gating the new code path.") var feature = "demo"
    @Option(help: "The port on 127.0.0.1.") var port = 8080
    @Option(help: "Requests a second sent in process from random actors (0 for none).") var load = 50

    func validate() throws {
        _ = try featureName(feature)
        if !(1...65535).contains(port) { throw ValidationError("--port \(port) is not a TCP port.") }
        if load < 0 || load > 10_000 { throw ValidationError("--load must be from 0 to 10000 requests a second.") }
    }

    func run() async throws {
        let name = try featureName(feature)
        // Before the gate, whose metrics are made when it is.
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: registry))
        var configuration = FeatureGate.Configuration()
        configuration.refreshInterval = .seconds(1)
        let gate = FeatureGate(redisURL: try options.redisURL(), features: [name], configuration: configuration)
        let demo = DemoService(feature: name, gate: gate, registry: registry)
        let load = self.load
        let app = Application(
            router: demo.router(), configuration: .init(address: .hostname("127.0.0.1", port: port)), services: [gate],
            onServerRunning: { _ in
                Task { await demo.generateLoad(requestsPerSecond: load) }
            }, logger: Logger(label: "demo-service"))
        try await app.runService()
    }
}
