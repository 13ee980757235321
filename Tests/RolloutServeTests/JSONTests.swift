import Foundation
import RolloutTestSupport
@testable import RolloutServe
import Testing

/// The hand-written JSON of the evaluation path against Foundation's, on generated documents:
/// the same contexts and errors as a JSONDecoder, the same bytes as a sorted-keys JSONEncoder.
@Suite("OFREP's JSON by hand agrees with Foundation's")
struct HandWrittenJSONTests {
    /// What `OFREP.Context.parse` did with JSONDecoder before: the reference. JSONDecoder does
    /// not check the strings it skips (a bad escape in an attribute the gate does not read
    /// passes), so JSONSerialization, which reads everything, judges whether the body is JSON.
    private struct RequestBody: Decodable {
        struct Attributes: Decodable {
            var targetingKey: String?
            var workspace: String?
            var `internal`: Bool?
        }
        var context: Attributes?
    }

    private static func reference(_ body: [UInt8]) -> Result<OFREP.Context, OFREP.RequestError> {
        if body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return .success(OFREP.Context()) }
        guard (try? JSONSerialization.jsonObject(with: Data(body))) is [String: Any] else {
            return .failure(OFREP.RequestError(code: .parseError, details: "The request body is not a JSON object with a context."))
        }
        do {
            let context = try JSONDecoder().decode(RequestBody.self, from: Data(body)).context
            return .success(OFREP.Context(targetingKey: context?.targetingKey, workspace: context?.workspace, isInternal: context?.internal ?? false))
        } catch DecodingError.typeMismatch(let type, let place) where !place.codingPath.isEmpty {
            let path = place.codingPath.map(\.stringValue).joined(separator: ".")
            let expected = type == Bool.self ? "a boolean" : type == String.self ? "a string" : "an object"
            return .failure(OFREP.RequestError(code: .invalidContext, details: "\(path) must be \(expected)."))
        } catch {
            return .failure(OFREP.RequestError(code: .parseError, details: "The request body is not a JSON object with a context."))
        }
    }

    /// A seeded generator: the same documents on every run.
    private typealias SplitMix = SplitMix64

    private static let pieces = [
        "a", "user-1", "Zürich", "日本", "😀", " ", "\\\"", "\\\\", "\\/", "\\n", "\\t", "\\b", "\\f", "\\r", "\\u00e9", "\\u0000",
        "\\ud83d\\ude00", "/", "\u{7F}",
    ]

    private static func string(_ random: inout SplitMix) -> String {
        "\"" + (0..<Int.random(in: 0...4, using: &random)).map { _ in pieces.randomElement(using: &random) ?? "" }.joined() + "\""
    }

    private static let numbers = ["0", "-0", "7", "-12", "3.25", "1e3", "2E-2", "-0.5e+10", "123456789012345678901234567890"]

    private static func value(_ random: inout SplitMix, depth: Int) -> String {
        switch Int.random(in: 0..<(depth > 3 ? 5 : 7), using: &random) {
        case 0: return string(&random)
        case 1: return numbers.randomElement(using: &random) ?? "0"
        case 2: return ["true", "false"].randomElement(using: &random) ?? "true"
        case 3: return "null"
        case 4: return string(&random)
        case 5: return "[" + (0..<Int.random(in: 0...3, using: &random)).map { _ in value(&random, depth: depth + 1) }.joined(separator: ", ") + "]"
        default: return object(&random, depth: depth + 1, names: ["x", "context", "targetingKey", "internal", "y\\u0041"])
        }
    }

    private static func object(_ random: inout SplitMix, depth: Int, names: [String]) -> String {
        let chosen = names.shuffled(using: &random).prefix(Int.random(in: 0...names.count, using: &random))
        return "{" + chosen.map { "\"\($0)\" : " + value(&random, depth: depth) }.joined(separator: ",") + "}"
    }

    /// A request body: usually a context with the attributes the gate reads, of any type.
    private static func document(_ random: inout SplitMix) -> String {
        let attributes = ["targetingKey", "workspace", "internal", "other"].shuffled(using: &random).prefix(Int.random(in: 0...4, using: &random))
        let context = "{" + attributes.map { name -> String in
            let typed = name == "internal" ? (["true", "false"].randomElement(using: &random) ?? "true") : string(&random)
            return "\"\(name)\": " + (Int.random(in: 0..<4, using: &random) == 0 ? value(&random, depth: 2) : typed)
        }.joined(separator: ", ") + "}"
        let contextValue = Int.random(in: 0..<8, using: &random) == 0 ? value(&random, depth: 1) : context
        var members = ["\"context\": " + contextValue]
        if Bool.random(using: &random) { members.append("\"extra\": " + value(&random, depth: 1)) }
        return "\n{" + members.shuffled(using: &random).joined(separator: ",") + "} "
    }

    /// The document with one byte dropped, changed or added, or cut short.
    private static func mutated(_ text: String, _ random: inout SplitMix) -> [UInt8] {
        var bytes = Array(text.utf8)
        guard !bytes.isEmpty else { return bytes }
        let at = Int.random(in: 0..<bytes.count, using: &random)
        let noise: [UInt8] = [0x22, 0x2C, 0x7B, 0x7D, 0x5B, 0x5D, 0x3A, 0x5C, 0x30, 0x2E, 0x65, 0x0A, 0x01, 0xFF, 0xC3]
        switch Int.random(in: 0..<4, using: &random) {
        case 0: bytes.remove(at: at)
        case 1: bytes[at] = noise.randomElement(using: &random) ?? 0
        case 2: bytes.insert(noise.randomElement(using: &random) ?? 0, at: at)
        default: bytes.removeSubrange(at...)
        }
        return bytes
    }

    @Test func contextsAndErrorsAreJSONDecoders() {
        var random = SplitMix(state: 20_261_202)
        var successes = 0
        for round in 0..<20_000 {
            let text = Self.document(&random)
            let body = round % 2 == 0 ? Array(text.utf8) : Self.mutated(text, &random)
            let ours = OFREP.Context.parse(body)
            let theirs = Self.reference(body)
            // The two deliberate differences (see JSONReader): a trailing comma is not JSON, and
            // a number beyond a Double's range is grammatical JSON.
            let shown = String(decoding: body, as: UTF8.self)
            let trailingComma = shown.range(of: #",\s*[}\]]"#, options: .regularExpression) != nil
            let hugeNumber = shown.range(of: #"[0-9][eE][+-]?[0-9]{3,}"#, options: .regularExpression) != nil
            if ours != theirs {
                #expect((trailingComma && ours.failureCode == .parseError) || (hugeNumber && theirs.failureCode == .parseError), "\(shown)")
            }
            if case .success = ours { successes += 1 }
        }
        #expect(successes > 5_000)  // the documents are mostly valid: both sides are exercised
    }

    @Test(arguments: [
        "", "  ", "{}", "{\"context\": null}", "{\"context\": {}}", "[]", "1", "\"context\"", "{\"context\": {\"targetingKey\": \"a\"}} x",
        "{\"context\": {\"targetingKey\": \"\\ud800\"}}", "{\"context\": {\"targetingKey\": \"\\udc00\\ud800\"}}", "{\"a\": 01}",
        "{\"a\": 1.}", "{\"a\": -}", "{\"a\": .5}", "{\"context\": {\"internal\": tru}}",
        "{\"context\": {\"targetingKey\": \"tab\there\"}}", "{\"context\": {\"targetingKey\": 5}, \"x\": }",
        "{\"context\": {\"internal\": \"yes\"}}", "{\"context\": [1]}", "\u{FEFF}{}",
        String(repeating: "[", count: 65) + String(repeating: "]", count: 65),
    ])
    func edgeCasesAreJSONDecoders(_ text: String) {
        let body = Array(text.utf8)
        #expect(OFREP.Context.parse(body) == Self.reference(body))
    }

    @Test(arguments: ["{\"a\": [1,]}", "{\"a\": {\"b\": 1,}}", "{\"context\": {},}", "{\"context\": {\"targetingKey\": \"a\",}}"])
    func aTrailingCommaIsNotJSON(_ text: String) {
        #expect(OFREP.Context.parse(Array(text.utf8)).failureCode == .parseError)
    }

    @Test func aNumberBeyondADoublesRangeInAnIgnoredAttributeIsNoError() {
        let body = Array("{\"x\": 1e99999, \"context\": {\"targetingKey\": \"a\"}}".utf8)
        #expect(OFREP.Context.parse(body) == .success(OFREP.Context(targetingKey: "a")))
    }

    @Test func nestingBeyondTheLimitIsAParseErrorNotACrash() {
        let deep = Array((String(repeating: "[", count: 100_000) + String(repeating: "]", count: 100_000)).utf8)
        #expect(OFREP.Context.parse(Array("{\"x\": ".utf8) + deep + Array("}".utf8)).failureCode == .parseError)
    }

    /// An answer as JSONEncoder writes it (sorted keys, slashes unescaped).
    private struct EncodedBody: Encodable {
        var key: String
        var value: Bool?
        var variant: String?
        var reason: String?
        var metadata: [String: OFREP.MetadataValue]?
        var errorCode: String?
        var errorDetails: String?
    }

    private static func encoded(_ body: EncodedBody) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(body)).map { [UInt8]($0) } ?? []
    }

    @Test func answersAreJSONEncodersBytes() {
        var random = SplitMix(state: 7)
        let texts = ["", "a/b", "quote\"back\\slash", "line\nfeed\r\ttab\u{08}\u{0C}", "\u{01}\u{1F}\u{7F}", "Zürich 日本 😀", "flags:x:rollout_percent"]
        let numbers: [Double] = [0, 1, 7, 99_999, 100_000, 37.5, 0.001, 12.345, 100, 86_400, 3_000_000]
        for _ in 0..<2_000 {
            let key = texts.randomElement(using: &random) ?? ""
            var metadata: [String: OFREP.MetadataValue] = [:]
            for name in ["bucket", "gate_reason", "threshold", "scheme", "percent", "invalid_key", "stale_seconds", "flag"].shuffled(using: &random)
                .prefix(Int.random(in: 0...8, using: &random))
            {
                switch Int.random(in: 0..<3, using: &random) {
                case 0: metadata[name] = .number(numbers.randomElement(using: &random) ?? 0)
                case 1: metadata[name] = .string(texts.randomElement(using: &random) ?? "")
                default: metadata[name] = .bool(Bool.random(using: &random))
                }
            }
            let value = Bool.random(using: &random)
            let reason = ["STATIC", "SPLIT", "DISABLED"].randomElement(using: &random) ?? "STATIC"
            let success = OFREP.Evaluation.success(key: key, value: value, reason: reason, metadata: metadata)
            let expected = EncodedBody(
                key: key, value: value, variant: value ? "on" : "off", reason: reason, metadata: metadata.isEmpty ? nil : metadata)
            #expect(success.json == Self.encoded(expected), "\(String(decoding: success.json, as: UTF8.self))")
            let details = texts.randomElement(using: &random) ?? ""
            let failure = OFREP.Evaluation.invalid(key: key, OFREP.RequestError(code: .invalidContext, details: details))
            #expect(failure.json == Self.encoded(EncodedBody(key: key, errorCode: "INVALID_CONTEXT", errorDetails: details)))
        }
    }
}

extension Result where Failure == OFREP.RequestError {
    var failureCode: OFREP.RequestError.Code? {
        if case .failure(let error) = self { return error.code }
        return nil
    }
}
