import Foundation
package import RolloutGate
public import RolloutRedis

/// The audit trail's source of truth: the Redis stream `rollout:audit`, to which every script
/// that changes a feature appends its record (`XADD ... MAXLEN ~ 100000`) in the same atomic
/// step, so no change can exist without its record. ``project(into:)`` writes the records the
/// Markdown log does not have yet, in stream order, idempotently by record id.
public struct AuditTrail: Sendable {
    /// The stream's key. Outside `flags:` on purpose: gates track `flags:` for invalidations,
    /// and an audit record is not a flag.
    public static let streamKey = "rollout:audit"
    /// The stream is trimmed to about this many records (`MAXLEN ~`): months of changes.
    public static let maxLength = 100_000

    /// The client that reads the stream.
    public let redis: RedisClient

    /// A trail read through `redis`.
    public init(redis: RedisClient) {
        self.redis = redis
    }

    /// Writes to `log` every record of the stream that comes after the last one it holds (the
    /// `id=` of its last such line), under the log's lock, and returns them. A run calls it
    /// after its changes and any later call catches up what an earlier one could not write (a
    /// killed process, a full disk): the log always ends with every record up to its last id.
    @discardableResult
    public func project(into log: AuditLog) async throws(AuditLogError) -> [AuditRecord] {
        let path = log.path
        let opened = await onFileQueue { () -> Result<(LockedFile, StreamID?), AppendFailure> in
            do throws(AppendFailure) {
                let file = try LockedFile(path: path)
                do throws(AppendFailure) {
                    return .success((file, try lastRecordID(in: file)))
                } catch {
                    file.close()
                    throw error
                }
            } catch {
                return .failure(error)
            }
        }
        let (file, last): (LockedFile, StreamID?)
        switch opened {
        case .success(let value): (file, last) = value
        case .failure(let failure): throw AuditLogError(writing: path, failure)
        }
        var written: [AuditRecord] = []
        var start = last.map { "(" + $0.description } ?? "-"
        do {
            while true {
                let batch = try await redis.send(RedisCommand("XRANGE", Self.streamKey, start, "+", "COUNT", "500"))
                guard let entries = batch.array else {
                    throw AuditLogError(.stream, "Redis answered XRANGE \(Self.streamKey) with \(batch), not a list of records.")
                }
                let records = entries.compactMap(AuditRecord.init(streamEntry:))
                if !records.isEmpty {
                    let text = records.map { $0.description + "\n" }.joined()
                    let failure = await onFileQueue { () -> AppendFailure? in
                        do throws(AppendFailure) {
                            try file.append(text, prefixWhenEmpty: AuditLog.header)
                            return nil
                        } catch {
                            return error
                        }
                    }
                    if let failure { throw AuditLogError(writing: path, failure) }
                    written += records
                }
                guard entries.count == 500, let lastID = entries.last?.array?.first?.string else { break }
                start = "(" + lastID
            }
        } catch let error as AuditLogError {
            await onFileQueue { file.close() }
            throw error
        } catch {
            await onFileQueue { file.close() }
            // Every change is recorded in the stream in the same script as the change, so what
            // is missing from the file is in Redis, and the next run that reaches it writes it.
            var cause = "\(error)"
            while cause.hasSuffix(".") { cause.removeLast() }
            throw AuditLogError(
                .stream,
                "Cannot read the audit stream \(Self.streamKey) to bring \(path) up to date: \(cause). Every change is recorded in the stream with it; the next run that reaches Redis writes the records to the file.")
        }
        await onFileQueue { file.close() }
        return written
    }
}

/// The id of the last line of `file` that carries one (`  id=<ms>-<seq>`), reading backwards
/// from the end in growing chunks (a log older than the trail has lines without ids).
private func lastRecordID(in file: LockedFile) throws(AppendFailure) -> StreamID? {
    let size = try file.size()
    var chunk = 64 * 1024
    while true {
        let start = max(0, size - chunk)
        let bytes = try file.read(start..<size)
        var lines = bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: true)
        if start > 0, !lines.isEmpty { lines.removeFirst() }  // may be cut
        for line in lines.reversed() {
            if let id = recordID(inLine: String(decoding: line, as: UTF8.self)) { return id }
        }
        if start == 0 { return nil }
        chunk *= 4
    }
}

/// The `id=` field of one log line.
func recordID(inLine line: String) -> StreamID? {
    guard let marker = line.range(of: "  id=", options: .backwards) else { return nil }
    let token = line[marker.upperBound...].prefix { $0 != " " }
    return StreamID(token)
}

