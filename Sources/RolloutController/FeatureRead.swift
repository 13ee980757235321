import RolloutAdmin
package import RolloutGate
package import RolloutRedis

/// Why an evaluation stops short of its plan: the hold's reason and the sentence reported.
package struct Hold: Error {
    package var reason: Verdict.HoldReason
    package var explanation: String

    init(_ reason: Verdict.HoldReason, _ explanation: String) {
        self.reason = reason
        self.explanation = explanation
    }

    /// A script's refusal: too late (nothing written), or a key of the wrong type.
    init(_ refusal: ScriptRefusal) {
        switch refusal {
        case .tooLate: self.init(.redisError, "Redis: \(refusal.message)")
        case .wrongType: self.init(.corruptState, refusal.message)
        }
    }
}

/// The queries of a feature that failed, sorted.
struct QueryFailures: Error {
    var failures: [String]
}

/// One feature's read, decoded: what the decision sees, and what the compare-and-set expects.
/// The commands and the decoding of their replies are here only, in the same order.
package struct FeatureRead: Sendable {
    /// The feature's state and the controller's bookkeeping (no query answers yet).
    package var observation: Observation
    /// The raw values the writes expect to find still.
    package var preconditions: ChangeScript.Preconditions
    /// Redis's clock, read in the same round trip: every write's deadline is set by it.
    var serverTime: RedisServerTime
    /// `flags:<f>:notified`, as read.
    package var notifiedCondition: String?

    /// A read that cannot be decided on.
    package struct Failure: Error {
        package var hold: Hold
        /// The lock may be this run's: it is released.
        var mayHoldLock = true
        /// `flags:<f>:notified`, when it was read.
        package var notifiedCondition: String?

        init(_ hold: Hold, mayHoldLock: Bool = true, notifiedCondition: String? = nil) {
            self.hold = hold
            self.mayHoldLock = mayHoldLock
            self.notifiedCondition = notifiedCondition
        }
    }

    /// The gate's reads of the feature, then the controller's own keys, then Redis's clock.
    package static func commands(_ keys: FeatureKeys) -> [RedisCommand] {
        keys.readCommands + [
            RedisCommand("GET", keys.controllerPercent), RedisCommand("GET", keys.guardLock), RedisCommand("PTTL", keys.guardLock),
            RedisCommand("GET", keys.healthySince), RedisCommand("GET", keys.lastGood), RedisCommand("GET", keys.pausedReason),
            RedisCommand("HGETALL", keys.streaks), RedisCommand("GET", keys.notified),
            RedisCommand("ZRANGE", keys.rollbacks, "0", "-1", "WITHSCORES"), RedisServerTime.command,
        ]
    }

    /// The replies of ``commands(_:)``, `arrivedAt` when they came. A value that does not parse,
    /// or a key of the wrong type, is corrupt state (the hold names the key).
    package static func decode(_ replies: ArraySlice<RedisValue>, feature: FeatureName, arrivedAt: ContinuousClock.Instant) -> Result<FeatureRead, Failure> {
        let keys = FeatureKeys(feature)
        let gate = Array(replies.prefix(FeatureKeys.readCommandCount))
        var rest = replies.dropFirst(FeatureKeys.readCommandCount)
        func next() -> RedisValue { rest.popFirst() ?? .null }
        let controllerPercent = next(), guardValue = next(), guardTTL = next(), healthySince = next(), lastGood = next()
        let pausedReason = next(), streaks = next(), notified = next(), rollbacks = next()
        let serverTime: RedisServerTime
        do {
            serverTime = try RedisServerTime(reply: next(), readAt: arrivedAt)
        } catch {
            return .failure(Failure(Hold(.redisError, "Redis: \(error)")))
        }
        let notifiedCondition = notified.string
        func corrupt(_ message: String) -> Result<FeatureRead, Failure> {
            .failure(Failure(Hold(.corruptState, message), notifiedCondition: notifiedCondition))
        }
        let state: FeatureState
        switch FeatureState.read(feature, from: gate[...]) {
        case .success(let parsed): state = parsed
        case .failure(let invalid): return corrupt(invalid.problems.map(\.message).joined(separator: " "))
        }
        // The controller's own keys: one of another Redis type is corrupt, never absent. (A
        // `rollbacks` of another type is found by apply_change.lua, the only script that writes it.)
        let bookkeeping: [(String, RedisValue, KeyType)] = [
            (keys.controllerPercent, controllerPercent, .string), (keys.guardLock, guardValue, .string), (keys.healthySince, healthySince, .string),
            (keys.lastGood, lastGood, .string), (keys.pausedReason, pausedReason, .string), (keys.streaks, streaks, .hash), (keys.notified, notified, .string),
        ]
        for (key, reply, type) in bookkeeping {
            do throws(KeyspaceError) { _ = try KeyContent(reply, key: key, type: type) } catch {
                return corrupt(error.message)
            }
        }
        var percent: RolloutPercent?
        if let text = controllerPercent.string {
            guard let parsed = RolloutPercent(parsing: text) else {
                return corrupt("\(keys.controllerPercent) holds \"\(text)\", which is not a percent.")
            }
            percent = parsed
        }
        var observation = Observation(state: state, controllerPercent: percent, checkValues: [:])
        observation.guardLock = GuardLock.read(value: guardValue, pttl: guardTTL)
        // The controller's own bookkeeping: a value it cannot read is dropped, never acted on.
        observation.healthySince = healthySince.string.flatMap { Timestamp(parsing: $0) }
        observation.lastGood = lastGood.string.flatMap { RolloutPercent(parsing: $0) }
        observation.pausedReason = pausedReason.string
        observation.streaks = pairs(streaks).reduce(into: [:]) { streaks, pair in
            if let count = Int(pair.value), count > 0 { streaks[pair.key] = count }
        }
        // Scored by Unix ms; a score no rollback has (inf, written by hand) is dropped, never trapped on.
        observation.rollbacks = pairs(rollbacks).compactMap { pair in
            let limit = Int64.max / 1000
            guard let score = Double(pair.value), let milliseconds = Int64(exactly: score.rounded(.down)), (-limit...limit).contains(milliseconds) else {
                return nil
            }
            return Timestamp(microsecondsSinceEpoch: milliseconds * 1000)
        }
        func raw(_ key: String) -> String { keys.all.firstIndex(of: key).flatMap { gate[$0].string } ?? "" }
        let preconditions = ChangeScript.Preconditions(
            percent: raw(keys.rolloutPercent), paused: raw(keys.paused), enabled: raw(keys.enabled), guardValue: guardValue.string ?? "")
        return .success(FeatureRead(observation: observation, preconditions: preconditions, serverTime: serverTime, notifiedCondition: notifiedCondition))
    }

    /// A flat reply of pairs (HGETALL's fields and values, ZRANGE's members and scores).
    private static func pairs(_ reply: RedisValue) -> [(key: String, value: String)] {
        let items = reply.array?.compactMap(\.string) ?? []
        return stride(from: 0, to: items.count - 1, by: 2).map { (items[$0], items[$0 + 1]) }
    }
}
