#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import RolloutRedis

/// A rollout percentage from 0 to 100 with at most three decimals, held exactly as
/// thousandths of a percent (0...100_000), so `round(percent × 1000)` needs no floating point.
public struct RolloutPercent: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// The percent in thousandths: 10% is 10_000, 0.125% is 125.
    public let thousandths: Int

    /// 0%.
    public static let zero = RolloutPercent(uncheckedThousandths: 0)
    /// 100%.
    public static let full = RolloutPercent(uncheckedThousandths: 100_000)

    private init(uncheckedThousandths: Int) { thousandths = uncheckedThousandths }

    /// A percent from thousandths; nil outside 0...100_000.
    public init?(thousandths: Int) {
        guard (0...100_000).contains(thousandths) else { return nil }
        self.thousandths = thousandths
    }

    /// Parses the keyspace's form: digits, optionally a point and one to three digits
    /// ("10", "0.5", "37.125"), from 0 to 100; surrounding spaces are ignored. Anything
    /// else ("fifty", "150", "-1", "1e2", "10%") is refused, never guessed.
    public init?(parsing text: some StringProtocol) {
        let trimmed = text.trimmingSpaces()
        let parts = trimmed.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        guard let whole = parts.first, !whole.isEmpty, whole.count <= 3, whole.allSatisfy(\.isASCIIDigit),
            let wholeValue = Int(whole)
        else { return nil }
        var fraction = 0
        if parts.count == 2 {
            let digits = parts[1]
            guard (1...3).contains(digits.count), digits.allSatisfy(\.isASCIIDigit), let value = Int(digits) else { return nil }
            fraction = value * [1, 100, 10, 1][digits.count]
        }
        let total = wholeValue * 1000 + fraction
        guard total <= 100_000 else { return nil }
        thousandths = total
    }

    /// The whole percent, rounded down (v1 bucketing uses whole percents only).
    public var wholePercent: Int { thousandths / 1000 }

    /// The shortest exact text: "10", "0.5", "37.125".
    public var description: String {
        let whole = thousandths / 1000
        var fraction = thousandths % 1000
        guard fraction != 0 else { return String(whole) }
        var digits = 3
        while fraction % 10 == 0 {
            fraction /= 10
            digits -= 1
        }
        let padded = String(fraction)
        return "\(whole)." + String(repeating: "0", count: digits - padded.count) + padded
    }

    public static func < (lhs: RolloutPercent, rhs: RolloutPercent) -> Bool { lhs.thousandths < rhs.thousandths }
}

extension Character {
    var isASCIIDigit: Bool { ("0"..."9").contains(self) }
}

/// A UTC instant with microsecond precision, in the keyspace's ISO-8601 form.
public struct Timestamp: Hashable, Sendable, Comparable, CustomStringConvertible {
    /// Microseconds since 1970-01-01T00:00:00Z.
    public let microsecondsSinceEpoch: Int64

    /// An instant from microseconds since the epoch.
    public init(microsecondsSinceEpoch: Int64) {
        self.microsecondsSinceEpoch = microsecondsSinceEpoch
    }