extension AuditTrail {
    /// The newest records first (XREVRANGE in pages of 500), those of `feature` only when given,
    /// at most `limit`, reading at most `scanning` stream entries (the whole stream is trimmed
    /// to about ``maxLength``).
    package func newest(of feature: FeatureName?, limit: Int, scanning: Int = maxLength + 1_000) async throws(RedisError) -> [AuditRecord] {
        var found: [AuditRecord] = []
        try await scanBackwards(scanning: scanning, wanting: { feature == nil || $0 == feature?.rawValue }) { record in
            if feature == nil || record.feature == feature { found.append(record) }
            return found.count < limit
        }
        return found
    }

    /// The newest record of each of `features` found among the newest `scanning` stream entries.
    package func newestOfEach(_ features: Set<FeatureName>, scanning: Int = maxLength + 1_000) async throws(RedisError) -> [FeatureName: AuditRecord] {
        var found: [FeatureName: AuditRecord] = [:]
        guard !features.isEmpty else { return found }
        let names = Set(features.map(\.rawValue))
        try await scanBackwards(scanning: scanning, wanting: { names.contains($0) }) { record in
            if features.contains(record.feature), found[record.feature] == nil { found[record.feature] = record }
            return found.count < features.count
        }
        return found
    }

    /// The records of `feature` made at or after `since`, newest first, at most `limit`. Only the
    /// stream entries Redis added from `since` less `margin` on are read (an entry's id is Redis's
    /// clock when it was added, the record's time the writer's: the margin covers clocks apart),
    /// so the work is bounded by the window, not by the stream.
    package func records(of feature: FeatureName, since: Timestamp, limit: Int, margin: Duration = .seconds(3600)) async throws(RedisError) -> [AuditRecord] {
        let earliest = max(0, since.microsecondsSinceEpoch / 1000 - margin.wholeMilliseconds)
        var found: [AuditRecord] = []
        try await scanBackwards(scanning: Self.maxLength + 1_000, from: String(earliest), wanting: { $0 == feature.rawValue }) { record in
            if record.feature == feature, record.time >= since { found.append(record) }
            return found.count < limit
        }
        return found
    }

    /// Hands the stream's records to `visit`, newest first, until it answers false, the stream
    /// ends (or reaches the id `start`) or `scanning` entries were read. Only entries whose
    /// `feature` field `wanting` accepts are parsed (a scan of the whole stream for one feature
    /// parses only its records).
    private func scanBackwards(
        scanning: Int, from start: String = "-", wanting: (String) -> Bool, _ visit: (AuditRecord) -> Bool
    ) async throws(RedisError) {
        var end = "+"
        var read = 0
        while read < scanning {
            // Pages of 2,000: a whole stream (about 100,000 records) in about 50 round trips.
            let count = min(2_000, scanning - read)
            let batch = try await redis.send(RedisCommand("XREVRANGE", Self.streamKey, end, start, "COUNT", String(count)))
            guard let entries = batch.array else {
                throw RedisError(.protocolError, "Redis answered XREVRANGE \(Self.streamKey) with \(batch), not a list of records.")
            }
            read += entries.count
            for entry in entries where AuditRecord.feature(ofStreamEntry: entry).map(wanting) ?? false {
                if let record = AuditRecord(streamEntry: entry), !visit(record) { return }
            }
            guard entries.count == count, let lastID = entries.last?.array?.first?.string else { return }
            end = "(" + lastID
        }
    }
}

extension AuditTrail {
    /// Records a `not replicated` note after each of `records`, the records of one change that
    /// fewer replicas acknowledged than asked (`WAIT`): the change stands on the primary, and a
    /// failover before the replicas catch up may lose it. Each note is its own `XADD`, since this
    /// is learnt only after the change's script recorded the change; the Markdown log gets them
    /// at the next ``project(into:)``. Returns the first error, nil when every note was recorded.
    package func noteNotReplicated(_ records: [AuditRecord], _ replication: Replication) async -> RedisError? {
        var failure: RedisError?
        for record in records {
            let note = AuditRecord(
                time: record.time, feature: record.feature, change: "not replicated",
                reason: "\(replication) (\(record.change)): the change stands on the primary; a failover before the replicas catch up may lose it",
                by: record.by, run: record.run)
            let fields = zip(["time", "feature", "change", "reason", "by", "run"], note.scriptArguments).flatMap { [$0, $1] }
            do {
                _ = try await redis.send(RedisCommand("XADD", [Self.streamKey, "MAXLEN", "~", String(Self.maxLength), "*"] + fields))
            } catch {
                failure = failure ?? error
            }
        }
        return failure
    }
}
