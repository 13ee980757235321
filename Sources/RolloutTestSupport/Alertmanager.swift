import Foundation
public import Testing

extension Trait where Self == ConditionTrait {
    /// Runs the test when Debian's prometheus-alertmanager is installed; in CI (`CI=true`)
    /// always runs, so a missing server fails instead of skipping.
    public static var requiresAlertmanager: Self {
        .enabled(
            if: isCI || (executablePath("prometheus-alertmanager") != nil && executablePath("redis-server") != nil),
            "prometheus-alertmanager or redis-server is not installed (scripts/test.sh installs them)")
    }
}

/// A real Alertmanager on a free loopback port, clustering off, with `receivers` (the YAML of
/// its `route:` and `receivers:`). Alerts are posted to it as Prometheus would.
public final class AlertmanagerServer: Sendable {
    public let port: Int
    public let directory: String
    private let process: ChildProcess

    public init(config: String) throws {
        guard let binary = executablePath("prometheus-alertmanager") else {
            throw FixtureError("prometheus-alertmanager is not installed: run scripts/test.sh, or apt-get install prometheus-alertmanager")
        }
        directory = try makeTemporaryDirectory("alertmanager")
        try config.write(toFile: directory + "/alertmanager.yml", atomically: true, encoding: .utf8)
        port = try freeLoopbackPort()
        let log = directory + "/alertmanager.log"
        // --cluster.listen-address= turns the HA gossip off: it would listen on 0.0.0.0:9094.
        process = try ChildProcess(
            binary,
            [
                "--config.file=\(directory)/alertmanager.yml", "--storage.path=\(directory)/data", "--web.listen-address=127.0.0.1:\(port)",
                "--cluster.listen-address=", "--log.level=warn",
            ], output: log)
        let deadline = Date().addingTimeInterval(20)
        while Date() < deadline {
            if let (status, _) = try? httpGet(port: port, path: "/-/ready"), status == 200 { return }
            if process.hasExited() { throw FixtureError("alertmanager exited at start: \((try? String(contentsOfFile: log, encoding: .utf8)) ?? "")") }
            usleep(50_000)
        }
        process.terminate(SIGKILL)
        throw FixtureError("alertmanager did not become ready on port \(port)")
    }

    deinit {
        process.terminate(SIGTERM)
        try? FileManager.default.removeItem(atPath: directory)
    }

    public var url: String { "http://127.0.0.1:\(port)" }
    public var logText: String { (try? String(contentsOfFile: directory + "/alertmanager.log", encoding: .utf8)) ?? "" }
}
