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

        /// Parses a request body, `{"context": {...}}` (unknown attributes ignored, null the
        /// same as absent). An empty body is an empty context. A body that is not JSON is
        /// PARSE_ERROR, even where an attribute also has the wrong type (INVALID_CONTEXT).
        public static func parse(_ body: [UInt8]) -> Result<Context, RequestError> {
            var reader = JSONReader(body)
            if reader.atEnd() { return .success(Context()) }
            var context = Context()
            // The first attribute of a wrong type in this order is named, wherever it stands.
            let order = ["context", "context.targetingKey", "context.workspace", "context.internal"]
            var wrongType: (rank: Int, error: RequestError)?
            func expected(_ path: String, _ what: String) {
                let rank = order.firstIndex(of: path) ?? order.count
                if rank < wrongType?.rank ?? Int.max {
                    wrongType = (rank, RequestError(code: .invalidContext, details: "\(path) must be \(what)."))
                }
            }
            do {
                try reader.object { name, reader in
                    guard name == "context" else {
                        _ = try reader.value()
                        return
                    }
                    guard reader.nextIsObject() else {
                        if try reader.value() != .null { expected("context", "an object") }
                        return
                    }
                    try reader.object { attribute, reader in
                        let value = try reader.value()
                        switch (attribute, value) {
                        case ("targetingKey", .string(let text)): context.targetingKey = text
                        case ("workspace", .string(let text)): context.workspace = text
                        case ("internal", .bool(let flag)): context.isInternal = flag
                        case ("targetingKey", .null), ("workspace", .null): break
                        case ("internal", .null): context.isInternal = false
                        case ("targetingKey", _), ("workspace", _): expected("context.\(attribute)", "a string")
                        case ("internal", _): expected("context.internal", "a boolean")
                        default: break
                        }
                    }
                }
                guard reader.atEnd() else { throw JSONReader.Malformed() }
            } catch {
                return .failure(RequestError(code: .parseError, details: "The request body is not a JSON object with a context."))
            }
            if let wrongType { return .failure(wrongType.error) }
            return .success(context)
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
    public enum MetadataValue: Sendable, Hashable, Encodable {
        case bool(Bool)
        case string(String)
        case number(Double)

        public func encode(to encoder: any Encoder) throws {
            var container = encoder.singleValueContainer()
            switch self {
            case .bool(let value): try container.encode(value)
            case .string(let value): try container.encode(value)
            case .number(let value): try container.encode(value)
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

        /// The JSON body: a success, or a failure with `key`, `errorCode` and `errorDetails`.
        public var json: [UInt8] {
            var writer = JSONWriter()
            OFREP.body(self).write(into: &writer)
            return writer.bytes
        }
    }

    /// What a success or a failure holds, as OFREP's schema names it.
    private struct Body {
        var key: String
        var value: Bool?
        var variant: String?
        var reason: String?
        var metadata: [String: MetadataValue]?
        var errorCode: String?
        var errorDetails: String?

        /// The members present, keys sorted (equal answers are equal bytes).
        func write(into writer: inout JSONWriter) {
            writer.byte(0x7B)
            var first = true
            func member(_ name: StaticString, _ text: String?) {
                guard let text else { return }
                writer.key(name, first: first)
                writer.string(text)
                first = false
            }
            member("errorCode", errorCode)
            member("errorDetails", errorDetails)
            member("key", key)
            if let metadata {
                writer.key("metadata", first: first)
                first = false
                writer.byte(0x7B)
                for (index, name) in metadata.keys.sorted().enumerated() {
                    writer.key(name, first: index == 0)
                    switch metadata[name] {
                    case .bool(let flag)?: writer.bool(flag)
                    case .string(let text)?: writer.string(text)
                    case .number(let number)?: writer.number(number)
                    case nil: writer.raw("null")
                    }
                }
                writer.byte(0x7D)
            }
            member("reason", reason)
            if let value {
                writer.key("value", first: first)
                first = false
                writer.bool(value)
            }
            member("variant", variant)
            writer.byte(0x7D)
        }
    }

    private static func body(_ evaluation: Evaluation, dropping dropped: Set<String> = []) -> Body {
        switch evaluation {
        case .success(let key, let value, let reason, let metadata):
            let kept = metadata.filter { !dropped.contains($0.key) }
            return Body(key: key, value: value, variant: value ? "on" : "off", reason: reason, metadata: kept.isEmpty ? nil : kept)
        case .notFound(let key):
            return Body(key: key, errorCode: "FLAG_NOT_FOUND", errorDetails: "No feature \(key) in the flags keyspace.")
        case .invalid(let key, let error):
            return Body(key: key, errorCode: error.code.rawValue, errorDetails: error.details)
        }
    }

    /// `value` as OFREP JSON: keys sorted (equal answers are equal bytes), slashes unescaped.
    static func encode(_ value: some Encodable) -> [UInt8] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? encoder.encode(value)).map { [UInt8]($0) } ?? Array("{}".utf8)
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

    /// Where a client listens for change events (ADR-0008): `{"type": "sse", "endpoint":
    /// {"requestUri": ...}, "inactivityDelaySec": 120}`, relative to the origin it asked.
    public struct EventStream: Sendable, Hashable, Encodable {
        struct Endpoint: Sendable, Hashable, Encodable {
            var requestUri: String
        }
        var type = "sse"
        var endpoint: Endpoint
        var inactivityDelaySec = 120

        /// A stream at `requestURI`.
        public init(requestURI: String) { endpoint = Endpoint(requestUri: requestURI) }
    }


    /// Every flag of `gate` for `context`, as the bulk endpoint answers it: the JSON body (keys
    /// sorted, so equal answers are equal bytes) and its strong ETag, the SHA-256 of the body.
    public static func bulk(context: Context, gate: FeatureGate, eventStream: EventStream? = nil) -> (body: [UInt8], etag: String) {
        var flags: [Body] = []
        var freshness = "live"
        for feature in gate.features {
            let evaluation = evaluate(feature.rawValue, context: context, gate: gate)
            if case .notFound = evaluation { continue }
            // The age changes every second while stale: it is said once for the whole answer,
            // so the ETag changes only when an answer does.
            if case .success(_, _, _, let metadata) = evaluation {
                if metadata["stale_seconds"] != nil { freshness = "stale" }
                if metadata["snapshot_written_at"] != nil { freshness = "snapshot_file" }
            }
            flags.append(body(evaluation, dropping: ["stale_seconds", "snapshot_written_at"]))
        }
        // {"eventStreams":[...],"flags":[...],"metadata":{"snapshot":...}}: keys sorted.
        var writer = JSONWriter(reservingCapacity: 64 + flags.count * 200)
        writer.byte(0x7B)
        if let eventStream {
            writer.key("eventStreams", first: true)
            writer.raw("[{")
            writer.key("endpoint", first: true)
            writer.byte(0x7B)
            writer.key("requestUri", first: true)
            writer.string(eventStream.endpoint.requestUri)
            writer.byte(0x7D)
            writer.key("inactivityDelaySec")
            writer.number(Double(eventStream.inactivityDelaySec))
            writer.key("type")
            writer.string(eventStream.type)
            writer.raw("}]")
        }
        writer.key("flags", first: eventStream == nil)
        writer.byte(0x5B)
        for (index, flag) in flags.enumerated() {
            if index > 0 { writer.byte(0x2C) }
            flag.write(into: &writer)
        }
        writer.byte(0x5D)
        writer.key("metadata")
        writer.byte(0x7B)
        writer.key("snapshot", first: true)
        writer.string(freshness)
        writer.raw("}}")
        return (writer.bytes, "\"\(sha256Hex(Data(writer.bytes)))\"")
    }
}
