#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A list of host names and `*.` suffix patterns, as `KAIZEN_INSPECT_HOSTS` and `KAIZEN_PASSTHROUGH_HOSTS`
/// take them: `api.example.com, *.internal.example` (comma-separated, case-insensitive, a trailing dot
/// ignored). `*.example.com` matches every name below example.com (`a.example.com`, `a.b.example.com`),
/// not example.com itself; list both to cover both.
public struct HostPatterns: Sendable, Hashable, CustomStringConvertible {
    private var exact: Set<String> = []
    /// Each suffix with its leading dot: `.example.com`.
    private var suffixes: [String] = []

    public struct ParseError: Error, Sendable, Hashable, CustomStringConvertible {
        public var entry: String
        public var description: String {
            "\"\(entry)\" is not a host name or a *.suffix pattern"
        }
    }

    public init(parsing text: String) throws(ParseError) {
        for raw in text.split(separator: ",") {
            var entry = raw.trimmingWhitespace().lowercased()
            if entry.hasSuffix(".") { entry.removeLast() }
            guard !entry.isEmpty else { continue }
            if entry.hasPrefix("*.") {
                let suffix = String(entry.dropFirst(1))
                guard Self.isHostName(String(suffix.dropFirst())) else { throw ParseError(entry: String(raw)) }
                suffixes.append(suffix)
            } else {
                guard Self.isHostName(entry) else { throw ParseError(entry: String(raw)) }
                // An IPv6 address is kept in the one form destinations are reported in (RFC 5952, no brackets).
                exact.insert(Self.canonicalIPv6(entry) ?? entry)
            }
        }
    }

    public var isEmpty: Bool { exact.isEmpty && suffixes.isEmpty }

    /// No name at all: as `KAIZEN_INSPECT_HOSTS`, inspect nothing.
    public static let none = HostPatterns()

    private init() {}

    public func matches(_ host: String) -> Bool {
        var name = host.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        if exact.contains(name) { return true }
        if name.contains(":"), let address = Self.canonicalIPv6(name) { return exact.contains(address) }
        return suffixes.contains { name.hasSuffix($0) && name.count > $0.count }
    }

    public var description: String {
        (exact.sorted() + suffixes.map { "*" + $0 }).joined(separator: ",")
    }

    /// An IPv6 address (brackets allowed) as RFC 5952 writes it (`2001:0db8::0001` → `2001:db8::1`); nil for other text.
    static func canonicalIPv6(_ text: String) -> String? {
        let bare = text.hasPrefix("[") && text.hasSuffix("]") ? String(text.dropFirst().dropLast()) : text
        guard bare.contains(":") else { return nil }
        var address = in6_addr()
        guard inet_pton(AF_INET6, bare, &address) == 1 else { return nil }
        var buffer = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
        guard inet_ntop(AF_INET6, &address, &buffer, socklen_t(buffer.count)) != nil else { return nil }
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Letters, digits, hyphens, underscores and dots (IP addresses pass too), no empty label.
    static func isHostName(_ text: String) -> Bool {
        guard !text.isEmpty, text.utf8.count <= 253 else { return false }
        if text.hasPrefix("[") && text.hasSuffix("]") { return text.count > 2 }  // [IPv6]
        if text.contains(":") { return text.allSatisfy { $0.isHexDigit || $0 == ":" || $0 == "." } }
        return text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            !label.isEmpty && label.count <= 63
                && label.unicodeScalars.allSatisfy { scalar in
                    (scalar.properties.isASCIIHexDigit || ("g"..."z").contains(scalar) || scalar == "-" || scalar == "_")
                        || ("0"..."9").contains(scalar)
                }
        }
    }
}

extension Substring {
    func trimmingWhitespace() -> String {
        String(drop { $0.isWhitespace }.reversed().drop { $0.isWhitespace }.reversed())
    }
}
