import ArgumentParser
import Logging
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
            snapshot is loaded. Every feature in the keyspace is served, also one created later with \
            redis-cli; evaluations read the gate's snapshot, never Redis. SIGTERM or SIGINT: stop \
            accepting, finish the requests in flight (at most 10 s), exit 0. Without authentication \
            (not available yet) the server listens on loopback only. docs/serve.md has the details.
            """
    )
    @OptionGroup var options: ConnectionOptions
    @Option(help: ArgumentHelp("Where to listen: HOST:PORT on loopback (127.0.0.1, ::1 or localhost).", valueName: "host:port"))
    var listen = "127.0.0.1:8016"
    @OptionGroup var snapshotFile: SnapshotFileOption

    func validate() throws {
        _ = try Self.address(listen)
    }

    /// HOST and PORT of `--listen`, on loopback only.
    static func address(_ text: String) throws -> (host: String, port: Int) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (1...65535).contains(port) else {
            throw ValidationError("--listen \(text) is not HOST:PORT (e.g. 127.0.0.1:8016).")
        }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard ["127.0.0.1", "::1", "localhost"].contains(host) else {
            throw ValidationError(
                "--listen \(text): rollout serve has no authentication yet, so it listens on loopback only (127.0.0.1, ::1 or localhost). Put an authenticating proxy in front to serve other hosts.")
        }
        return (host, port)
    }

    func run() async throws {
        let (host, port) = try Self.address(listen)
        let logger = Logger(label: "rollout-serve")
        var configuration = FeatureGate.Configuration()
        configuration.discoversFeatures = true
        configuration.snapshotFile = snapshotFile.path
        let gate = FeatureGate(redisURL: try options.redisURL(), configuration: configuration, logger: Logger(label: "rollout-gate"))
        try await FlagServer(gate: gate).run(host: host, port: port, logger: logger)
    }
}

import Foundation
