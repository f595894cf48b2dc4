import AccessControl
import Foundation

/// Where a client wants to go: a host (name or IP literal) and a port.
public struct Destination: Sendable, Hashable, CustomStringConvertible {
    /// A lowercased DNS name, an IPv4 literal, or an IPv6 literal without brackets.
    public var host: String
    public var port: Int
    /// Whether `host` is an IP literal (then no name is resolved).
    public var isIPLiteral: Bool

    public init(host: String, port: Int, isIPLiteral: Bool) {
        self.host = host
        self.port = port
        self.isIPLiteral = isIPLiteral
    }

    /// `host:port`, with an IPv6 host in brackets: the action's `target`.
    public var description: String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    /// The `Host` header value for this destination (the port is omitted when it is the default).
    func hostHeader(defaultPort: Int) -> String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == defaultPort ? name : "\(name):\(port)"
    }

    /// Whether a `Host` (or `:authority`) value is `host[:port]` as RFC 9110 §7.2 has it, with a host the proxy can
    /// judge: a DNS name (letters, digits, `-`, `_`, labels of 1–63, at most one trailing dot), an IPv4 address in
    /// its four-decimal form, or a bracketed IPv6 address. Anything else (`blocked%2eexample`, `blocked.example/x`,
    /// `a, b`, `0x7f.1`, a full-width dot) is refused: a lenient upstream or gateway could read a name in it that
    /// the policy never saw.
    static func isValidHostField(_ raw: String) -> Bool {
        var value = Substring(raw)
        while let first = value.first, first == " " || first == "\t" { value = value.dropFirst() }
        while let last = value.last, last == " " || last == "\t" { value = value.dropLast() }
        func isPort(_ text: Substring) -> Bool { text.count <= 5 && text.allSatisfy { $0.isASCII && $0.isNumber } }
        if value.first == "[" {
            guard let close = value.firstIndex(of: "]") else { return false }
            let inner = value[value.index(after: value.startIndex)..<close]
            guard inner.contains(":"), let address = IPAddress(String(inner)), !address.isIPv4 else { return false }
            let after = value[value.index(after: close)...]
            return after.isEmpty || (after.first == ":" && isPort(after.dropFirst()))
        }
        let parts = value.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count <= 2, parts.count == 1 || isPort(parts[1]) else { return false }
        var host = parts[0].lowercased()
        if host.count > 1, host.hasSuffix(".") { host.removeLast() }
        return RequestTarget.isIPv4Literal(Substring(host)) || RequestTarget.isValidHostName(host)
    }

    /// The host of a `Host` header value: `example.com:8443` → `example.com`, `[2001:db8::1]:443` →
    /// `2001:db8::1`, lowercased, without surrounding whitespace or userinfo; nil for none or an empty one.
    static func hostWithoutPort(_ value: String?) -> String? {
        // Called for every inspected request: the usual value (printable ASCII, no spaces) is read as bytes.
        guard let value else { return nil }
        if case .host(let host)? = value.utf8.withContiguousStorageIfAvailable({ Self.plainHost(value, bytes: $0) }) {
            return host
        }
        var text = Substring(value)
        while let first = text.first, first.isWhitespace { text = text.dropFirst() }
        while let last = text.last, last.isWhitespace { text = text.dropLast() }
        // Userinfo has no place in a Host or :authority (RFC 9113 §8.3.1); never kept, never reported.
        if let at = text.lastIndex(of: "@") { text = text[text.index(after: at)...] }
        if text.first == "[" {
            guard let close = text.firstIndex(of: "]") else { return nil }
            text = text[text.index(after: text.startIndex)..<close]
        } else if let colon = text.lastIndex(of: ":"), text.firstIndex(of: ":") == colon {
            text = text[..<colon]
        }
        return text.isEmpty ? nil : text.lowercased()
    }

    private enum PlainHost {
        case host(String?)
        /// Not printable ASCII without whitespace: read by Characters.
        case notPlain
    }

    /// `hostWithoutPort` for a value of printable ASCII without whitespace, read as bytes; the value itself is
    /// returned when it is already the host.
    private static func plainHost(_ value: String, bytes: UnsafeBufferPointer<UInt8>) -> PlainHost {
        var uppercase = false
        for byte in bytes {
            guard byte > 0x20 && byte < 0x7F else { return .notPlain }
            if byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") { uppercase = true }
        }
        var start = bytes.startIndex
        var end = bytes.endIndex
        if let at = bytes.lastIndex(of: UInt8(ascii: "@")) { start = at + 1 }
        if start < end && bytes[start] == UInt8(ascii: "[") {
            guard let close = bytes[start...].firstIndex(of: UInt8(ascii: "]")) else { return .host(nil) }
            start += 1
            end = close
        } else if let colon = bytes[start...].lastIndex(of: UInt8(ascii: ":")),
            bytes[start...].firstIndex(of: UInt8(ascii: ":")) == colon
        {
            end = colon
        }
        guard start < end else { return .host(nil) }
        if start == bytes.startIndex && end == bytes.endIndex && !uppercase { return .host(value) }
        let host = String(unsafeUninitializedCapacity: end - start) { out in
            for (offset, byte) in bytes[start..<end].enumerated() {
                out[offset] = byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") ? byte | 0x20 : byte
            }
            return end - start
        }
        return .host(host)
    }
}
