/// The JSON of the evaluation path, by hand: Foundation's JSONDecoder and JSONEncoder cost about
/// 8 and 19 µs a request here (docs/performance.md), more than everything else an evaluation
/// does. Both sides follow RFC 8259 strictly; a test compares them with Foundation's on
/// generated documents.

/// Appends JSON to a byte buffer: strings escaped as RFC 8259 requires (quote, backslash,
/// control characters; `/` left as it is), numbers in their shortest form (`50`, `37.5`).
struct JSONWriter {
    private(set) var bytes: [UInt8] = []

    init(reservingCapacity capacity: Int = 256) { bytes.reserveCapacity(capacity) }

    mutating func raw(_ text: StaticString) {
        text.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    mutating func string(_ text: String) {
        bytes.append(0x22)
        for byte in text.utf8 {
            switch byte {
            case 0x22: bytes += [0x5C, 0x22]
            case 0x5C: bytes += [0x5C, 0x5C]
            case 0x0A: bytes += [0x5C, 0x6E]
            case 0x0D: bytes += [0x5C, 0x72]
            case 0x09: bytes += [0x5C, 0x74]
            case 0x08: bytes += [0x5C, 0x62]
            case 0x0C: bytes += [0x5C, 0x66]
            case 0x00..<0x20:
                let digits = Array("0123456789abcdef".utf8)
                bytes += [0x5C, 0x75, 0x30, 0x30, digits[Int(byte >> 4)], digits[Int(byte & 0xF)]]
            default: bytes.append(byte)
            }
        }
        bytes.append(0x22)
    }

    mutating func number(_ value: Double) {
        if value.isFinite, value == value.rounded(), abs(value) < 1e15 {
            bytes += Array(String(Int64(value)).utf8)
        } else if value.isFinite {
            bytes += Array(value.description.utf8)
        } else {
            raw("null")  // never made: metadata numbers are finite
        }
    }

    mutating func bool(_ value: Bool) { value ? raw("true") : raw("false") }

    /// `"name":`, after a comma unless `first`.
    mutating func key(_ name: StaticString, first: Bool = false) {
        if !first { bytes.append(0x2C) }
        bytes.append(0x22)
        name.withUTF8Buffer { bytes.append(contentsOf: $0) }
        bytes += [0x22, 0x3A]
    }

    mutating func key(_ name: String, first: Bool) {
        if !first { bytes.append(0x2C) }
        string(name)
        bytes.append(0x3A)
    }

    mutating func byte(_ value: UInt8) { bytes.append(value) }
}

/// Reads one JSON document strictly (RFC 8259: no trailing commas, no comments, no bare control
/// characters in strings, valid escapes and UTF-8 and paired surrogates also in the values it
/// skips), keeping only what is asked for. Stricter than Foundation's JSONDecoder, which takes
/// trailing commas and does not check the strings it skips; numbers are checked for their
/// grammar only, so one beyond a Double's range in an ignored attribute is no error.
struct JSONReader {
    /// The document is not JSON.
    struct Malformed: Error {}

    /// A value as the evaluation context sees it: its scalars, and the kind of anything else.
    enum Value: Equatable {
        case string(String)
        case bool(Bool)
        case null
        /// A number, as its literal bytes (`37.125`, `1e2`): a slice of the body, so a number
        /// the evaluation path skips costs no allocation.
        case number(ArraySlice<UInt8>)
        case array
        case object
    }

    private let bytes: [UInt8]
    private var index = 0
    private var depth = 0
    /// Deeper nesting is refused, so a hostile body cannot exhaust the stack.
    static let maximumDepth = 64

    /// A reader of `bytes`; a leading UTF-8 byte order mark is skipped (RFC 8259 §8.1 allows it).
    init(_ bytes: [UInt8]) {
        self.bytes = bytes
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { index = 3 }
    }

    /// Whether only whitespace is left.
    mutating func atEnd() -> Bool {
        skipWhitespace()
        return index == bytes.count
    }

    /// Reads an object's members, handing each name to `member`, which must read or skip its
    /// value. Throws if the next value is not an object.
    mutating func object(_ member: (String, inout JSONReader) throws -> Void) throws {
        skipWhitespace()
        guard peek() == 0x7B else { throw Malformed() }
        try enter()
        index += 1
        skipWhitespace()
        if peek() == 0x7D {
            index += 1
            depth -= 1
            return
        }
        while true {
            skipWhitespace()
            guard peek() == 0x22 else { throw Malformed() }
            let name = try string()
            skipWhitespace()
            guard peek() == 0x3A else { throw Malformed() }
            index += 1
            try member(name, &self)
            skipWhitespace()
            switch peek() {
            case 0x2C: index += 1
            case 0x7D:
                index += 1
                depth -= 1
                return
            default: throw Malformed()
            }
        }
    }

