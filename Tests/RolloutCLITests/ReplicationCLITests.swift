import Foundation
import RolloutRedis
import RolloutTestSupport
import Testing

/// A change and its replicas: `WAIT` after every write of the CLI, against a primary with two
/// real replicas (and the sentinels that watch them).
@Suite("rollout CLI: a change waits for its replicas", .tags(.cli, .redis), .requiresRedis)
struct ReplicationCLITests {
    /// With both replicas running a change is replicated (exit 0); with both paused (SIGSTOP)
    /// it stands on the primary, the command says so (`replicated: false`, a warning), its
    /// audit record is followed by a `not replicated` note, and it exits 1; once they run
    /// again, a change that asks for both is replicated.
    @Test func aChangeTooFewReplicasAcknowledgedStandsSaysSoAndExitsOne() async throws {
        let cli = try await CLI()
        let topology = try await SentinelTopology.start(password: "data-secret")
        let replicas = Array(topology.nodes.dropFirst())
        let environment = ["REDIS_URL": topology.urlString()]
        #expect(try await cli.run("flags", "init", "google", environment: environment).status == 0)
        let replicated = try await cli.run("flags", "set-percent", "google", "10", "--reason", "canary", "--min-replicas", "2", environment: environment)
        #expect(replicated.status == 0, "\(replicated.stderr)")
        #expect(replicated.stdout == "google: 0% -> 10%\n")

        for replica in replicas { replica.freeze() }
        let json = try await cli.run(
            "flags", "set-percent", "google", "50", "--reason", "half", "--json", "--replica-timeout", "200ms", environment: environment)
        let unfrozen = try await cli.run("flags", "pause", "google", "--reason", "look", "--min-replicas", "2", "--replica-timeout", "200ms", environment: environment)
        for replica in replicas { replica.thaw() }

        #expect(json.status == 1)
        let document = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any], "\(json.stdout)")
        #expect(document["replicated"] as? Bool == false)
        #expect(document["replicas_required"] as? Int == 1)  // automatic: the primary has replicas
        #expect(document["replicas_acknowledged"] as? Int == 0)
        let changes = document["changes"] as? [[String: String]]
        #expect(changes == [["feature": "google", "change": "10% -> 50%"]])
        #expect((document["warning"] as? String)?.contains("0 of 1 replica acknowledged the write within 200 ms") == true)
        #expect(unfrozen.status == 1)
        #expect(unfrozen.stdout == "google: paused\n")
        #expect(unfrozen.stderr.contains("warning: The change was made on the primary and recorded (google paused), but 0 of 2 replicas acknowledged"))
        // The change stands on the primary.
        #expect(try await topology.query(topology.nodes[0], "GET", "flags:google:rollout_percent").string == "50")
        #expect(try await topology.query(topology.nodes[0], "GET", "flags:google:paused").string == "true")
        let lines = cli.auditLines()
        let note = try #require(lines.firstIndex { $0.contains("  google  not replicated  reason=0 of 1 replica acknowledged the write within 200 ms (10% -> 50%)") })
        #expect(note > 0 && lines[note - 1].contains("  google  10% -> 50%  reason=half"), "\(lines)")
        #expect(lines.last?.contains("  google  not replicated  reason=0 of 2 replicas acknowledged the write within 200 ms (paused)") == true, "\(lines)")

        // Running again, the replicas catch up; a change that asks for both of them gets both.
        let resumed = try await cli.run("flags", "resume", "google", "--reason", "fine", "--min-replicas", "2", "--replica-timeout", "30s", environment: environment)
        #expect(resumed.status == 0, "\(resumed.stderr)")
        #expect(cli.auditLines().last?.contains("not replicated") == false)
        for result in [replicated, json, unfrozen, resumed] { #expect(!(result.stdout + result.stderr).contains("secret")) }
        await topology.stopOffPool()
    }

    /// A standalone Redis has no replica: automatic asks for none and never waits.
    @Test func aPrimaryWithoutReplicasIsNotWaitedFor() async throws {
        let cli = try await CLI()
        #expect(try await cli.run("flags", "init", "google").status == 0)
        let set = try await cli.run("flags", "set-percent", "google", "10", "--reason", "canary")
        #expect(set.status == 0, "\(set.stderr)")
        #expect(set.stderr.isEmpty)
        // Asked for one anyway, none can answer: the change stands and the command exits 1.
        let asked = try await cli.run("flags", "set-percent", "google", "20", "--reason", "more", "--min-replicas", "1", "--replica-timeout", "50ms")
        #expect(asked.status == 1)
        #expect(asked.stdout == "google: 10% -> 20%\n")
        #expect(asked.stderr.contains("0 of 1 replica acknowledged the write within 50 ms"))
        #expect(try await cli.redis().send("GET", "flags:google:rollout_percent").string == "20")
        let invalid = try await cli.run("flags", "set-percent", "google", "30", "--reason", "r", "--min-replicas", "-1")
        #expect(invalid.status == 2)
    }
}
