#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

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
        var bytes = [UInt8](repeating: 0, count: 16)
        for i in 0..<6 { bytes[i] = UInt8(truncatingIfNeeded: unixMillis >> (8 * (5 - i))) }
        // arc4random_buf draws from a per-thread ChaCha20 state seeded by the kernel: no system call per id.
        bytes.withUnsafeMutableBytes { arc4random_buf($0.baseAddress! + 6, 10) }
        bytes[6] = 0x70 | (bytes[6] & 0x0f)  // version 7
        bytes[8] = 0x80 | (bytes[8] & 0x3f)  // RFC 9562 variant
        let hex = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        text.reserveCapacity(36)
        for (i, byte) in bytes.enumerated() {
            if i == 4 || i == 6 || i == 8 || i == 10 { text.append(UInt8(ascii: "-")) }
            text.append(hex[Int(byte >> 4)])
            text.append(hex[Int(byte & 0x0f)])
        }
        return EventID(description: String(decoding: text, as: UTF8.self))
    }

    public init(from decoder: any Decoder) throws {
        self.description = try decoder.singleValueContainer().decode(String.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(description)
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
        var seconds = time_t(unixMillis / 1000)
        var parts = tm()
        gmtime_r(&seconds, &parts)
        var text = [UInt8](repeating: 0, count: 24)
        func put(_ value: Int, at offset: Int, width: Int) {
            var rest = value
            for index in stride(from: offset + width - 1, through: offset, by: -1) {
                text[index] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
            }
        }
        put(Int(parts.tm_year) + 1900, at: 0, width: 4)
        text[4] = UInt8(ascii: "-")
        put(Int(parts.tm_mon) + 1, at: 5, width: 2)
        text[7] = UInt8(ascii: "-")
        put(Int(parts.tm_mday), at: 8, width: 2)
        text[10] = UInt8(ascii: "T")
        put(Int(parts.tm_hour), at: 11, width: 2)
        text[13] = UInt8(ascii: ":")
        put(Int(parts.tm_min), at: 14, width: 2)
        text[16] = UInt8(ascii: ":")
        put(Int(parts.tm_sec), at: 17, width: 2)
        text[19] = UInt8(ascii: ".")
        put(Int(unixMillis % 1000), at: 20, width: 3)
        text[23] = UInt8(ascii: "Z")
        return String(decoding: text, as: UTF8.self)
    }
}
