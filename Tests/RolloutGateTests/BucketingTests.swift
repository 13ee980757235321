import Foundation
import RolloutGate
import Testing

/// A row of a vector table: the inputs and the decisions at several percents.
struct Vector: Sendable, CustomTestStringConvertible {
    let scheme: BucketingScheme
    let feature: FeatureName
    let workspace: String?
    let actor: String
    let bucket: Int?
    let decisions: [(RolloutPercent, Bool)]

    var testDescription: String { "\(scheme) \(feature) \(workspace ?? "-") \(actor.prefix(20))" }
}

private let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent()

/// The vectors of docs/bucketing.md, between its `vectors:begin` and `vectors:end` markers.
func documentedVectors() throws -> [Vector] {
    let text = try String(contentsOf: packageRoot.appendingPathComponent("docs/bucketing.md"), encoding: .utf8)
    guard let begin = text.range(of: "<!-- vectors:begin -->"), let end = text.range(of: "<!-- vectors:end -->") else {
        throw VectorError("docs/bucketing.md has no vectors:begin / vectors:end markers")
    }
    let lines = text[begin.upperBound..<end.lowerBound].split(separator: "\n").filter { $0.hasPrefix("|") }
    guard let header = lines.first else { throw VectorError("no table") }
    let columns = cells(header)
    let percents = try columns.dropFirst(5).map { column -> RolloutPercent in
        guard let percent = RolloutPercent(parsing: column.replacingOccurrences(of: "on at ", with: "")) else {
            throw VectorError("bad column \(column)")
        }
        return percent
    }
    return try lines.dropFirst(2).map { line in
        let row = cells(line)
        guard row.count == columns.count, let scheme = BucketingScheme(rawValue: row[0]) else { throw VectorError("bad row \(line)") }
        return Vector(
            scheme: scheme, feature: try FeatureName(row[1]), workspace: row[2].isEmpty ? nil : row[2], actor: row[3],
            bucket: Int(row[4]), decisions: zip(percents, row.dropFirst(5).map { $0 == "true" }).map { ($0, $1) })
    }
}

/// The independent vectors in ../shared/vectors/bucketing.tsv (nil when the folder is absent).
func sharedVectors() throws -> [Vector]? {
    let url = packageRoot.deletingLastPathComponent().appendingPathComponent("shared/vectors/bucketing.tsv")
    guard let text = try? String(contentsOf: url, encoding: .utf8) else { return nil }
    let percents = ["10", "37.125", "50"].compactMap { RolloutPercent(parsing: $0) }
    return try text.split(separator: "\n").filter { !$0.hasPrefix("#") }.map { line in
        let row = line.split(separator: "\t", omittingEmptySubsequences: false).map(String.init)
        guard row.count == 9, let scheme = BucketingScheme(rawValue: row[0]) else { throw VectorError("bad row \(line)") }
        return Vector(
            scheme: scheme, feature: try FeatureName(row[1] == "(any)" ? "anything" : row[1]),
            workspace: row[2].isEmpty ? nil : row[2], actor: row[3], bucket: Int(row[5]),
            decisions: zip(percents, row[6...8].map { $0 == "true" }).map { ($0, $1) })
    }
}

struct VectorError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

private func cells(_ line: Substring) -> [String] {
    var parts = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
    parts.removeFirst()
    parts.removeLast()
    return parts
}

private func check(_ vector: Vector) {
    let bucket = Bucketing.bucket(scheme: vector.scheme, feature: vector.feature, workspace: vector.workspace, actor: vector.actor)
    #expect(bucket == vector.bucket)
    for (percent, expected) in vector.decisions {
        #expect(
            Bucketing.isInside(bucket: bucket, scheme: vector.scheme, percent: percent) == expected,
            "at \(percent)%")
        let state = FeatureState.absentWith(vector.feature, scheme: vector.scheme, percent: percent)
        #expect(state.decide(for: Subject(id: vector.actor, workspace: vector.workspace)).isOn == expected)
    }
}

