import Testing

@testable import RolloutGate

@Suite("The snapshot's name table finds each name's own entry and nothing else")
struct NameTableTests {
    final class Box: Sendable {
        let name: String
        init(_ name: String) { self.name = name }
    }

    /// Names of every length from 1 to 64, some alike but for one byte in the middle or at an end.
    static let names: [String] = {
        var names = (1...64).map { length in String((0..<length).map { Character(Unicode.Scalar(UInt8(0x61 + $0 % 26))) }) }
        names += (0..<500).map { "bench-\($0)" }
        names += ["feature-flag-for-the-new-checkout-a", "feature-flag-for-the-new-checkout-b", "feature-flag-xor-the-new-checkout-a"]
        return names
    }()

    @Test func everyNameFindsItsOwnObject() throws {
        let boxes = Dictionary(uniqueKeysWithValues: try Self.names.map { (try FeatureName($0), Box($0)) })
        let table = NameTable(boxes)
        for name in Self.names {
            // A copy made at run time: its bytes, not its storage, must match.
            let copy = String(decoding: Array(name.utf8), as: UTF8.self)
            let found = table.object(named: copy)?.takeUnretainedValue()
            #expect(found?.name == name)
        }
        withExtendedLifetime(boxes) {}
    }

    @Test(arguments: ["", "bench-500", "bench-1000", "bench-1", "ab_", "feature-flag-for-the-new-checkout-c", "feature-flag-for-tha-new-checkout-a", String(repeating: "a", count: 65), "é"])
    func aNameNotInTheTableIsNotFound(name: String) throws {
        let some = ["bench-10", "bench-100", "ab", "abc", "feature-flag-for-the-new-checkout-a"]
        let boxes = Dictionary(uniqueKeysWithValues: try some.map { (try FeatureName($0), Box($0)) })
        let table = NameTable(boxes)
        let found = table.object(named: name)
        #expect(found == nil)
        withExtendedLifetime(boxes) {}
    }

    @Test func anInvalidLiteralIsNeverInTheTable() {
        let invalid: FeatureName = "Google"
        let boxes = [invalid: Box("Google")]
        let table = NameTable(boxes)
        let found = table.object(named: "Google")
        #expect(found == nil)
        #expect(!invalid.isValid)
        withExtendedLifetime(boxes) {}
    }

    @Test func aLiteralAndAValidatedNameAreTheSameKey() throws {
        let literal: FeatureName = "google"
        let text = "google"
        let validated = try FeatureName(text)
        #expect(literal.isValid)
        #expect(validated == literal)
        #expect(Set([literal, validated]).count == 1)
    }
}
