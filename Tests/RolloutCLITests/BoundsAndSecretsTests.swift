import Foundation
import RolloutTestSupport
import Testing

@Suite("rollout refuses absurd durations", .tags(.cli))
struct DurationBoundsCLITests {
    @Test func validateExitsTwoOnAnAbsurdQueryTimeout() async throws {
        let directory = try makeTemporaryDirectory("bounds")
        let path = directory + "/policy.yaml"
        try """
        prometheus: http://127.0.0.1:9090
        query_timeout: 106752d
        features:
          google:
            steps: [10]
            checks: [{name: e, query: up, max: 1}]
        """.write(toFile: path, atomically: true, encoding: .utf8)
        let result = try await runCommand(try rolloutBinary(), ["controller", "validate", "--config", path])
        #expect(result.status == 2)
        #expect(result.stderr.contains("query_timeout"))
        #expect(result.stderr.contains("outside the allowed 100ms to 5m"))
    }

    @Test(arguments: [
        ["controller", "run", "--config", "/nonexistent.yaml", "--every", "106752d"],
        ["guard", "lock", "google", "--window", "106752d"],
        ["watch", "google", "--config", "/nonexistent.yaml", "--for", "106752d"],
    ])
    func cliDurationOutsideItsRangeExitsTwo(arguments: [String]) async throws {
        let result = try await runCommand(try rolloutBinary(), arguments, environment: ["REDIS_URL": "redis://127.0.0.1:1"])
        #expect(result.status == 2, "\(result.stderr)")
        #expect(result.stderr.contains("is outside the allowed"))
    }
}
