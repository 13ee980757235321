import Foundation
import RolloutTestSupport
import Testing

/// The cohort simulation's draws (rollout-bench --cohort): exact binomial draws from a seeded
/// SplitMix64, so every run of the simulation gives the same figures.
@Suite("Seeded binomial draws for the cohort simulation")
struct BinomialDrawTests {
    @Test(arguments: [(30_000, 0.1), (27_000, 0.01), (27_000, 0.1), (3_000, 0.02), (300, 0.02), (10, 0.5), (1, 0.3)])
    func meanAndVarianceAreBinomial(n: Int, p: Double) {
        var random = SplitMix64(state: 20_261_204)
        let draws = (0..<20_000).map { _ in Double(random.binomial(n, p)) }
        let mean = draws.reduce(0, +) / Double(draws.count)
        let variance = draws.reduce(0) { $0 + ($1 - mean) * ($1 - mean) } / Double(draws.count - 1)
        let expectedVariance = Double(n) * p * (1 - p)
        // Five standard errors of the mean; the variance within 6% (its standard error here is
        // about 1%).
        #expect(abs(mean - Double(n) * p) < 5 * (expectedVariance / Double(draws.count)).squareRoot(), "mean \(mean)")
        #expect(abs(variance / expectedVariance - 1) < 0.06, "variance \(variance), expected \(expectedVariance)")
        #expect(draws.allSatisfy { $0 >= 0 && $0 <= Double(n) })
    }

    @Test func smallDrawsFollowTheBinomialProbabilities() {
        var random = SplitMix64(state: 7)
        let n = 10
        let p = 0.3
        var counts = [Int](repeating: 0, count: n + 1)
        let total = 100_000
        for _ in 0..<total { counts[random.binomial(n, p)] += 1 }
        for k in 0...n {
            let probability = exp(lgamma(Double(n + 1)) - lgamma(Double(k + 1)) - lgamma(Double(n - k + 1))) * pow(p, Double(k)) * pow(1 - p, Double(n - k))
            let expected = probability * Double(total)
            #expect(abs(Double(counts[k]) - expected) <= 5 * expected.squareRoot() + 1, "k = \(k): \(counts[k]), expected \(expected)")
        }
    }

    @Test func edgesNeedNoRandomness() {
        var random = SplitMix64(state: 1)
        #expect(random.binomial(0, 0.5) == 0)
        #expect(random.binomial(5, 0) == 0)
        #expect(random.binomial(5, 1) == 5)
    }

    @Test func theSameSeedDrawsTheSameNumbers() {
        var first = SplitMix64(state: 13)
        var second = SplitMix64(state: 13)
        #expect((0..<100).map { _ in first.binomial(30_000, 0.1) } == (0..<100).map { _ in second.binomial(30_000, 0.1) })
    }
}