    /// Parses `2025-10-08T15:30:00.123456+00:00`, `2025-10-08T15:30:00Z` and other offsets
    /// (`+02:00`), with zero to nine fraction digits (kept to the microsecond). A time without
    /// a zone (`2025-10-08T15:30:00`) is UTC, as the original Python controller read it.
    public init?(parsing text: some StringProtocol) {
        let bytes = Array(text.trimmingSpaces().utf8)
        var index = 0
        func number(_ count: Int) -> Int? {
            guard index + count <= bytes.count else { return nil }
            var value = 0
            for byte in bytes[index..<index + count] {
                guard (48...57).contains(byte) else { return nil }
                value = value * 10 + Int(byte - 48)
            }
            index += count
            return value
        }
        func expect(_ ascii: Character) -> Bool {
            guard index < bytes.count, bytes[index] == ascii.asciiValue else { return false }
            index += 1
            return true
        }
        guard let year = number(4), expect("-"), let month = number(2), expect("-"), let day = number(2),
            index < bytes.count, bytes[index] == UInt8(ascii: "T") || bytes[index] == UInt8(ascii: " ")
        else { return nil }
        index += 1
        guard let hour = number(2), expect(":"), let minute = number(2), expect(":"), let second = number(2),
            (1...12).contains(month), (1...Timestamp.daysIn(month: month, year: year)).contains(day), hour < 24, minute < 60,
            second < 61
        else { return nil }
        var micros = 0
        if expect(".") {
            var digits = 0
            while index < bytes.count, (48...57).contains(bytes[index]) {
                if digits < 6 { micros = micros * 10 + Int(bytes[index] - 48) }
                digits += 1
                index += 1
            }
            guard digits > 0 else { return nil }
            if digits < 6 {
                for _ in digits..<6 { micros *= 10 }
            }
        }
        var offsetSeconds = 0
        if expect("Z") || expect("z") {
        } else if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") {
            let sign = bytes[index] == UInt8(ascii: "-") ? -1 : 1
            index += 1
            guard let offsetHours = number(2), expect(":"), let offsetMinutes = number(2), offsetHours < 24, offsetMinutes < 60 else {
                return nil
            }
            offsetSeconds = sign * (offsetHours * 3600 + offsetMinutes * 60)
        }
        // Otherwise no zone: UTC. The original Python system wrote and read naive
        // `datetime.utcnow().isoformat()` values; a fleet migrating from it still has them.
        guard index == bytes.count else { return nil }
        let days = Timestamp.daysFromCivil(year: year, month: month, day: day)
        let seconds = Int64(days) * 86_400 + Int64(hour * 3600 + minute * 60 + second) - Int64(offsetSeconds)
        microsecondsSinceEpoch = seconds * 1_000_000 + Int64(micros)
    }

    /// The keyspace's written form, `2025-10-08T15:30:00.123456+00:00` (what the original
    /// Python controller's `datetime.isoformat()` wrote).
    public var description: String {
        let (seconds, micros) = microsecondsSinceEpoch.quotientAndRemainderFlooring(dividingBy: 1_000_000)
        let (days, secondOfDay) = seconds.quotientAndRemainderFlooring(dividingBy: 86_400)
        let (year, month, day) = Timestamp.civilFromDays(Int(days))
        func pad(_ value: Int, _ width: Int) -> String {
            let text = String(value)
            return String(repeating: "0", count: max(0, width - text.count)) + text
        }
        let hour = Int(secondOfDay / 3600)
        let minute = Int(secondOfDay % 3600 / 60)
        let second = Int(secondOfDay % 60)
        return "\(pad(year, 4))-\(pad(month, 2))-\(pad(day, 2))T\(pad(hour, 2)):\(pad(minute, 2)):\(pad(second, 2)).\(pad(Int(micros), 6))+00:00"
    }

    /// The audit log's form, to the second: `2025-10-08T15:00:00Z`.
    public var secondsDescription: String {
        String(description.prefix(19)) + "Z"
    }

    public static func < (lhs: Timestamp, rhs: Timestamp) -> Bool { lhs.microsecondsSinceEpoch < rhs.microsecondsSinceEpoch }

    /// The time between two instants.
    public func duration(since earlier: Timestamp) -> Duration {
        .microseconds(microsecondsSinceEpoch - earlier.microsecondsSinceEpoch)
    }

    /// This instant moved by `duration`.
    public func advanced(by duration: Duration) -> Timestamp {
        let (seconds, attoseconds) = duration.components
        return Timestamp(microsecondsSinceEpoch: microsecondsSinceEpoch + seconds * 1_000_000 + attoseconds / 1_000_000_000_000)
    }

    private static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    // Howard Hinnant's days_from_civil / civil_from_days (proleptic Gregorian calendar).
    private static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month + (month > 2 ? -3 : 9)) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    private static func civilFromDays(_ days: Int) -> (Int, Int, Int) {
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp + (mp < 10 ? 3 : -9)
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}

extension Int64 {
    fileprivate func quotientAndRemainderFlooring(dividingBy divisor: Int64) -> (Int64, Int64) {
        var (quotient, remainder) = quotientAndRemainder(dividingBy: divisor)
        if remainder < 0 {
            quotient -= 1
            remainder += divisor
        }
        return (quotient, remainder)
    }
}

/// A duration as people write it: 4m30s, 1h, 15m, and 300ms or 1s250ms below a minute.
public func formatDuration(_ duration: Duration) -> String {
    var seconds = duration.components.seconds
    let milliseconds = duration.components.attoseconds / 1_000_000_000_000_000
    if seconds <= 0 { return milliseconds > 0 && seconds == 0 ? "\(milliseconds)ms" : "0s" }
    if seconds < 60 && milliseconds > 0 { return "\(seconds)s\(milliseconds)ms" }
    var text = ""
    for (unit, size) in [("d", Int64(86_400)), ("h", 3600), ("m", 60)] where seconds >= size {
        text += "\(seconds / size)\(unit)"
        seconds %= size
    }
    if seconds > 0 || text.isEmpty { text += "\(seconds)s" }
    return text
}

extension Duration {
    /// The duration in whole nanoseconds (rounded toward zero), saturating at Int64's range.
    public var wholeNanoseconds: Int64 {
        let (seconds, attoseconds) = components
        let (product, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        if overflow { return seconds < 0 ? .min : .max }
        return product.addingReportingOverflow(attoseconds / 1_000_000_000).partialValue
    }

    /// The duration in seconds, as a Double (for metrics and rates).
    public var inSeconds: Double {
        Double(components.seconds) + Double(components.attoseconds) / 1e18
    }
}

extension Timestamp {
    /// The current wall-clock time.
    @Sendable
    public static func now() -> Timestamp {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Timestamp(microsecondsSinceEpoch: Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1000)
    }
}
