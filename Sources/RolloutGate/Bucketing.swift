import CRolloutCrypto

/// The bucketing spec (docs/bucketing.md): which bucket an actor falls in, and whether that
/// bucket is inside a percent. Changing anything here moves users between cohorts: a new
/// formula is a new scheme, never an edit.
public enum Bucketing {
    /// The bucket of an actor: 0..<100_000 for v2, 1...100 for v1; nil for an empty actor id
    /// (on only at 100%). A nil or empty workspace means none.
    @inlinable
    public static func bucket(scheme: BucketingScheme, feature: FeatureName, workspace: String?, actor: String) -> Int? {
        if actor.isEmpty { return nil }
        switch scheme {
        case .v2:
            return Int(head64(salt: feature.rawValue, workspace: workspace, actor: actor) % 100_000)
        case .v1:
            // The original gate: int(sha256(key).hexdigest()[:8], 16) % 100 + 1.
            return Int((head64(salt: nil, workspace: workspace, actor: actor) >> 32) % 100) + 1
        }
    }

    /// The threshold `percent` sets for `scheme`: v2 is on iff bucket < threshold; v1 is on iff
    /// bucket <= threshold (whole percents).
    @inlinable
    public static func threshold(scheme: BucketingScheme, percent: RolloutPercent) -> Int {
        switch scheme {
        case .v2: return percent.thousandths
        case .v1: return percent.wholePercent
        }
    }

    /// Whether a bucket (or an empty actor's nil) is inside `percent`.
    @inlinable
    public static func isInside(bucket: Int?, scheme: BucketingScheme, percent: RolloutPercent) -> Bool {
        guard let bucket else { return percent == .full }
        switch scheme {
        case .v2: return bucket < percent.thousandths
        case .v1: return bucket <= percent.wholePercent
        }
    }

    /// The first 8 bytes, big-endian, of SHA-256(`salt:` `workspace:` actor), hashed in
    /// pieces so no joined string is built.
    @usableFromInline
    static func head64(salt: String?, workspace: String?, actor: String) -> UInt64 {
        var actor = actor
        var salt = salt
        var workspace = workspace.flatMap { $0.isEmpty ? nil : $0 }
        // withUTF8 makes the strings contiguous in place (already so for native strings:
        // no copy, no allocation).
        return actor.withUTF8 { actorBytes in
            withOptionalUTF8(&salt) { saltBytes in
                withOptionalUTF8(&workspace) { workspaceBytes in
                    actorBytes.withMemoryRebound(to: CChar.self) { key in
                        // Callers pass a non-empty actor, so the buffer has an address.
                        guard let keyBase = key.baseAddress else { return 0 }
                        return CRolloutCrypto_sha256_head64(
                            saltBytes?.baseAddress, saltBytes?.count ?? 0,
                            workspaceBytes?.baseAddress, workspaceBytes?.count ?? 0,
                            keyBase, key.count)
                    }
                }
            }
        }
    }

    @usableFromInline
    static func withOptionalUTF8<Result>(_ text: inout String?, _ body: (UnsafeBufferPointer<CChar>?) -> Result) -> Result {
        guard var value = text else { return body(nil) }
        defer { text = value }
        return value.withUTF8 { bytes in
            bytes.withMemoryRebound(to: CChar.self) { chars in
                // An empty piece still takes part (with its ':'), so give it a valid pointer.
                chars.baseAddress == nil ? "".withCString { body(UnsafeBufferPointer(start: $0, count: 0)) } : body(chars)
            }
        }
    }
}
