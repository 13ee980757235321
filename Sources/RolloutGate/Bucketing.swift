import CRolloutCrypto

/// The bucketing spec (docs/bucketing.md): which bucket an actor falls in, and whether that
/// bucket is inside a percent. Changing anything here moves users between cohorts: a new
/// formula is a new scheme, never an edit.
public enum Bucketing {
    /// The bucket of an actor: 0..<100_000 for v2, 1...100 for v1. An empty actor id is nil
    /// under v2 (on only at 100%) and the id `anon` under v1. A nil or empty workspace means none.
    @inlinable
    public static func bucket(scheme: BucketingScheme, feature: FeatureName, workspace: String?, actor: String) -> Int? {
        switch scheme {
        case .v2:
            if actor.isEmpty { return nil }
            return Int(head64(salt: feature.rawValue, workspace: workspace, actor: actor) % 100_000)
        case .v1:
            // The original gate: int(sha256(key).hexdigest()[:8], 16) % 100 + 1, where a request
            // without an actor id is the actor `anon` (`<workspace>:anon`); a fleet running both
            // gates must agree on it too.
            return Int((head64(salt: nil, workspace: workspace, actor: actor.isEmpty ? anonymousV1Actor : actor) >> 32) % 100) + 1
        }
    }

    /// The id the original Python gate, and so v1, buckets a request without an actor id as.
    public static let anonymousV1Actor = "anon"

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

    /// The first 8 bytes, big-endian, of SHA-256(`salt:` `workspace:` actor). The pieces are
    /// read in place through their UTF-8 spans: nothing is joined, allocated or retained in
    /// Swift (closures over `withContiguousStorageIfAvailable` retained the strings they
    /// captured, twice per check: docs/performance.md, "The check").
    @usableFromInline
    static func head64(salt: String?, workspace: String?, actor: String) -> UInt64 {
        let key = actor.utf8.span
        return key.withUnsafeBytes { key in
            withOptionalBytes(of: salt) { salt in
                withOptionalBytes(of: workspace?.isEmpty == false ? workspace : nil) { workspace in
                    CRolloutCrypto_sha256_head64(
                        salt?.baseAddress, salt?.count ?? 0, workspace?.baseAddress, workspace?.count ?? 0,
                        key.baseAddress, key.count)
                }
            }
        }
    }

    /// `body` with the bytes of `text` in place, or nil for no text. An empty piece still
    /// takes part with its ':', so it gets a non-null address.
    @inline(__always)
    static func withOptionalBytes<Result>(of text: String?, _ body: (UnsafeRawBufferPointer?) -> Result) -> Result {
        guard let text else { return body(nil) }
        let span = text.utf8.span
        return span.withUnsafeBytes { bytes in
            bytes.baseAddress == nil ? withUnsafeBytes(of: UInt8(0)) { body(UnsafeRawBufferPointer(start: $0.baseAddress, count: 0)) } : body(bytes)
        }
    }
}
