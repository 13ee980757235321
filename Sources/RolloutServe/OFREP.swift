import Foundation
public import RolloutGate

/// OpenFeature's Remote Evaluation Protocol (OFREP v0.3.0) over the gate: what an evaluation
/// request asks, and what the gate's decision answers. Pure values: the HTTP side is in
/// ``FlagServer``; docs/serve.md has the mapping table.
public enum OFREP {
    /// The evaluation context of a request: the attributes the gate reads.
    public struct Context: Sendable, Hashable {
        /// `targetingKey`: the subject's id.
        public var targetingKey: String?
        /// `workspace`.
        public var workspace: String?
        /// `internal`.
        public var isInternal: Bool

        /// A context.
        public init(targetingKey: String? = nil, workspace: String? = nil, isInternal: Bool = false) {
            self.targetingKey = targetingKey
            self.workspace = workspace
            self.isInternal = isInternal
        }

        /// The subject the gate decides for.
        var subject: Subject { Subject(id: targetingKey ?? "", workspace: workspace, isInternal: isInternal) }

        /// Parses a request body, `{"context": {...}}`. An empty body is an empty context.
        public static func parse(_ body: [UInt8]) -> Result<Context, RequestError> {
            if body.allSatisfy({ $0 == 0x20 || $0 == 0x0A || $0 == 0x0D || $0 == 0x09 }) { return .success(Context()) }
            guard let document = try? JSONDecoder().decode(JSONValue.self, from: Data(body)) else {
                return .failure(RequestError(code: .parseError, details: "The request body is not JSON."))
            }
            guard case .object(let fields) = document else {
                return .failure(RequestError(code: .parseError, details: "The request body must be a JSON object with a context."))
            }
            guard let raw = fields["context"], raw != .null else { return .success(Context()) }
            guard case .object(let context) = raw else {
                return .failure(RequestError(code: .invalidContext, details: "context must be an object."))
            }
            var parsed = Context()
            switch context["targetingKey"] ?? .null {
            case .null: break
            case .string(let text): parsed.targetingKey = text
            default: return .failure(RequestError(code: .invalidContext, details: "context.targetingKey must be a string."))
            }
            switch context["workspace"] ?? .null {
            case .null: break
            case .string(let text): parsed.workspace = text
            default: return .failure(RequestError(code: .invalidContext, details: "context.workspace must be a string."))
            }
            switch context["internal"] ?? .null {
            case .null: break
            case .bool(let flag): parsed.isInternal = flag
            default: return .failure(RequestError(code: .invalidContext, details: "context.internal must be a boolean."))
            }
            return .success(parsed)
        }
    }

