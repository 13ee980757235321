import RolloutGate

/// How to space retries: one policy type for every network call and for `rollout retry`.
public struct RetryPolicy: Sendable, Hashable, CustomStringConvertible {
    /// How the delay grows from one retry to the next.
    public enum Backoff: String, Sendable, Hashable, CaseIterable {
        /// base × multiplier^(n−1) before retry n: with the default multiplier, base, 2×base, 4×base...
        case exponential
        /// base × n before retry n: base, 2×base, 3×base...
        case linear
        /// base before every retry.
        case fixed
    }

    /// How the delay grows.
    public var backoff: Backoff
    /// The delay before the first retry.
    public var baseDelay: Duration
    /// The growth factor of exponential backoff.
    public var multiplier: Double
    /// No delay is longer than this.
    public var maxDelay: Duration?
    /// Attempts in all, the first included.
    public var maxAttempts: Int
    /// Full jitter: each delay is drawn uniformly from zero to the computed delay, so many
    /// clients retrying at once spread out.
    public var jitter: Bool

    /// A policy; `maxAttempts` below 1 counts as 1.
    public init(
        backoff: Backoff = .exponential, baseDelay: Duration, multiplier: Double = 2, maxDelay: Duration? = nil, maxAttempts: Int,
        jitter: Bool = false
    ) {
        self.backoff = backoff
        self.baseDelay = baseDelay
        self.multiplier = multiplier
        self.maxDelay = maxDelay
        self.maxAttempts = max(1, maxAttempts)
        self.jitter = jitter
    }

    /// The wait after failed attempt `attempt` (1-based) and before the next one.
    /// `random` gives a number in 0..<1 (injected for tests); it is used only with jitter.
    public func delay(afterAttempt attempt: Int, random: () -> Double = { Double.random(in: 0..<1) }) -> Duration {
        let retry = max(1, attempt)
        let baseSeconds = baseDelay.inSeconds
        var delaySeconds: Double
        switch backoff {
        case .exponential: delaySeconds = baseSeconds * pow(multiplier, retry - 1)
        case .linear: delaySeconds = baseSeconds * Double(retry)
        case .fixed: delaySeconds = baseSeconds
        }
        if let maxDelay { delaySeconds = min(delaySeconds, maxDelay.inSeconds) }
        if !delaySeconds.isFinite { delaySeconds = maxDelay.map(\.inSeconds) ?? 86_400 }
        if jitter { delaySeconds *= random() }
        return .nanoseconds(Int64(max(0, delaySeconds) * 1e9))
    }

    public var description: String {
        var text = "\(backoff), \(maxAttempts) attempts, base \(formatDuration(baseDelay))"
        if let maxDelay { text += ", at most \(formatDuration(maxDelay))" }
        if jitter { text += ", full jitter" }
        return text
    }
}


private func pow(_ base: Double, _ exponent: Int) -> Double {
    var result = 1.0
    for _ in 0..<max(0, exponent) {
        result *= base
        if !result.isFinite { break }
    }
    return result
}

extension RetryPolicy {
    /// The HTTP statuses worth another attempt, for every network call: rate limited (429) and a
    /// gateway's passing failure (502, 503, 504). A 500 and every other status are final: the
    /// server answered and would answer the same.
    static let transientHTTPStatuses: Set<Int> = [429, 502, 503, 504]
}

extension RetryPolicy {
    /// Runs `attempt` (given its number, from 1) until it returns status 0 or the attempts run
    /// out, waiting on `clock` for ``delay(afterAttempt:random:)`` between attempts; `failed`
    /// hears each failed attempt's number, status and the delay before the next one (nil after
    /// the last). Returns the last status and the attempts made. `rollout retry` runs on it;
    /// tests move a manual clock. Throws `CancellationError` when cancelled while waiting.
    package func run<C: Clock<Duration>>(
        on clock: C,
        _ attempt: (_ number: Int) async throws -> Int32,
        failed: (_ number: Int, _ status: Int32, _ nextDelay: Duration?) -> Void = { _, _, _ in }
    ) async throws -> (status: Int32, attempts: Int) {
        var number = 0
        while true {
            number += 1
            let status = try await attempt(number)
            if status == 0 { return (status, number) }
            guard number < maxAttempts else {
                failed(number, status, nil)
                return (status, number)
            }
            let wait = delay(afterAttempt: number)
            failed(number, status, wait)
            try await clock.sleep(for: wait)
        }
    }
}
