#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// An IPv4 or IPv6 address as its bytes (4 or 16), for range checks.
public struct IPAddress: Sendable, Hashable, CustomStringConvertible {
    public let bytes: [UInt8]

    public var isIPv4: Bool { bytes.count == 4 }

    public init?(bytes: [UInt8]) {
        guard bytes.count == 4 || bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    /// Parses `192.0.2.1` or `2001:db8::1` (brackets and a zone are not accepted).
    public init?(_ text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self.bytes = withUnsafeBytes(of: &v4) { Array($0) }
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            self.bytes = withUnsafeBytes(of: &v6) { Array($0) }
            return
        }
        return nil
    }

    public var description: String {
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        let family = isIPv4 ? AF_INET : AF_INET6
        return bytes.withUnsafeBytes { raw in
            guard inet_ntop(family, raw.baseAddress, &buffer, socklen_t(buffer.count)) != nil else { return "?" }
            return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
    }

    /// The IPv4 address an IPv6 address carries, and in which form: IPv4-mapped (`::ffff:a.b.c.d`),
    /// IPv4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`), 6to4 (`2002:AABB:CCDD::`), Teredo (the client's
    /// address, inverted, in the last 32 bits; the server's in bits 32–63). Nil for IPv4 and other IPv6.
    public var embeddedIPv4: [(form: String, address: IPAddress)] {
        guard bytes.count == 16 else { return [] }
        func v4(_ slice: ArraySlice<UInt8>) -> IPAddress { IPAddress(bytes: Array(slice))! }
        let b = bytes
        if b[0..<10].allSatisfy({ $0 == 0 }) && b[10] == 0xff && b[11] == 0xff {
            return [("IPv4-mapped", v4(b[12..<16]))]
        }
        if b[0..<12].allSatisfy({ $0 == 0 }) && !(b[12..<15].allSatisfy { $0 == 0 }) {
            return [("IPv4-compatible", v4(b[12..<16]))]
        }
        if b[0..<12] == [0x00, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0] {
            return [("NAT64", v4(b[12..<16]))]
        }
        if b[0] == 0x20 && b[1] == 0x02 {
            return [("6to4", v4(b[2..<6]))]
        }
        if b[0] == 0x20 && b[1] == 0x01 && b[2] == 0 && b[3] == 0 {
            let client = IPAddress(bytes: b[12..<16].map { ~$0 })!
            return [("Teredo", client), ("Teredo server", v4(b[4..<8]))]
        }
        return []
    }
}

/// An address range: `10.0.0.0/8`, `fe80::/10`, or one address (`127.0.0.1`, `::1`).
public struct CIDR: Sendable, Hashable, CustomStringConvertible {
    public let network: IPAddress
    public let prefixLength: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let address = IPAddress(String(parts[0])) else { return nil }
        let maximum = address.bytes.count * 8
        var length = maximum
        if parts.count == 2 {
            guard let parsed = Int(parts[1]), (0...maximum).contains(parsed), parts[1].allSatisfy(\.isNumber) else {
                return nil
            }
            length = parsed
        }
        self.init(network: address, prefixLength: length)
    }

    public init(network: IPAddress, prefixLength: Int) {
        // Keep only the prefix bits, so equal ranges compare equal whatever host bits were written.
        var bytes = network.bytes
        for index in bytes.indices {
            let bitsBefore = index * 8
            if bitsBefore >= prefixLength {
                bytes[index] = 0
            } else if bitsBefore + 8 > prefixLength {
                bytes[index] &= UInt8(truncatingIfNeeded: 0xff << (8 - (prefixLength - bitsBefore)))
            }
        }
        self.network = IPAddress(bytes: bytes)!
        self.prefixLength = prefixLength
    }

    public func contains(_ address: IPAddress) -> Bool {
        guard address.bytes.count == network.bytes.count else {
            // An IPv4-mapped range (`::ffff:127.0.0.0/104`) holds the IPv4 addresses it maps: the destination
            // 127.0.0.2 is the address [::ffff:127.0.0.2] names, and a rule written either way must catch both.
            guard address.isIPv4, prefixLength >= 96, network.bytes.prefix(12).elementsEqual(Self.mappedPrefix) else {
                return false
            }
            return contains(IPAddress(bytes: Self.mappedPrefix + address.bytes)!)
        }
        var remaining = prefixLength
        for index in network.bytes.indices where remaining > 0 {
            let bits = min(8, remaining)
            let mask = UInt8(truncatingIfNeeded: 0xff << (8 - bits))
            if address.bytes[index] & mask != network.bytes[index] { return false }
            remaining -= bits
        }
        return true
    }

    public var description: String { "\(network)/\(prefixLength)" }

    /// The first 96 bits of an IPv4-mapped IPv6 address (RFC 4291 §2.5.5.2).
    private static let mappedPrefix: [UInt8] = Array(repeating: 0, count: 10) + [0xff, 0xff]

    /// Parses a comma-separated list; the entries that are not ranges are returned apart.
    public static func parseList(_ text: String) -> (ranges: [CIDR], invalid: [String]) {
        var ranges: [CIDR] = []
        var invalid: [String] = []
        for entry in text.split(separator: ",") {
            let trimmed = entry.trimmingCharacters(in: .whitespaces)
            guard !trimmed.isEmpty else { continue }
            let unbracketed = trimmed.hasPrefix("[") ? trimmed.replacingOccurrences(of: "[", with: "").replacingOccurrences(of: "]", with: "") : trimmed
            if let range = CIDR(unbracketed) { ranges.append(range) } else { invalid.append(trimmed) }
        }
        return (ranges, invalid)
    }
}

