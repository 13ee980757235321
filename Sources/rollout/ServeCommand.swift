import ArgumentParser
import Foundation
import Logging
import RolloutAudit
import RolloutController
import RolloutGate
import RolloutRedis
import RolloutServe

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Serve the gate over HTTP: OpenFeature's OFREP for services in any language.",
        discussion: """
            POST /ofrep/v1/evaluate/flags/KEY with {"context": {"targetingKey": "...", "workspace": "...", \
            "internal": true}} answers one flag; POST /ofrep/v1/evaluate/flags answers every flag, with an \
            ETag (If-None-Match: 304). GET /healthz answers while the process runs, GET /readyz once a \
            snapshot is loaded. GET /v1/features[/NAME[/audit]] (scope read) show features' status; \
            POST /v1/features/NAME/pause|resume|kill|unkill|set-percent with {"reason": "...", "percent": 25} \
            (scope operate) change them, recorded in the audit log as api:<token name>. Every feature in the keyspace is served, also one created later with \
            redis-cli; evaluations read the gate's snapshot, never Redis. SIGTERM or SIGINT: stop \
            accepting, finish the requests in flight (at most 10 s), exit 0. With --tokens-file every \
            route but the health ones needs a token (Authorization: Bearer, or X-API-Key) with its \
            scope (rollout tokens add); without one the server listens on loopback only. With --config \
            (or ROLLOUT_CONFIG; serve reads no ./rollout.yaml by default), POST /v1/alerts takes Alertmanager's webhook: a firing alert labelled \
            feature=F runs F's rollback checks at once (never a promotion), rollout_action=rollback \
            forces the rollback; without a policy that route answers 501. docs/serve.md has the details.
            """
    )
    @OptionGroup var options: ConnectionOptions
    @OptionGroup var replicaOptions: ReplicaOptions
    @Option(help: ArgumentHelp("Where to listen: HOST:PORT (without --tokens-file, loopback only: 127.0.0.1, ::1 or localhost).", valueName: "host:port"))
    var listen = "127.0.0.1:8016"
    @OptionGroup var tokensFile: TokensFileOption
    @OptionGroup var snapshotFile: SnapshotFileOption
    @OptionGroup var policyOptions: ControllerCommand.PolicyOptions
    @Option(help: ArgumentHelp("The alert label naming the feature an alert is about.", valueName: "label"))
    var alertFeatureLabel = "feature"
    @Option(help: ArgumentHelp("At most this many connections at once (1 to 100000); further ones wait to be accepted.", valueName: "count"))
    var maxConnections = 1024
    @Option(help: ArgumentHelp("Close a connection that has been idle this long (1s to 1h).", valueName: "duration"))
    var idleTimeout = "60s"

    @Option(help: ArgumentHelp("At most this many change-event streams at once (1 to 100000); more are 503.", valueName: "count"))
    var maxEventStreams = 1000
    @Option(help: ArgumentHelp("How often an idle change-event stream gets a keep-alive comment (1s to 1h).", valueName: "duration"))
    var eventKeepAlive = "15s"

    /// The bounds of `--idle-timeout` and `--event-keep-alive`.
    static let idleTimeouts = Duration.seconds(1)...Duration.seconds(3600)

    /// `--idle-timeout` and `--event-keep-alive`, each within ``idleTimeouts``.
    func durations() throws -> (idle: Duration, keepAlive: Duration) {
        (try boundedDuration("--idle-timeout", idleTimeout, in: Self.idleTimeouts),
         try boundedDuration("--event-keep-alive", eventKeepAlive, in: Self.idleTimeouts))
    }

    func validate() throws {
        _ = try Self.address(listen, authenticated: tokensFile.path != nil)
        guard (1...100_000).contains(maxConnections) else {
            throw ValidationError("--max-connections \(maxConnections) is outside the allowed 1 to 100000.")
        }
        _ = try durations()
        guard (1...100_000).contains(maxEventStreams) else {
            throw ValidationError("--max-event-streams \(maxEventStreams) is outside the allowed 1 to 100000.")
        }
        guard !alertFeatureLabel.isEmpty, alertFeatureLabel.utf8.count <= 128 else {
            throw ValidationError("--alert-feature-label must be a label name of 1 to 128 characters.")
        }
    }

    /// The policy, when one is given (--config or ROLLOUT_CONFIG): it validates and its audit log
    /// is writable, or the server does not start (exit 2). Its Redis is serve's: `--redis-url`
    /// naming another server or database is refused; without --redis-url and REDIS_URL, the
    /// policy's `redis:` is used.
    func policy() async throws -> ControllerPolicy? {
        let environment = ProcessInfo.processInfo.environment
        guard policyOptions.config != nil || environment["ROLLOUT_CONFIG"].map({ !$0.isEmpty }) == true else { return nil }
        var policy = try await policyOptions.load()
        // --audit-log names the webhook's audit log over the policy's audit_log (and ROLLOUT_AUDIT_LOG).
        if let path = options.auditLogPath { policy.auditLog = path }
        // --min-replicas and --replica-timeout hold for the webhook's changes as for the API's.
        if let replicas = try replicaOptions.acknowledgement(over: policy.replicas) { policy.replicas = replicas }
        if !policy.dryRun { try await AuditLog(path: policy.auditLog).preflight() }
        if options.redisURLText != nil {
            let served = try options.redisURL()
            guard served.reachesTheSameData(as: policy.redis) else {
                throw ValidationError(
                    "--redis-url \(served) and the policy's Redis \(policy.redis) are different servers or databases: the webhook would act on one and serve the other. Give one Redis (leave out --redis-url to use the policy's; credentials may differ).")
            }
        }
        return policy
    }

    /// HOST and PORT of `--listen`, on loopback only.
    static func address(_ text: String, authenticated: Bool) throws -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
            throw ValidationError("--listen \(text) is not HOST:PORT (e.g. 127.0.0.1:8016).")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard authenticated || ["127.0.0.1", "::1", "localhost"].contains(host) else {
            throw ValidationError(
                "--listen \(text): without --tokens-file (or ROLLOUT_TOKENS_FILE) rollout serve listens on loopback only (127.0.0.1, ::1 or localhost). Make tokens with `rollout tokens add NAME --scopes evaluate`.")
        }
        return (host, port)
    }

    func run() async throws {
        let (host, port) = try Self.address(listen, authenticated: tokensFile.path != nil)
        let logger = Logger(label: "rollout-serve")
        let policy = try await policy()
        // The operator API writes the audit log (the policy's, with --config, as the webhook
        // does): a path it cannot write fails now, not at the first change.
        let auditLog = policy.map { AuditLog(path: $0.auditLog) } ?? options.auditLog
        try await auditLog.preflight()
        let metrics = FlagServer.bootstrapMetrics()
        var tokens: TokenStore?
        if let path = tokensFile.path { tokens = try await TokenStore(path: path, logger: logger) }
        let alerts = policy.map {
            AlertWebhook(controller: Controller(policy: $0, logger: Logger(label: "rollout-controller")), featureLabel: alertFeatureLabel, logger: logger)
        }
        // One Redis: the policy's when --redis-url and REDIS_URL leave it unsaid.
        var redisURL = try options.redisURL()
        if let policy, options.redisURLText == nil, ProcessInfo.processInfo.environment["REDIS_URL"].map({ !$0.isEmpty }) != true {
            redisURL = policy.redis
        }
        var configuration = FeatureGate.Configuration()
        configuration.discoversFeatures = true
        configuration.snapshotFile = snapshotFile.path
        let gate = FeatureGate(redisURL: redisURL, configuration: configuration, logger: Logger(label: "rollout-gate"))
        if let policy {
            logger.notice(
                "Alertmanager webhook on POST /v1/alerts",
                metadata: ["policy.features": "\(policy.features.count)", "alert.feature_label": "\(alertFeatureLabel)", "dry_run": "\(policy.dryRun)"])
        }
        let durations = try durations()
        try await FlagServer(
            gate: gate, tokens: tokens, metrics: metrics, alerts: alerts, auditLog: auditLog, replicas: policy?.replicas ?? replicaOptions.acknowledgement() ?? .automatic,
            events: ChangeEvents(
                maximumSubscribers: maxEventStreams,
                keepAliveInterval: durations.keepAlive)
        ).run(
            host: host, port: port, maximumConnections: maxConnections,
            idleTimeout: durations.idle, logger: logger)
    }
}
