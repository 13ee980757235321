import ArgumentParser
import Foundation
import RolloutAdmin
import RolloutAudit
import RolloutController
import RolloutGate
import RolloutServe
import RolloutRedis

/// The exit codes of `rollout`, decided in this file and nowhere else: the libraries say
/// what happened (an error, a hold reason), and the executable alone turns that into a number.
/// `--help` and the README list them; RolloutCLITests pin them.
enum RolloutExit: Int32, Sendable {
    /// Done: also `guard status` unlocked, a `watch` window that passed clean.
    case success = 0
    /// Redis, Prometheus or the audit log failed; also the negative answers: `guard status`
    /// locked, a `watch` that rolled back, a `budget` that could not evaluate every window.
    case failure = 1
    /// Usage or invalid input (an audit log that cannot be written included): nothing changed.
    case invalidInput = 2
    /// Corrupted state found in Redis.
    case corruptState = 3
    /// `watch` stopped by SIGINT or SIGTERM (128 + SIGINT, what a shell reports for Ctrl-C).
    case interrupted = 130

    /// Thrown by a command to end with this status (`throw RolloutExit.failure.exit`).
    var exit: ExitCode { ExitCode(rawValue) }

    /// The status of an error thrown out of a command; nil for one ArgumentParser maps itself
    /// (its usage errors, `--help`, `--version`, an `ExitCode`).
    init?(of error: any Error) {
        switch error {
        case is RedisError:
            self = .failure
        case let error as AuditLogError:
            self = error.code == .unwritable ? .invalidInput : .failure
        case let error as AdminError:
            switch error.cause {
            case .invalidInput: self = .invalidInput
            case .auditLog(let audit) where audit.code == .unwritable: self = .invalidInput
            case .corruptState: self = .corruptState
            case .redis, .auditLog, .unconfirmed, .recordedNotLogged, .notReplicated, .conflict: self = .failure
            }
        case is KeyspaceError, is PolicyError, is SnapshotError, is TokenFileError:
            self = .invalidInput
        case is CorruptStateFound:
            self = .corruptState
        default:
            return nil
        }
    }

    /// One controller run, from what it saw: corrupt state over an unreachable Prometheus or
    /// Redis (or an audit log not written after a change, or a change too few replicas
    /// acknowledged: either stands, recorded in Redis) over success. Holds for any other
    /// reason are the controller doing its job.
    init(holdReasons: [Verdict.HoldReason], auditLogWritten: Bool, replicated: Bool = true) {
        if holdReasons.contains(.corruptState) {
            self = .corruptState
        } else if holdReasons.contains(.invalidPolicy) {
            self = .invalidInput
        } else if holdReasons.contains(.promUnreachable) || holdReasons.contains(.redisError) || !auditLogWritten || !replicated {
            self = .failure
        } else {
            self = .success
        }
    }

    /// ``init(holdReasons:auditLogWritten:replicated:)`` for a run's report.
    init(of report: RunReport) {
        self.init(
            holdReasons: report.features.compactMap(\.holdReason), auditLogWritten: report.auditLogError == nil,
            replicated: report.features.allSatisfy { $0.notReplicated == nil })
    }

    /// A whole `watch`: stopped by a signal, else failure when it rolled back or a poll could
    /// not evaluate.
    init(watchRolledBack rolledBack: Bool, failedPolls: Int, interrupted: Bool) {
        if interrupted {
            self = .interrupted
        } else {
            self = rolledBack || failedPolls > 0 ? .failure : .success
        }
    }
}

extension Rollout {
    /// Prints `error` and exits with its status: ours for the errors ``RolloutExit`` knows,
    /// ArgumentParser's own for the rest (its usage errors are 2 here, with the usage text).
    static func fail(with error: any Error) -> Never {
        if let code = error as? ExitCode { Foundation.exit(code.rawValue) }
        if let status = RolloutExit(of: error) {
            FileHandle.standardError.write(Data("error: \(error)\n".utf8))
            Foundation.exit(status.rawValue)
        }
        let parserCode = exitCode(for: error)
        if parserCode == .success { exit(withError: error) }  // --help, --version
        // ArgumentParser's usage errors (EX_USAGE, 64) are exit 2 here, with the usage text.
        let isUsage = parserCode == .validationFailure
        FileHandle.standardError.write(Data(((isUsage ? "" : "error: ") + fullMessage(for: error) + "\n").utf8))
        Foundation.exit(isUsage ? RolloutExit.invalidInput.rawValue : RolloutExit.failure.rawValue)
    }
}