    /// Any JSON value, read without guessing: `1` is a number, never `true`.
    enum JSONValue: Decodable, Hashable {
        case null
        case bool(Bool)
        case number(Double)
        case string(String)
        case array([JSONValue])
        case object([String: JSONValue])

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if container.decodeNil() {
                self = .null
            } else if let value = try? container.decode(Bool.self) {
                self = .bool(value)
            } else if let value = try? container.decode(Double.self) {
                self = .number(value)
            } else if let value = try? container.decode(String.self) {
                self = .string(value)
            } else if let value = try? container.decode([JSONValue].self) {
                self = .array(value)
            } else {
                self = .object(try container.decode([String: JSONValue].self))
            }
        }
    }

    /// A request that cannot be evaluated: 400 with an OFREP error code.
    public struct RequestError: Error, Sendable, Hashable {
        /// The OFREP error codes of a 400.
        public enum Code: String, Sendable, Hashable {
            case parseError = "PARSE_ERROR"
            case invalidContext = "INVALID_CONTEXT"
            case targetingKeyMissing = "TARGETING_KEY_MISSING"
        }
        /// The code.
        public var code: Code
        /// What is wrong, for a person.
        public var details: String
    }

    /// A metadata value: OFREP allows booleans, strings and numbers only.
    public enum MetadataValue: Sendable, Hashable {
        case bool(Bool)
        case string(String)
        case number(Double)

        var json: Any {
            switch self {
            case .bool(let value): return value
            case .string(let value): return value
            case .number(let value): return value
            }
        }
    }

    /// One flag's answer.
    public enum Evaluation: Sendable, Hashable {
        /// 200: the gate's value. `reason` is one of OFREP's (STATIC, TARGETING_MATCH, SPLIT,
        /// DISABLED, UNKNOWN).
        case success(key: String, value: Bool, reason: String, metadata: [String: MetadataValue])
        /// 404 FLAG_NOT_FOUND.
        case notFound(key: String)
        /// 400 with its code.
        case invalid(key: String, RequestError)

        /// The HTTP status of a single-flag answer.
        public var status: Int {
            switch self {
            case .success: return 200
            case .notFound: return 404
            case .invalid: return 400
            }
        }

        /// The JSON object: a success, or a failure with `key`, `errorCode` and `errorDetails`.
        public var jsonObject: [String: Any] {
            switch self {
            case .success(let key, let value, let reason, let metadata):
                var object: [String: Any] = ["key": key, "value": value, "variant": value ? "on" : "off", "reason": reason]
                if !metadata.isEmpty { object["metadata"] = metadata.mapValues(\.json) }
                return object
            case .notFound(let key):
                return ["key": key, "errorCode": "FLAG_NOT_FOUND", "errorDetails": "No feature \(key) in the flags keyspace."]
            case .invalid(let key, let error):
                return ["key": key, "errorCode": error.code.rawValue, "errorDetails": error.details]
            }
        }
    }

    /// The answer for `key` and `context` from `gate`'s snapshot (never Redis).
    public static func evaluate(_ key: String, context: Context, gate: FeatureGate) -> Evaluation {
        guard let feature = try? FeatureName(key), let result = gate.state(of: feature) else { return .notFound(key: key) }
        if case .success(let state) = result, !state.exists { return .notFound(key: key) }
        let decision = gate.decision(feature, for: context.subject)
        return answer(key, decision: decision, state: try? result.get())
    }

    /// The OFREP answer for a gate decision (`state`: the feature's valid state, for metadata).
    public static func answer(_ key: String, decision: Decision, state: FeatureState?) -> Evaluation {
        var metadata: [String: MetadataValue] = ["gate_reason": .string(decision.reason.code)]
        if let state { metadata["rollout_percent"] = .number(Double(state.rolloutPercent.description) ?? 0) }
        switch decision.freshness {
        case .live: break
        case .stale(let age): metadata["stale_seconds"] = .number(Double(age.components.seconds))
        case .snapshotFile(let written): metadata["snapshot_written_at"] = .string(written.description)
        }
        let reason: String
        switch decision.reason {
        case .killSwitch, .processOverride:
            reason = "DISABLED"
        case .denied, .allowed, .internalOnly:
            reason = "TARGETING_MATCH"
        case .bucket(let scheme, let bucket, let threshold, let percent, let fromWorkspace):
            metadata["bucket"] = .number(Double(bucket))
            metadata["threshold"] = .number(Double(threshold))
            metadata["scheme"] = .string(scheme.rawValue)
            metadata["percent"] = .number(Double(percent.description) ?? 0)
            if fromWorkspace {
                reason = "TARGETING_MATCH"
            } else {
                reason = percent == .zero || percent == .full ? "STATIC" : "SPLIT"
            }
        case .anonymousActor(let percent):
            guard percent == .zero || percent == .full else {
                return .invalid(
                    key: key,
                    RequestError(
                        code: .targetingKeyMissing,
                        details: "\(key) is at \(percent)%: the bucket rule needs a non-empty context.targetingKey."))
            }
            reason = "STATIC"
        case .invalidState(let invalidKey):
            metadata["invalid_key"] = .string(invalidKey)
            reason = "UNKNOWN"
        case .staleSnapshot, .noData, .invalidName:
            reason = "UNKNOWN"
        }
        return .success(key: key, value: decision.isOn, reason: reason, metadata: metadata)
    }

    /// Every flag of `gate` for `context`, as the bulk endpoint answers it: the JSON body (keys
    /// sorted, so equal answers are equal bytes) and its strong ETag, the SHA-256 of the body.
    public static func bulk(context: Context, gate: FeatureGate) -> (body: [UInt8], etag: String) {
        var flags: [[String: Any]] = []
        var freshness = "live"
        for feature in gate.features {
            let evaluation = evaluate(feature.rawValue, context: context, gate: gate)
            if case .notFound = evaluation { continue }
            var object = evaluation.jsonObject
            // The age changes every second while stale: it is said once for the whole answer,
            // so the ETag changes only when an answer does.
            if var metadata = object["metadata"] as? [String: Any] {
                if metadata.removeValue(forKey: "stale_seconds") != nil { freshness = "stale" }
                if metadata.removeValue(forKey: "snapshot_written_at") != nil { freshness = "snapshot_file" }
                object["metadata"] = metadata
            }
            flags.append(object)
        }
        let document: [String: Any] = ["flags": flags, "metadata": ["snapshot": freshness]]
        let data = (try? JSONSerialization.data(withJSONObject: document, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
        let body = [UInt8](data)
        return (body, "\"\(sha256Hex(Data(body)))\"")
    }
}