    /// What the next value is; strings, booleans and null are read, anything else skipped.
    mutating func value() throws -> Value {
        skipWhitespace()
        guard let next = peek() else { throw Malformed() }
        switch next {
        case 0x22: return .string(try string())
        case 0x74:
            try literal("true")
            return .bool(true)
        case 0x66:
            try literal("false")
            return .bool(false)
        case 0x6E:
            try literal("null")
            return .null
        case 0x7B:
            try object { _, reader in _ = try reader.value() }
            return .object
        case 0x5B:
            try array()
            return .array
        case 0x2D, 0x30...0x39:
            let start = index
            try number()
            return .number(bytes[start..<index])
        default: throw Malformed()
        }
    }

    /// Whether the next value is an object (without reading it).
    mutating func nextIsObject() -> Bool {
        skipWhitespace()
        return peek() == 0x7B
    }

    private func peek() -> UInt8? { index < bytes.count ? bytes[index] : nil }

    private mutating func enter() throws {
        depth += 1
        guard depth <= Self.maximumDepth else { throw Malformed() }
    }

    private mutating func skipWhitespace() {
        while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x0A || bytes[index] == 0x0D || bytes[index] == 0x09 {
            index += 1
        }
    }

    private mutating func literal(_ text: StaticString) throws {
        let count = text.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw Malformed() }
        let matches = text.withUTF8Buffer { Array($0) == Array(bytes[index..<index + count]) }
        guard matches else { throw Malformed() }
        index += count
    }

    private mutating func array() throws {
        try enter()
        index += 1
        skipWhitespace()
        if peek() == 0x5D {
            index += 1
            depth -= 1
            return
        }
        while true {
            _ = try value()
            skipWhitespace()
            switch peek() {
            case 0x2C: index += 1
            case 0x5D:
                index += 1
                depth -= 1
                return
            default: throw Malformed()
            }
        }
    }

    private mutating func digits() throws {
        let start = index
        while let byte = peek(), (0x30...0x39).contains(byte) { index += 1 }
        guard index > start else { throw Malformed() }
    }

    /// `-?(0|[1-9][0-9]*)(.[0-9]+)?([eE][+-]?[0-9]+)?`
    private mutating func number() throws {
        if peek() == 0x2D { index += 1 }
        if peek() == 0x30 {
            index += 1
        } else {
            try digits()
        }
        if peek() == 0x2E {
            index += 1
            try digits()
        }
        if peek() == 0x65 || peek() == 0x45 {
            index += 1
            if peek() == 0x2B || peek() == 0x2D { index += 1 }
            try digits()
        }
    }

    private mutating func hex4() throws -> UInt32 {
        guard index + 4 <= bytes.count else { throw Malformed() }
        var value: UInt32 = 0
        for byte in bytes[index..<index + 4] {
            let digit: UInt8
            switch byte {
            case 0x30...0x39: digit = byte - 0x30
            case 0x41...0x46: digit = byte - 0x41 + 10
            case 0x61...0x66: digit = byte - 0x61 + 10
            default: throw Malformed()
            }
            value = value << 4 | UInt32(digit)
        }
        index += 4
        return value
    }

    /// A string at `index` (its opening quote), unescaped; invalid UTF-8 is malformed.
    private mutating func string() throws -> String {
        index += 1
        var text: [UInt8] = []
        while true {
            guard let byte = peek() else { throw Malformed() }
            index += 1
            switch byte {
            case 0x22:
                guard let string = String(validating: text, as: UTF8.self) else { throw Malformed() }
                return string
            case 0x00..<0x20: throw Malformed()
            case 0x5C:
                guard let escape = peek() else { throw Malformed() }
                index += 1
                switch escape {
                case 0x22, 0x5C, 0x2F: text.append(escape)
                case 0x62: text.append(0x08)
                case 0x66: text.append(0x0C)
                case 0x6E: text.append(0x0A)
                case 0x72: text.append(0x0D)
                case 0x74: text.append(0x09)
                case 0x75:
                    var scalar = try hex4()
                    if (0xD800..<0xDC00).contains(scalar) {
                        // A high surrogate needs its low one at once.
                        guard peek() == 0x5C, index + 1 < bytes.count, bytes[index + 1] == 0x75 else { throw Malformed() }
                        index += 2
                        let low = try hex4()
                        guard (0xDC00..<0xE000).contains(low) else { throw Malformed() }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00..<0xE000).contains(scalar) {
                        throw Malformed()
                    }
                    guard let unicode = Unicode.Scalar(scalar) else { throw Malformed() }
                    text += Array(String(Character(unicode)).utf8)
                default: throw Malformed()
                }
            default: text.append(byte)
            }
        }
    }
}
