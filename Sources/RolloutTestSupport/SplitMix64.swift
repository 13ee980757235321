import Foundation

/// SplitMix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators", 2014):
/// a seeded generator with one 64-bit state, for tests and simulations that must draw the same
/// numbers on every run.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    public var state: UInt64

    public init(state: UInt64) {
        self.state = state
    }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

extension SplitMix64 {
    /// Uniform in [0, 1), 53 random bits.
    public mutating func uniform() -> Double {
        Double(next() >> 11) * 0x1p-53
    }

    /// An exact Binomial(n, p) draw by inversion, searching outwards from the mode (each step
    /// takes the next probability from the last by the ratio of binomial terms): about
    /// sqrt(n p (1 - p)) steps, and no underflow where (1 - p)^n is below the smallest double.
    public mutating func binomial(_ n: Int, _ p: Double) -> Int {
        if n <= 0 || p <= 0 { return 0 }
        if p >= 1 { return n }
        let q = 1 - p
        let mode = min(n, Int(Double(n + 1) * p))
        let atMode = exp(
            lgamma(Double(n + 1)) - lgamma(Double(mode + 1)) - lgamma(Double(n - mode + 1)) + Double(mode) * log(p)
                + Double(n - mode) * log(q))
        var u = uniform() - atMode
        if u <= 0 { return mode }
        let odds = p / q
        var low = mode
        var high = mode
        var lowProbability = atMode
        var highProbability = atMode
        while low > 0 || high < n {
            if low > 0 {
                lowProbability *= Double(low) / Double(n - low + 1) / odds
                low -= 1
                u -= lowProbability
                if u <= 0 { return low }
            }
            if high < n {
                highProbability *= Double(n - high) / Double(high + 1) * odds
                high += 1
                u -= highProbability
                if u <= 0 { return high }
            }
        }
        // What rounding left of the unit interval: the mode.
        return mode
    }
}