extension FeatureState {
    static func absentWith(_ feature: FeatureName, scheme: BucketingScheme, percent: RolloutPercent) -> FeatureState {
        var state = FeatureState.absent(feature)
        state.bucketing = scheme
        state.rolloutPercent = percent
        return state
    }
}

@Suite("Bucketing spec")
struct BucketingTests {
    @Test func documentedVectorTableIsLargeEnough() throws {
        let vectors = try documentedVectors()
        #expect(vectors.count >= 20)
        #expect(vectors.contains { $0.actor.isEmpty })
        #expect(vectors.contains { $0.actor.unicodeScalars.contains { !$0.isASCII } })
        #expect(Set(vectors.map(\.scheme)) == [.v1, .v2])
    }

    @Test(arguments: try documentedVectors())
    func agreesWithTheDocumentedVectors(_ vector: Vector) {
        check(vector)
    }

    @Test func agreesWithTheIndependentSharedVectors() throws {
        guard let vectors = try sharedVectors() else {
            #expect(!isCIRun, "../shared/vectors/bucketing.tsv is missing")
            return
        }
        #expect(vectors.count >= 100)
        for vector in vectors { check(vector) }
    }

    @Test(arguments: [BucketingScheme.v1, .v2])
    func raisingThePercentNeverTurnsAnyoneOff(scheme: BucketingScheme) throws {
        let percents = ["0", "0.001", "0.5", "1", "9.999", "10", "25", "37.125", "50", "99", "99.999", "100"].compactMap {
            RolloutPercent(parsing: $0)
        }
        for index in 0..<5000 {
            let bucket = Bucketing.bucket(scheme: scheme, feature: "google", workspace: index % 3 == 0 ? "acme" : nil, actor: "user-\(index)")
            var wasOn = false
            for percent in percents {
                let isOn = Bucketing.isInside(bucket: bucket, scheme: scheme, percent: percent)
                #expect(!(wasOn && !isOn), "user-\(index) turned off at \(percent)%")
                wasOn = isOn
            }
            #expect(wasOn, "everyone is on at 100%")
        }
    }

    @Test func v2BucketsAreUniformByChiSquare() {
        // 100,000 ids into 100 groups of 1,000 buckets each: 99 degrees of freedom, whose
        // 99.9th percentile is 148.2. A correct hash fails this one time in a thousand.
        var counts = [Int](repeating: 0, count: 100)
        for index in 0..<100_000 {
            let bucket = Bucketing.bucket(scheme: .v2, feature: "google", workspace: nil, actor: "actor-\(index)") ?? 0
            counts[bucket / 1000] += 1
        }
        let expected = 1000.0
        let chiSquare = counts.reduce(0.0) { $0 + pow(Double($1) - expected, 2) / expected }
        #expect(chiSquare < 148.2, "chi-square \(chiSquare)")
    }

    @Test func v1BucketsAreUniformByChiSquare() {
        var counts = [Int](repeating: 0, count: 100)
        for index in 0..<100_000 {
            let bucket = Bucketing.bucket(scheme: .v1, feature: "google", workspace: nil, actor: "actor-\(index)") ?? 1
            counts[bucket - 1] += 1
        }
        let chiSquare = counts.reduce(0.0) { $0 + pow(Double($1) - 1000, 2) / 1000 }
        #expect(chiSquare < 148.2, "chi-square \(chiSquare)")
    }

    @Test func twoV2FeaturesAtTenPercentShareAboutOnePercent() throws {
        let ten = try #require(RolloutPercent(parsing: "10"))
        var both = 0
        var first = 0
        for index in 0..<100_000 {
            let a = Bucketing.bucket(scheme: .v2, feature: "google", workspace: nil, actor: "actor-\(index)")
            let b = Bucketing.bucket(scheme: .v2, feature: "new-checkout", workspace: nil, actor: "actor-\(index)")
            let inA = Bucketing.isInside(bucket: a, scheme: .v2, percent: ten)
            if inA { first += 1 }
            if inA && Bucketing.isInside(bucket: b, scheme: .v2, percent: ten) { both += 1 }
        }
        // Independent cohorts: 1% of actors (1,000 ± ~95 at three standard deviations), not 10%.
        #expect((9_000...11_000).contains(first))
        #expect((700...1_300).contains(both), "\(both) actors in both")
    }

