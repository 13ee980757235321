import ArgumentParser
import Logging
import RolloutAudit
import RolloutGate
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
            scope (rollout tokens add); without one the server listens on loopback only. \
            docs/serve.md has the details.
            """
    )
    @OptionGroup var options: ConnectionOptions
    @Option(help: ArgumentHelp("Where to listen: HOST:PORT (without --tokens-file, loopback only: 127.0.0.1, ::1 or localhost).", valueName: "host:port"))
    var listen = "127.0.0.1:8016"
    @OptionGroup var tokensFile: TokensFileOption
    @OptionGroup var snapshotFile: SnapshotFileOption

    func validate() throws {
        _ = try Self.address(listen, authenticated: tokensFile.path != nil)
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
        // The operator API writes the audit log: a path it cannot write fails now, not at the first change.
        let auditLog = options.auditLog
        try await auditLog.preflight()
        let metrics = FlagServer.bootstrapMetrics()
        var tokens: TokenStore?
        if let path = tokensFile.path { tokens = try await TokenStore(path: path, logger: logger) }
        var configuration = FeatureGate.Configuration()
        configuration.discoversFeatures = true
        configuration.snapshotFile = snapshotFile.path
        let gate = FeatureGate(redisURL: try options.redisURL(), configuration: configuration, logger: Logger(label: "rollout-gate"))
        try await FlagServer(gate: gate, tokens: tokens, metrics: metrics, auditLog: auditLog).run(host: host, port: port, logger: logger)
    }
}

import Foundation
