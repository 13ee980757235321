import CRolloutScripts
public import RolloutRedis

/// The Lua scripts this package runs: the files in redis/ (operators read them there), compiled
/// into the binary by CRolloutScripts, so there is one copy and nothing to find at run time.
public enum Scripts {
    /// An operator's change and its audit records, all or nothing: refused past its deadline (by Redis's
    /// clock), when an expected value moved, or when a key has the wrong type.
    public static let operatorChange = RedisScript(source(CRolloutScripts_operatorChange()))

    /// The controller's compare-and-set: applies a promotion or rollback the controller planned
    /// only if rollout_percent, paused, enabled and the guard lock still hold what the controller
    /// read, so a person's change made during the run wins and nothing is half-written. It writes
    /// what the plan says (for a rollback: the guard, its entry in the last hour's rollbacks, the
    /// lowered last_good and, at the flap limit, the pause) and decides nothing; every change is
    /// recorded in the audit stream; all in the same atomic step, refused past its deadline.
    public static let applyChange = RedisScript(source(CRolloutScripts_applyChange()))

    /// Takes note of a percent the controller did not write (a person's change, or a feature seen
    /// for the first time): the dwell restarts now and controller_percent catches up, so the
    /// change is reported once, with its audit record.
    public static let acknowledgePercent = RedisScript(source(CRolloutScripts_acknowledgePercent()))

    /// What a run that changes nothing records, only while it still holds the feature's lock
    /// and rollout_percent is as it read it: each check's streak, since when the feature is
    /// healthy, and a new last known good percent.
    public static let recordEvaluation = RedisScript(source(CRolloutScripts_recordEvaluation()))

    /// Releases the controller's own guard lock (compare-and-delete) with its audit record.
    public static let releaseGuard = RedisScript(source(CRolloutScripts_releaseGuard()))

    /// Releases a lock only for its owner. Returns 1 if released.
    public static let releaseLock = RedisScript(source(CRolloutScripts_releaseLock()))

    /// Every script with the file name it has in redis/.
    public static let all: [(file: String, source: String)] = [
        ("operator_change.lua", operatorChange.source), ("apply_change.lua", applyChange.source),
        ("acknowledge_percent.lua", acknowledgePercent.source), ("record_evaluation.lua", recordEvaluation.source),
        ("release_guard.lua", releaseGuard.source), ("release_lock.lua", releaseLock.source),
    ]

    private static func source(_ script: CRolloutScripts_Script) -> String {
        String(decoding: UnsafeBufferPointer(start: script.bytes, count: script.count), as: UTF8.self)
    }
}
