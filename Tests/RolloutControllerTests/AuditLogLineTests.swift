import Foundation
import RolloutAudit
import RolloutGate
import Testing

@Suite("Audit log lines, ours and the original Python controller's")
struct AuditLogLineTests {
    @Test func ourLineReadsBack() throws {
        let line = "2025-10-08T15:00:00Z  google  0% -> 10%  reason=Initial canary  by=manual  id=1759935600000-0"
        let record = try #require(AuditRecord(logLine: line))
        #expect(record.feature == "google" && record.change == "0% -> 10%" && record.reason == "Initial canary")
        #expect(record.by == "manual" && record.id == "1759935600000-0")
        #expect(record.description == line)
    }

    @Test(arguments: [
        ("2025-10-08T16:00:00Z  google  10% -> 25%  reason=changed outside the controller  by=manual-detected  id=1-0", "manual-detected"),
        // What earlier versions wrote: still read, as one author.
        ("2025-10-08T16:00:00Z  google  10% -> 25%  reason=changed outside the controller  by=manual (detected)  id=1-0", "manual (detected)"),
        // The original controller's own line: no id, and maybe a time without a zone.
        ("2025-10-08T16:00:00  google  10% -> 25%  reason=auto-promote  by=controller", "controller"),
    ])
    func manualDetectedInBothSpellingsAndTheOriginalsLines(line: String, by: String) throws {
        let record = try #require(AuditRecord(logLine: line))
        #expect(record.by == by)
        #expect(record.isManualDetected == (by != "controller"))
        let change = try #require(record.percentChange)
        #expect(change.from.description == "10" && change.to.description == "25")
        #expect(record.time.secondsDescription == "2025-10-08T16:00:00Z")
    }

    @Test func theAuthorIsOneWord() {
        #expect(!AuditRecord.manualDetectedAuthor.contains(" "))
        #expect(AuditRecord.manualDetectedAuthor == "manual-detected")
    }

    @Test(arguments: ["", "# Rollout audit log", "```text", "2025-10-08T16:00:00Z  google  paused", "yesterday  google  0% -> 1%  by=x"])
    func aLineThatIsNoRecordIsSkipped(line: String) {
        #expect(AuditRecord(logLine: line) == nil)
    }

    @Test func aRecordMatchesOnlyItsOwnChangeWithinTheTolerance() throws {
        let record = try #require(AuditRecord(logLine: "2025-10-08T16:00:00Z  google  10.0% -> 25%  reason=x  by=controller"))
        let at = try #require(Timestamp(parsing: "2025-10-08T16:00:40Z"))
        let ten = try #require(RolloutPercent(parsing: "10"))
        let twentyFive = try #require(RolloutPercent(parsing: "25"))
        #expect(record.records("google", from: ten, to: twentyFive, near: at, within: .seconds(60)))
        #expect(!record.records("google", from: ten, to: twentyFive, near: at.advanced(by: .seconds(30)), within: .seconds(60)))
        #expect(!record.records("other", from: ten, to: twentyFive, near: at, within: .seconds(60)))
        #expect(!record.records("google", from: twentyFive, to: ten, near: at, within: .seconds(60)))
        let dryRun = try #require(AuditRecord(logLine: "2025-10-08T16:00:00Z  google  [dry-run] 10% -> 25%  reason=x  by=controller"))
        #expect(dryRun.percentChange == nil)
    }

    @Test func onlyTheNewestPercentChangeOfTheFeatureHoldsAChange() throws {
        let lines = [
            "2025-10-08T16:00:00Z  google  10% -> 25%  reason=by hand  by=manual",
            "2025-10-08T16:00:20Z  other  25% -> 10%  reason=x  by=manual",
            "2025-10-08T16:00:25Z  google  paused  reason=x  by=manual",
        ]
        var records = try lines.map { try #require(AuditRecord(logLine: $0)) }
        let at = try #require(Timestamp(parsing: "2025-10-08T16:00:40Z"))
        let ten = try #require(RolloutPercent(parsing: "10"))
        let twentyFive = try #require(RolloutPercent(parsing: "25"))
        // Other features' changes and records that are no percent change do not count.
        #expect(AuditRecord.holdChange(records, of: "google", from: ten, to: twentyFive, near: at, within: .seconds(60)))
        // Back to 10 and up to 25 again: the first 10 -> 25 is no longer the newest.
        records.insert(try #require(AuditRecord(logLine: "2025-10-08T16:00:30Z  google  25% -> 10%  reason=r  by=manual-detected")), at: 0)
        #expect(!AuditRecord.holdChange(records, of: "google", from: ten, to: twentyFive, near: at, within: .seconds(60)))
        #expect(!AuditRecord.holdChange([], of: "google", from: ten, to: twentyFive, near: at, within: .seconds(60)))
    }

    @Test func recentRecordsReadTheTailOfTheLog() async throws {
        let directory = NSTemporaryDirectory() + "audit-lines-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/rollout_log.md"
        let lines = (0..<2000).map { "2025-10-08T16:00:00Z  f\($0 % 3)  \($0 % 100)% -> \($0 % 100 + 1)%  reason=r  by=controller\n" }
        try (AuditLog.header + lines.joined()).write(toFile: path, atomically: true, encoding: .utf8)
        let all = await AuditLog(path: path).recentRecords()
        #expect(all.count == 2000)
        let tail = await AuditLog(path: path).recentRecords(maxBytes: 1000)
        #expect(!tail.isEmpty && tail.count < 30)
        #expect(tail.last?.change == "99% -> 100%")
        #expect(await AuditLog(path: directory + "/missing.md").recentRecords().isEmpty)
    }
}
