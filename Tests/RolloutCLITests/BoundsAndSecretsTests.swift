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

/// No secret in any output: a password in a Redis URL that cannot be parsed, given on the
/// command line, in REDIS_URL or in a policy file, and credentials in a Prometheus URL, never
/// appear in what the binary prints.
@Suite("rollout never prints a secret", .tags(.cli))
struct SecretsCLITests {
    static let malformed = [
        "redis://user:S3CRETPASS", "redis://user:S3CRET@PASS@host:notaport", "redis://user:S3CRET/PASS@host/x",
        "S3CRETPASS://host", "rediss://user:S3CRETPASS@host?insecure=S3CRETPASS",
    ]

    @Test(arguments: malformed)
    func aMalformedRedisURLNeverEchoesItsPassword(url: String) async throws {
        let binary = try rolloutBinary()
        let directory = try makeTemporaryDirectory("secrets")
        let policy = directory + "/policy.yaml"
        try """
        prometheus: http://127.0.0.1:9
        redis: \(url)
        features:
          google:
            steps: [10]
            checks: [{name: e, query: up, max: 1}]
        """.write(toFile: policy, atomically: true, encoding: .utf8)
        let runs = [
            try await runCommand(binary, ["flags", "get", "google", "--redis-url", url]),
            try await runCommand(binary, ["flags", "get", "google"], environment: ["REDIS_URL": url]),
            try await runCommand(binary, ["controller", "validate", "--config", policy]),
            try await runCommand(binary, ["controller", "run", "--config", policy]),
        ]
        for result in runs {
            #expect(result.status != 0)
            let output = result.stdout + result.stderr
            #expect(!output.contains("S3CRET") && !output.contains("PASS"), "\(output)")
        }
    }

    @Test(arguments: ["http://admin:S3CRETPASS@127.0.0.1:9090", "htp://admin:S3CRETPASS@127.0.0.1", "http://:S3CRETPASS@"])
    func aPrometheusURLWithCredentialsIsRefusedWithoutEchoingThem(url: String) async throws {
        let directory = try makeTemporaryDirectory("secrets")
        let policy = directory + "/policy.yaml"
        try """
        prometheus: \(url)
        features:
          google:
            steps: [10]
            checks: [{name: e, query: up, max: 1}]
        """.write(toFile: policy, atomically: true, encoding: .utf8)
        let result = try await runCommand(try rolloutBinary(), ["controller", "validate", "--config", policy])
        #expect(result.status == 2)
        #expect(result.stderr.contains("prometheus"))
        #expect(!(result.stdout + result.stderr).contains("S3CRETPASS"), "\(result.stderr)")
    }
}