    @Test func v1FeaturesShareTheirWholeCohort() {
        // The legacy scheme ignores the feature: documented, and why v2 is the default.
        for index in 0..<1000 {
            #expect(
                Bucketing.bucket(scheme: .v1, feature: "google", workspace: nil, actor: "a\(index)")
                    == Bucketing.bucket(scheme: .v1, feature: "other", workspace: nil, actor: "a\(index)"))
        }
    }

    @Test func v2EmptyActorIsOnlyOnAtOneHundred() throws {
        #expect(Bucketing.bucket(scheme: .v2, feature: "google", workspace: "acme", actor: "") == nil)
        #expect(Bucketing.bucket(scheme: .v2, feature: "google", workspace: nil, actor: "") == nil)
        #expect(!Bucketing.isInside(bucket: nil, scheme: .v2, percent: try #require(RolloutPercent(parsing: "99.999"))))
        #expect(Bucketing.isInside(bucket: nil, scheme: .v2, percent: .full))
        let state = FeatureState.absentWith("google", scheme: .v2, percent: try #require(RolloutPercent(parsing: "99")))
        #expect(state.decide(for: Subject(id: "")).reason == .anonymousActor(percent: try #require(RolloutPercent(parsing: "99"))))
    }

    @Test(arguments: [nil, "acme", "ws_9"] as [String?])
    func v1EmptyActorIsTheOriginalGatesAnon(workspace: String?) throws {
        // The original Python gate buckets a request without an actor id as `anon`.
        let anon = Bucketing.bucket(scheme: .v1, feature: "google", workspace: workspace, actor: "anon")
        #expect(anon != nil)
        #expect(Bucketing.bucket(scheme: .v1, feature: "google", workspace: workspace, actor: "") == anon)
        #expect(Bucketing.bucket(scheme: .v1, feature: "other", workspace: workspace, actor: "") == anon)
        let bucket = try #require(anon)
        let at = try #require(RolloutPercent(parsing: String(bucket)))
        let below = try #require(RolloutPercent(parsing: String(bucket - 1)))
        let state = FeatureState.absentWith("google", scheme: .v1, percent: at)
        let decision = state.decide(for: Subject(id: "", workspace: workspace))
        #expect(decision.isOn)
        #expect(decision.reason == .bucket(scheme: .v1, bucket: bucket, threshold: bucket, percent: at, fromWorkspace: false))
        #expect(!FeatureState.absentWith("google", scheme: .v1, percent: below).decide(for: Subject(id: "", workspace: workspace)).isOn)
        // Every anonymous request shares that bucket: not placed by chance, so no cohort counts it.
        #expect(decision.isAnonymous && !decision.isBucketed)
        #expect(state.decide(for: Subject(id: "anon", workspace: workspace)).isBucketed)
    }

    @Test func v1EmptyActorBucketsArePinned() {
        #expect(Bucketing.bucket(scheme: .v1, feature: "google", workspace: nil, actor: "") == 38)
        #expect(Bucketing.bucket(scheme: .v1, feature: "google", workspace: "acme", actor: "") == 10)
        #expect(Bucketing.bucket(scheme: .v1, feature: "google", workspace: "ws_9", actor: "") == 74)
    }

    @Test func emptyWorkspaceMeansNone() {
        #expect(
            Bucketing.bucket(scheme: .v2, feature: "google", workspace: "", actor: "user_123")
                == Bucketing.bucket(scheme: .v2, feature: "google", workspace: nil, actor: "user_123"))
    }
}

let isCIRun = ProcessInfo.processInfo.environment["CI"] == "true"
