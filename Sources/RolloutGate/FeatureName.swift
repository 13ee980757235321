/// A feature name: `[a-z0-9][a-z0-9_.-]{0,63}`. Nothing else can address keys, so a name can
/// never reach outside its own `flags:<name>:` keys.
///
/// The throwing initializer refuses a bad name. A string literal cannot throw, so a bad literal
/// (`"Google"`) makes a name that is not ``isValid``: the gate answers off for it with reason
/// ``Decision/Reason/invalidName`` and never reads or builds a key from it.
public struct FeatureName: Hashable, Sendable, Comparable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The name as written.
    public let rawValue: String
    // True when the throwing initializer checked the name; false for a literal, checked only
    // when asked (`isValid`). A check by name never asks when the feature is found: the
    // snapshot's name table holds only valid names (NameTable), so a literal written in a
    // service's hot path costs nothing to make. Validity follows from `rawValue` alone, which
    // is why equality and hashing use only it.
    @usableFromInline let isCheckedValid: Bool

    /// Whether the name follows the rule; false only for a bad string literal.
    public var isValid: Bool { isCheckedValid || Self.validationError(rawValue) == nil }

    /// Validates `text`; the error says what is wrong with it. Allocation-free when valid.
    public init(_ text: String) throws(KeyspaceError) {
        if let error = Self.validationError(text) { throw error }
        rawValue = text
        isCheckedValid = true
    }

    /// What is wrong with `text` as a feature name, or nil when it is a valid one.
    public static func validationError(_ text: String) -> KeyspaceError? {
        // Reads the bytes in place (a name is a small string: no copy); first bad byte wins.
        let verdict = text.utf8.withContiguousStorageIfAvailable(Self.firstInvalid) ?? Self.firstInvalid(Array(text.utf8))
        guard let (index, byte) = verdict else { return nil }
        return Self.invalid(text, byte: byte, at: index)
    }

    /// The position and byte of the first character a name may not have there: `nil` byte
    /// for "too long", position 0 and `nil` for "empty"; nil when the name is valid.
    private static func firstInvalid(_ bytes: some Collection<UInt8>) -> (Int, UInt8?)? {
        var index = 0
        for byte in bytes {
            let isLowerAlphanumeric = (byte &- 0x61) < 26 || (byte &- 0x30) < 10
            if !(isLowerAlphanumeric || (index > 0 && (byte == 0x5f || byte == 0x2e || byte == 0x2d))) { return (index, byte) }
            index += 1
        }
        if index == 0 { return (0, nil) }
        if index > 64 { return (index, nil) }
        return nil
    }

    private static func invalid(_ text: String, byte: UInt8?, at index: Int) -> KeyspaceError {
        if byte == nil && index == 0 {
            return KeyspaceError("A feature name cannot be empty. Use lower-case letters, digits, '_', '.' and '-'.")
        }
        guard let byte else {
            return KeyspaceError("The feature name '\(text.prefix(80))' is \(text.utf8.count) characters long; at most 64 are allowed.")
        }
        if index == 0 {
            return KeyspaceError("The feature name '\(text)' must start with a lower-case letter or a digit.")
        }
        let shown = byte < 0x80 ? "'\(Character(Unicode.Scalar(byte)))'" : "a non-ASCII character"
        return KeyspaceError(
            "The feature name '\(text)' contains \(shown); only lower-case letters, digits, '_', '.' and '-' are allowed.")
    }

    /// A name written in the code. An invalid literal never traps: it makes a name that is
    /// not ``isValid``, which every check answers off (``Decision/Reason/invalidName``).
    @inlinable
    public init(stringLiteral value: String) {
        rawValue = value
        isCheckedValid = false
    }

    /// The process-level kill switch variable for this feature: `ROLLOUT_<FEATURE>_ENABLED`,
    /// upper-cased, with `-` and `.` written as `_`.
    public var overrideVariable: String {
        let upper = rawValue.uppercased().map { $0 == "-" || $0 == "." ? "_" : $0 }
        return "ROLLOUT_\(String(upper))_ENABLED"
    }

    /// The original Python gate's percent variable for this feature, read when
    /// `flags:<f>:rollout_percent` is absent: `FLAGS_<FEATURE>_ROLLOUT_PERCENT`, the name
    /// upper-cased and nothing else (`new-checkout` → `FLAGS_NEW-CHECKOUT_ROLLOUT_PERCENT`,
    /// as Python's `feature.upper()` spells it).
    public var fallbackPercentVariable: String {
        "FLAGS_\(rawValue.uppercased())_ROLLOUT_PERCENT"
    }

    public var description: String { rawValue }

    public static func == (lhs: FeatureName, rhs: FeatureName) -> Bool { lhs.rawValue == rhs.rawValue }

    public func hash(into hasher: inout Hasher) { hasher.combine(rawValue) }

    public static func < (lhs: FeatureName, rhs: FeatureName) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// A value or name the keyspace contract refuses, with the key at fault where there is one.
public struct KeyspaceError: Error, Sendable, Hashable, CustomStringConvertible {
    /// What is wrong and what would be right.
    public let message: String
    /// The Redis key holding the bad value, when the error is about one.
    public let key: String?

    public init(_ message: String, key: String? = nil) {
        self.message = message
        self.key = key
    }

    public var description: String { message }
}
