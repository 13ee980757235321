import CRolloutCrypto
import Foundation
import RolloutGate
import Synchronization

/// OFREP's change events (ADR-0008) for `rollout serve`: a server-sent event stream that says
/// `{"type":"refetchEvaluation"}` after each change of the snapshot, bursts coalesced, and the
/// short-lived credential its advertised URL carries (a browser's EventSource cannot send
/// headers; the URL is a secret, never logged).
public final class ChangeEvents: Sendable {
    /// The most streams open at once; more are 503.
    public let maximumSubscribers: Int
    /// How often a comment keeps an idle stream (and the proxies on its way) open.
    public let keepAliveInterval: Duration
    /// How long a URL's credential is good for: until the end of the hour after the one it
    /// was made in, so the bulk answer (and its ETag) changes with it at most once an hour.
    static let credentialHour: Int64 = 3600

    private let key = SigningKey()
    private let subscribers = Atomic<Int>(0)

    /// Events signed with a random key of this process (a restart invalidates its URLs; a
    /// client fetches the bulk answer again and gets the new one).
    public init(maximumSubscribers: Int = 1_000, keepAliveInterval: Duration = .seconds(15)) {
        self.maximumSubscribers = maximumSubscribers
        self.keepAliveInterval = keepAliveInterval
    }

    /// A subscriber slot, or nil when ``maximumSubscribers`` are open.
    fileprivate func subscribe() -> Bool {
        if subscribers.wrappingAdd(1, ordering: .relaxed).newValue > maximumSubscribers {
            subscribers.wrappingSubtract(1, ordering: .relaxed)
            return false
        }
        return true
    }

    fileprivate func unsubscribe() { subscribers.wrappingSubtract(1, ordering: .relaxed) }

    /// A subscriber slot that gives itself back (``EventSlot``), or nil when
    /// ``maximumSubscribers`` are open.
    func slot() -> EventSlot? { subscribe() ? EventSlot(self) : nil }

    /// A credential for the token named `name`, good until the end of the next whole hour
    /// after `now` (seconds since the epoch): `<expiry>.<name>.<HMAC-SHA256 hex>`.
    func credential(for name: String, now: Int64) -> String? {
        let expiry = (now / Self.credentialHour + 2) * Self.credentialHour
        return key.sign("\(expiry).\(name)").map { "\(expiry).\(name).\($0)" }
    }

    /// The token name a credential was made for, if it is genuine and not expired at `now`.
    func verify(_ credential: String, now: Int64) -> String? {
        let parts = credential.split(separator: ".", maxSplits: 1)
        guard parts.count == 2, let expiry = Int64(parts[0]), expiry >= now,
            let lastDot = parts[1].lastIndex(of: ".")
        else { return nil }
        let name = String(parts[1][..<lastDot])
        let given = String(parts[1][parts[1].index(after: lastDot)...])
        return key.verify(given, of: "\(expiry).\(name)") ? name : nil
    }
}

/// A random key of this process signing short messages (HMAC-SHA256, hex): the event streams'
/// URL credentials and the dashboard's CSRF tokens. A restart makes a new key, so what the old
/// one signed is no longer genuine.
final class SigningKey: Sendable {
    private let key: [UInt8]

    init() {
        var generator = SystemRandomNumberGenerator()
        key = (0..<32).map { _ in generator.next() }
    }

    /// The signature of `message` (64 hex digits); nil if OpenSSL failed.
    func sign(_ message: String) -> String? {
        var digest = [UInt8](repeating: 0, count: 32)
        let message = Array(message.utf8)
        let ok = key.withUnsafeBytes { key in
            message.withUnsafeBytes { CRolloutCrypto_hmac_sha256(key.baseAddress, key.count, $0.baseAddress, $0.count, &digest) }
        }
        guard ok == 1 else { return nil }
        return hexDigits(digest)
    }

    /// Whether `signature` is this key's signature of `message`, compared in constant time.
    func verify(_ signature: String, of message: String) -> Bool {
        guard let expected = sign(message) else { return false }
        return constantTimeEqual(Array(expected.utf8), Array(signature.utf8))
    }
}

/// One open slot of ``ChangeEvents``, given back once: by its stream when it ends, or when the
/// response holding it is dropped with its body never run (Hummingbird runs a streamed body
/// only after writing the head, so a client gone before that never starts it).
final class EventSlot: Sendable {
    private let events: ChangeEvents
    private let released = Atomic<Bool>(false)

    init(_ events: ChangeEvents) { self.events = events }

    func release() {
        if !released.exchange(true, ordering: .relaxed) { events.unsubscribe() }
    }

    deinit { release() }
}
