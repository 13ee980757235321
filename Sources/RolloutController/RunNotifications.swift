import Foundation
import RolloutAudit
public import RolloutGate

/// What a run tells people: the changes it made (rollback, promotion to 100%, flap pause, guard
/// lock and release, a manual change found) as they happen, and the conditions that started or
/// ended (a hold worth a message, Prometheus or Redis unreachable), once each.
public struct RunNotifications: Sendable {
    /// The events to send, features in policy order, then the servers.
    public var events: [NotificationEvent] = []
    /// Each feature's condition to store in `flags:<f>:notified`, where it changed.
    public var featureConditions: [FeatureName: String] = [:]
    /// The servers' conditions to store in the state file (`prometheus`, `redis`).
    public var serverConditions: [String: String] = [:]

    /// The events of `report`, given the servers' conditions as last stored. Pure: no I/O.
    public init(report: RunReport, servers previous: [String: String], time: Timestamp) {
        guard !report.dryRun else { return }
        for feature in report.features {
            let name = feature.feature.rawValue
            let change = "\(feature.state?.rolloutPercent.description ?? "?")% -> \(feature.targetPercent?.description ?? "?")%"
            let details = ["from": feature.state?.rolloutPercent.description ?? "", "to": feature.targetPercent?.description ?? ""]
            func add(_ kind: NotificationEvent.Kind, _ summary: String, _ extra: [String: String] = details) {
                events.append(NotificationEvent(kind: kind, feature: name, summary: summary, details: extra, time: time))
            }
            if let manual = feature.manualChange {
                add(.manualChange, "\(name) was changed outside the controller: \(manual).", ["change": manual])
            }
            if feature.applied, let verdict = feature.verdict {
                switch verdict.action {
                case .rollback:
                    add(.rollback, "\(name) rolled back \(change): \(verdict.explanation).")
                case .promote(let to) where to == .full:
                    add(.promotedToFull, "\(name) is at 100%: \(verdict.explanation).")
                default: break
                }
            }
            switch feature.guardEvent {
            case .locked?: add(.guardLocked, "\(name) is locked against promotion after the rollback \(change).")
            case .released?: add(.guardReleased, "\(name)'s guard is released: every check was healthy for the stability window.")
            case nil: break
            }
            if feature.pausedByFlapProtection {
                add(.flapPause, "\(name) is paused by flap protection: it rolled back too often within an hour. Look, then `rollout flags resume \(name)`.")
            }
            // Conditions: only where this run could read the feature (its last condition is
            // in Redis) and judge it; the servers' own conditions are followed below.
            guard feature.state != nil || feature.holdReason == .corruptState,
                feature.holdReason != .promUnreachable, feature.holdReason != .redisError
            else { continue }
            let condition = NotificationCondition(holdReason: feature.holdReason)
            let previous = feature.notifiedCondition ?? NotificationCondition.ok.description
            events += condition.events(since: previous, feature: name, explanation: feature.explanation, time: time)
            if condition.description != previous { featureConditions[feature.feature] = condition.description }
        }
        // The servers: a condition is known only when some feature got far enough to tell.
        let reasons = report.features.map(\.holdReason)
        let redis: NotificationCondition? =
            reasons.contains(.redisError) ? .redisUnreachable : (report.features.contains { $0.state != nil } ? .ok : nil)
        let prometheus: NotificationCondition? =
            reasons.contains(.promUnreachable)
            ? .prometheusUnreachable : (report.features.contains(where: \.prometheusAnswered) ? .ok : nil)
        let servers: [(String, NotificationCondition?, Verdict.HoldReason)] = [
            ("redis", redis, .redisError), ("prometheus", prometheus, .promUnreachable),
        ]
        for (subject, condition, failing) in servers {
            guard let condition else { continue }
            let explanation = report.features.first { $0.holdReason == failing }?.explanation
            events += condition.events(since: previous[subject], feature: nil, explanation: explanation, time: time)
            serverConditions[subject] = condition.description
        }
    }

}

extension NotificationPolicy {
    /// The servers' conditions as last stored; empty when the file is missing or unreadable.
    /// The read runs on the file queue, never on Swift's cooperative pool.
    func readServerConditions() async -> [String: String] {
        let stateFile = stateFile
        return await onFileQueue { () -> [String: String] in
            guard let data = FileManager.default.contents(atPath: stateFile),
                let object = try? JSONSerialization.jsonObject(with: data) as? [String: String]
            else { return [:] }
            return object
        }
    }

    /// Stores the servers' conditions: a whole new file renamed into place, on the audit file
    /// queue (the write and its rename block).
    func writeServerConditions(_ conditions: [String: String]) async throws {
        let data = try JSONSerialization.data(withJSONObject: conditions, options: [.sortedKeys])
        let url = URL(fileURLWithPath: stateFile)
        let failure = await onFileQueue { () -> (any Error)? in
            do {
                try data.write(to: url, options: .atomic)
                return nil
            } catch {
                return error
            }
        }
        if let failure { throw failure }
    }
}
