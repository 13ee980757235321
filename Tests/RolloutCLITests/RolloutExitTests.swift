@testable import RolloutAdmin
@testable import RolloutAudit
@testable import RolloutController
import RolloutGate
import RolloutRedis
import Testing
@testable import rollout

/// The one mapping from what happened to the number `rollout` exits with; the other CLI
/// tests pin the same numbers through the binary.
@Suite("Exit codes")
struct RolloutExitTests {
    @Test func theDocumentedNumbersStand() {
        #expect([RolloutExit.success, .failure, .invalidInput, .corruptState, .interrupted].map(\.rawValue) == [0, 1, 2, 3, 130])
    }

    @Test(arguments: [
        ([], true, RolloutExit.success),
        ([.dwell, .paused, .checkViolated, .guardLocked, .frozen, .adopted, .concurrentChange], true, .success),
        ([.promUnreachable], true, .failure),
        ([.dwell, .redisError], true, .failure),
        ([], false, .failure),
        ([.corruptState, .promUnreachable], true, .corruptState),
        ([.corruptState], false, .corruptState),
    ] as [([Verdict.HoldReason], Bool, RolloutExit)])
    func aRunExitsWithItsWorstOutcome(holdReasons: [Verdict.HoldReason], auditLogWritten: Bool, expected: RolloutExit) {
        #expect(RolloutExit(holdReasons: holdReasons, auditLogWritten: auditLogWritten) == expected)
    }

    @Test(arguments: [
        (false, 0, false, RolloutExit.success),
        (true, 0, false, .failure),
        (false, 2, false, .failure),
        (true, 1, true, .interrupted),
        (false, 0, true, .interrupted),
    ])
    func aWatchExitsWithWhatItSaw(rolledBack: Bool, failedPolls: Int, interrupted: Bool, expected: RolloutExit) {
        #expect(RolloutExit(watchRolledBack: rolledBack, failedPolls: failedPolls, interrupted: interrupted) == expected)
    }

    @Test func errorsMapToTheirStatus() {
        let redis = RedisError(.connectionRefused, "refused")
        let unwritable = AuditLogError(.unwritable, "read-only")
        let cases: [(any Error, RolloutExit)] = [
            (redis, .failure),
            (unwritable, .invalidInput),
            (AuditLogError(.writeFailed, "disk full"), .failure),
            (AdminError(.redis(redis)), .failure),
            (AdminError(.auditLog(unwritable)), .invalidInput),
            (AdminError(.auditLog(AuditLogError(.stream, "stream"))), .failure),
            (AdminError(.unconfirmed(redis)), .failure),
            (AdminError(.recordedNotLogged(AuditLogError(.writeFailed, "disk full"))), .failure),
            (AdminError(.conflict("moved")), .failure),
            (AdminError(.invalidInput("no ids")), .invalidInput),
            (AdminError(.corruptState("WRONGTYPE")), .corruptState),
            (KeyspaceError("bad name"), .invalidInput),
            (PolicyError("rollout.yaml", ["features: lists no feature"]), .invalidInput),
            (SnapshotError("altered"), .invalidInput),
            (CorruptStateFound(description: "bad percent"), .corruptState),
        ]
        for (error, expected) in cases {
            #expect(RolloutExit(of: error) == expected, "\(error)")
        }
    }

    @Test func errorsOfArgumentParserAreLeftToIt() {
        struct Unknown: Error {}
        #expect(RolloutExit(of: Unknown()) == nil)
    }
}
