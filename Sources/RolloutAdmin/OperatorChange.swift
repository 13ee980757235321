#if canImport(Glibc)
import Glibc
#endif
import RolloutAudit
import RolloutGate
package import RolloutRedis

/// One operator change as redis/operator_change.lua applies it: what must still hold, the
/// writes, and their audit records, built here in one place and sent as one atomic script.
struct OperatorChange {
    private(set) var keys: [String] = []
    private var expectations: [String] = []
    private var expectationCount = 0
    private var steps: [String] = []
    /// The records the script appends to the audit stream with the writes.
    var records: [AuditRecord] = []

    /// The index of `key` in the script's KEYS (the audit stream is 1).
    private mutating func index(of key: String) -> String {
        if let existing = keys.firstIndex(of: key) { return String(existing + 2) }
        keys.append(key)
        return String(keys.count + 1)
    }

    /// The change applies only if `key` (a string key) still holds `value`; nil: it is absent.
    mutating func expect(_ key: String, equals value: String?) {
        let position = index(of: key)
        expectations += [position, value == nil ? "absent" : "equals", value ?? ""]
        expectationCount += 1
    }

    /// A write: `SET`, `DEL`, `SADD`, `SREM`, `HSET`, `HDEL`, `ZADD` or `PEXPIRE` of `key`.
    mutating func step(_ command: String, _ key: String, _ arguments: [String] = []) {
        let position = index(of: key)
        steps += [position, command, String(arguments.count)] + arguments
    }

    /// The script's arguments, with the deadline by the server's clock.
    func arguments(deadline: Int64) -> [String] {
        [String(deadline), String(AuditTrail.maxLength), String(records.count)] + records.flatMap(\.scriptArguments)
            + [String(expectationCount)] + expectations + steps
    }
}

/// What identifies this process in the records it writes: `rollout@host:pid`.
let processRunName: String = {
    var hostname = [CChar](repeating: 0, count: 256)
    gethostname(&hostname, hostname.count)
    let host = String(decoding: hostname.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    return "rollout@\(host):\(getpid())"
}()

/// The outcome of a script that checks its deadline and its keys' types, as every writing
/// script answers: -2 past the deadline, `{-3, key, type}` for a key of the wrong type.
package enum ScriptRefusal: Sendable, Hashable {
    /// The server ran the script after the client's deadline: nothing was written.
    case tooLate
    /// A key has a type the keyspace does not allow there: nothing was written.
    case wrongType(key: String, found: String)

    /// The refusal `reply` carries, if it is one.
    package init?(_ reply: RedisValue) {
        if reply == .integer(-2) || reply == .array([.integer(-2)]) {
            self = .tooLate
            return
        }
        guard let parts = reply.array, parts.count == 3, parts[0] == .integer(-3), let key = parts[1].string, let found = parts[2].string else {
            return nil
        }
        self = .wrongType(key: key, found: found)
    }

    /// What happened, for people.
    package var message: String {
        switch self {
        case .tooLate:
            return "Redis ran the change after this client had stopped waiting for it, so the change refused itself: nothing was written."
        case .wrongType(let key, let found):
            return "\(key) is a Redis \(found), which the keyspace does not allow there: nothing was written. Look with `rollout flags get`, then fix or delete the key."
        }
    }
}
