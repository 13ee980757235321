import RolloutRedis
import RolloutTestSupport
import Testing

@Suite("rollout CLI through a sentinel URL", .tags(.cli, .redis), .requiresRedis)
struct SentinelCLITests {
    /// A write through a sentinel URL (with readFrom=replica, which only the gate's reads
    /// follow) lands on the primary; a check reads it back through the sentinels.
    @Test func writeThroughASentinelURLLandsOnThePrimary() async throws {
        let cli = try await CLI()
        let topology = try await SentinelTopology.start(password: "data-secret", sentinelPassword: "sentinel-secret")
        let environment = ["REDIS_URL": topology.urlString(readFrom: "replica")]
        let set = try await rollOutGoogleToHalf(cli, environment: environment)
        #expect(try await topology.query(topology.nodes[0], "GET", "flags:google:rollout_percent").string == "50")
        let check = try await cli.run("check", "google", "--actor", "user_123", environment: ["REDIS_URL": topology.urlString()])
        #expect(check.status == 0)
        #expect(check.stdout == "google for user_123: on: bucket 30079 < threshold 50000 (v2, rollout percent 50%)\n")
        #expect(!(set.stdout + set.stderr + check.stdout + check.stderr).contains("secret"))
        await topology.stopOffPool()
    }

    /// Every sentinel unreachable: exit 1, the message names each address tried, no password.
    @Test func unreachableSentinelsExitOneNamingEachAddress() async throws {
        let cli = try await CLI()
        let ports = [try freeLoopbackPort(), try freeLoopbackPort()]
        let url = "redis-sentinel://ops:hunter2@" + ports.map { "127.0.0.1:\($0)" }.joined(separator: ",") + "?sentinelPassword=hunter3#mymaster"
        for arguments in [["check", "google", "--actor", "a"], ["flags", "set-percent", "google", "10", "--reason", "r"]] {
            let result = try await cli.run(arguments, environment: ["REDIS_URL": url])
            #expect(result.status == 1)
            for port in ports { #expect(result.stderr.contains("127.0.0.1:\(port) (connection refused)")) }
            #expect(!(result.stdout + result.stderr).contains("hunter"))
            print("rollout \(arguments[0]) with every sentinel down: \(result.stderr)")
        }
    }
}

/// `flags init google`, open it (internal-only false), `set-percent google 50`: the result of the last.
func rollOutGoogleToHalf(_ cli: CLI, environment: [String: String]) async throws -> CommandResult {
    #expect(try await cli.run("flags", "init", "google", environment: environment).status == 0)
    #expect(try await cli.run("flags", "internal-only", "google", "false", "--reason", "open", environment: environment).status == 0)
    let set = try await cli.run("flags", "set-percent", "google", "50", "--reason", "Half", environment: environment)
    #expect(set.status == 0)
    #expect(set.stdout == "google: 0% -> 50%\n")
    return set
}
