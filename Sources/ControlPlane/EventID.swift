#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// A unique, time-ordered identifier for one action: a UUIDv7 (RFC 9562 §5.7) in its canonical text form.
///
/// The leading 48 bits are the Unix time in milliseconds, so ids sort by creation time, which keeps a spool or
/// an audit log in order; the other 74 bits are random, so a resend is recognisable as the same event.
public struct EventID: Sendable, Hashable, CustomStringConvertible, Codable {
    public let description: String

    public init(description: String) {
        self.description = description
    }

    /// A new id for an event happening at `unixMillis`.
    public static func generate(unixMillis: UInt64 = WallClock.nowMillis()) -> EventID {
        var bytes: (UInt64, UInt64) = (0, 0)
        withUnsafeMutableBytes(of: &bytes) { raw in
            for i in 0..<6 { raw[i] = UInt8(truncatingIfNeeded: unixMillis >> (8 * (5 - i))) }
            randomBytes.fill(UnsafeMutableRawBufferPointer(rebasing: raw[6..<16]))
            raw[6] = 0x70 | (raw[6] & 0x0f)  // version 7
            raw[8] = 0x80 | (raw[8] & 0x3f)  // RFC 9562 variant
        }
        let text = withUnsafeBytes(of: &bytes) { raw in
            String(unsafeUninitializedCapacity: 36) { out in
                var position = 0
                for (i, byte) in raw.enumerated() {
                    if i == 4 || i == 6 || i == 8 || i == 10 {
                        out[position] = UInt8(ascii: "-")
                        position += 1
                    }
                    out[position] = hexDigit(byte >> 4)
                    out[position + 1] = hexDigit(byte & 0x0f)
                    position += 2
                }
                return position
            }
        }
        return EventID(description: text)
    }

    private static func hexDigit(_ value: UInt8) -> UInt8 {
        value < 10 ? UInt8(ascii: "0") + value : UInt8(ascii: "a") + value - 10
    }

    /// Random bytes for ids, drawn from the kernel 4 KiB at a time: glibc's `arc4random_buf` makes one
    /// `getrandom` system call per call, which was one per reported request.
    private static let randomBytes = RandomPool()

    public init(from decoder: any Decoder) throws {
        self.description = try decoder.singleValueContainer().decode(String.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
    }
}

/// Kernel randomness handed out in small pieces: one `getrandom` per 4 KiB instead of one per piece. Every
/// byte is used once.
final class RandomPool: Sendable {
    private struct State {
        var bytes = [UInt8](repeating: 0, count: 4096)
        var used = 4096
    }

    private let state = Mutex(State())

    func fill(_ out: UnsafeMutableRawBufferPointer) {
        state.withLock { state in
            if state.used + out.count > state.bytes.count {
                state.bytes.withUnsafeMutableBytes { arc4random_buf($0.baseAddress!, $0.count) }
                state.used = 0
            }
            state.bytes.withUnsafeBytes { pool in
                out.copyMemory(from: UnsafeRawBufferPointer(rebasing: pool[state.used..<state.used + out.count]))
            }
            state.used += out.count
        }
    }
}

/// Wall-clock time for records: Unix milliseconds and their RFC 3339 text form in UTC.
public enum WallClock {
    public static func nowMillis() -> UInt64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return UInt64(spec.tv_sec) * 1000 + UInt64(spec.tv_nsec) / 1_000_000
    }

    /// `2026-11-26T18:58:28.123Z` for `unixMillis`.
    public static func rfc3339(unixMillis: UInt64) -> String {
        // Computed here rather than with gmtime_r, which takes glibc's time zone lock on every call (one per
        // reported request).
        let seconds = unixMillis / 1000
        let (year, month, day) = civilDate(daysSinceEpoch: Int(seconds / 86_400))
        let secondOfDay = Int(seconds % 86_400)
        return String(unsafeUninitializedCapacity: 24) { text in
            func put(_ value: Int, at offset: Int, width: Int) {
                var rest = value
                for index in stride(from: offset + width - 1, through: offset, by: -1) {
                    text[index] = UInt8(ascii: "0") + UInt8(rest % 10)
                    rest /= 10
                }
            }
            put(year, at: 0, width: 4)
            text[4] = UInt8(ascii: "-")
            put(month, at: 5, width: 2)
            text[7] = UInt8(ascii: "-")
            put(day, at: 8, width: 2)
            text[10] = UInt8(ascii: "T")
            put(secondOfDay / 3600, at: 11, width: 2)
            text[13] = UInt8(ascii: ":")
            put(secondOfDay / 60 % 60, at: 14, width: 2)
            text[16] = UInt8(ascii: ":")
            put(secondOfDay % 60, at: 17, width: 2)
            text[19] = UInt8(ascii: ".")
            put(Int(unixMillis % 1000), at: 20, width: 3)
            text[23] = UInt8(ascii: "Z")
            return 24
        }
    }

    /// The proleptic Gregorian date of a day counted from 1970-01-01 (H. Hinnant's `civil_from_days`).
    static func civilDate(daysSinceEpoch days: Int) -> (year: Int, month: Int, day: Int) {
        let shifted = days + 719_468  // days since 0000-03-01
        let era = (shifted >= 0 ? shifted : shifted - 146_096) / 146_097
        let dayOfEra = shifted - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let monthIndex = (5 * dayOfYear + 2) / 153  // March = 0
        let day = dayOfYear - (153 * monthIndex + 2) / 5 + 1
        let month = monthIndex < 10 ? monthIndex + 3 : monthIndex - 9
        return (yearOfEra + era * 400 + (month <= 2 ? 1 : 0), month, day)
    }
}
