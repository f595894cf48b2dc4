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

    /// The host of a `Host` header value: `example.com:8443` → `example.com`, `[2001:db8::1]:443` →
    /// `2001:db8::1`, lowercased, without surrounding whitespace or userinfo; nil for none or an empty one.
    static func hostWithoutPort(_ value: String?) -> String? {
        // Called for every inspected request: plain Substring work, no Foundation trimming.
        guard let value else { return nil }
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
}
