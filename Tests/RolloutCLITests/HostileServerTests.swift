import RolloutTestSupport
import Testing

@Suite("rollout against a hostile server", .tags(.cli))
struct HostileServerCLITests {
    @Test func hugeAnnouncedReplyExitsOneWithoutReadingIt() async throws {
        let server = try HostileServer(header: "$1073741824\r\n", tail: .flood)
        let result = try await runCommand(
            try rolloutBinary(), ["flags", "set-percent", "google", "10", "--reason", "r", "--redis-url", server.urlString],
            environment: ["ROLLOUT_AUDIT_LOG": try makeTemporaryDirectory("hostile") + "/log.md"])
        #expect(result.status == 1)
        #expect(result.stderr.contains("announced a reply of 1073741824 bytes, more than the 67108864 this client accepts; is this really Redis?"))
        #expect(await server.waitForHangUp())
        #expect(server.bytesSent < 2 * 67_108_864)
    }
}
