import Foundation
import RolloutTestSupport
import Testing

@Suite("rollout retry", .tags(.cli))
struct RetryCommandTests {
    @Test func retriesUntilTheCommandSucceedsAndForwardsItsOutput() async throws {
        let directory = try makeTemporaryDirectory("retry")
        let counter = directory + "/count"
        let script = "n=$(cat \(counter) 2>/dev/null || echo 0); n=$((n+1)); echo $n > \(counter); echo \"try $n\"; [ $n -ge 3 ]"
        let result = try await runCommand(try rolloutBinary(), ["retry", "--attempts", "5", "--base-delay", "20ms", "--", "sh", "-c", script])
        #expect(result.status == 0)
        #expect(result.stdout == "try 1\ntry 2\ntry 3\n")
        #expect(result.stderr.contains("attempt 1/5 exited 1; next attempt in 20ms"))
        #expect(result.stderr.contains("attempt 2/5 exited 1; next attempt in 40ms"))
        #expect(result.stderr.contains("attempt 3/5 succeeded"))
    }

    @Test func exitsWithTheLastAttemptsCode() async throws {
        let result = try await runCommand(
            try rolloutBinary(), ["retry", "--attempts", "2", "--base-delay", "10ms", "--policy", "fixed", "--", "sh", "-c", "echo out; exit 7"])
        #expect(result.status == 7)
        #expect(result.stdout == "out\nout\n")
        #expect(result.stderr.contains("attempt 2/2 exited 7; giving up"))
    }

    @Test(arguments: [
        (["retry", "--", "no-such-command-here"], "was not found"),
        (["retry", "--base-delay=-5s", "--", "true"], "--base-delay -5s"),
        (["retry", "--attempts", "0", "--", "true"], "--attempts must be 1 or more"),
        (["retry", "--policy", "random", "--", "true"], "--policy random"),
        (["retry"], "Give the command after --"),
    ])
    func badInputIsRefusedBeforeRunningAnything(arguments: [String], message: String) async throws {
        let result = try await runCommand(try rolloutBinary(), arguments)
        #expect(result.status == 2)
        #expect(result.stderr.contains(message), "\(result.stderr)")
    }
}
