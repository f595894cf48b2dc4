import AccessControl

/// Parses the request targets a forward proxy accepts (RFC 9112 §3.2): the authority form of `CONNECT`
/// (`host:port`, `[v6]:port`) and the absolute form of plain-HTTP requests (`http://host[:port]/path`).
public enum RequestTarget {
    /// Why a request target was refused; the text goes into the 400 response body and the log.
    public struct Invalid: Error, Sendable, Hashable, CustomStringConvertible {
        public var description: String
        init(_ description: String) { self.description = description }
    }

    private static let maxHostLength = 253
    private static let maxLabelLength = 63

    /// `CONNECT` authority: a host and a mandatory port.
    public static func parseAuthority(_ text: String) -> Result<Destination, Invalid> {
        guard !text.isEmpty else { return .failure(Invalid("empty CONNECT target")) }
        guard !text.contains("@") else { return .failure(Invalid("CONNECT target must not contain user information")) }
        guard let split = splitHostPort(Substring(text)) else {
            return .failure(Invalid("CONNECT target must be host:port"))
        }
        guard let portText = split.port, !portText.isEmpty else {
            return .failure(Invalid("CONNECT target has no port"))
        }
        return destination(host: split.host, bracketed: split.bracketed, portText: portText, defaultPort: nil)
    }

    /// An absolute-form URI: the destination and the origin-form target (path and query) to send upstream.
    public static func parseAbsoluteURI(_ uri: String) -> Result<(Destination, originForm: String), Invalid> {
        let utf8 = uri.utf8
        let scheme = "http://".utf8
        guard utf8.count >= scheme.count,
            zip(utf8, scheme).allSatisfy({ $0 == $1 || ($0 >= 0x41 && $0 <= 0x5a && $0 | 0x20 == $1) })
        else {
            if uri.hasPrefix("/") || uri == "*" {
                return .failure(Invalid("this is a proxy: send the full URL (GET http://host/path), or CONNECT for https"))
            }
            if let colon = uri.firstIndex(of: ":"), uri[colon...].hasPrefix("://") {
                let name = uri[uri.startIndex..<colon].prefix(16).lowercased()
                return .failure(Invalid("scheme \(name) is not supported: use http:// URLs, or CONNECT for https"))
            }
            return .failure(Invalid("request target is not an absolute http:// URL"))
        }
        let rest = Substring(uri).dropFirst(7)
        let authorityEnd =
            rest.utf8.firstIndex(where: { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") })
            ?? rest.endIndex
        let authority = rest[rest.startIndex..<authorityEnd]
        guard !authority.utf8.contains(UInt8(ascii: "@")) else {
            return .failure(Invalid("URLs with user information are refused: send credentials in a header"))
        }
        guard let split = splitHostPort(authority) else {
            return .failure(Invalid("URL has no valid host"))
        }
        let parsed = destination(host: split.host, bracketed: split.bracketed, portText: split.port, defaultPort: 80)
        switch parsed {
        case .failure(let error):
            return .failure(error)
        case .success(let destination):
            var target = rest[authorityEnd...]
            if let hash = target.utf8.firstIndex(of: UInt8(ascii: "#")) { target = target[target.startIndex..<hash] }
            if target.first == "/" { return .success((destination, String(target))) }
            return .success((destination, "/" + target))
        }
    }

    /// Splits `host[:port]` / `[v6][:port]`; `nil` when the brackets are unbalanced or the host is empty.
    private static func splitHostPort(_ text: Substring) -> (host: Substring, bracketed: Bool, port: Substring?)? {
        let utf8 = text.utf8
        if utf8.first == UInt8(ascii: "[") {
            guard let close = utf8.firstIndex(of: UInt8(ascii: "]")) else { return nil }
            let host = text[text.index(after: text.startIndex)..<close]
            let after = text[text.index(after: close)...]
            if after.isEmpty { return host.isEmpty ? nil : (host, true, nil) }
            guard after.utf8.first == UInt8(ascii: ":") else { return nil }
            return host.isEmpty ? nil : (host, true, after.dropFirst())
        }
        if let colon = utf8.lastIndex(of: UInt8(ascii: ":")) {
            let host = text[text.startIndex..<colon]
            guard !host.utf8.contains(UInt8(ascii: ":")) else { return nil }  // an unbracketed IPv6 literal is ambiguous
            return host.isEmpty ? nil : (host, false, text[text.index(after: colon)...])
        }
        return text.isEmpty ? nil : (text, false, nil)
    }

    private static func destination(
        host: Substring,
        bracketed: Bool,
        portText: Substring?,
        defaultPort: Int?
    ) -> Result<Destination, Invalid> {
        let port: Int
        if let portText, !portText.isEmpty {
            guard portText.count <= 5, portText.allSatisfy({ $0.isASCII && $0.isNumber }), let value = Int(portText),
                (1...65535).contains(value)
            else { return .failure(Invalid("the port is not a number from 1 to 65535")) }
            port = value
        } else if let defaultPort {
            port = defaultPort
        } else {
            return .failure(Invalid("target has no port"))
        }

        if bracketed {
            guard host.contains(":"), let address = IPAddress(String(host)), !address.isIPv4
            else { return .failure(Invalid("[\(host.prefix(64))] is not an IPv6 address")) }
            // Written the one way (RFC 5952: `[0:0:0:0:0:0:0:1]` is `[::1]`), so one destination is one target.
            return .success(Destination(host: address.description, port: port, isIPLiteral: true))
        }
        if isIPv4Literal(host) {
            return .success(Destination(host: String(host), port: port, isIPLiteral: true))
        }
        var name = host.lowercased()
        if name.hasSuffix(".") { name.removeLast() }
        guard isValidHostName(name) else {
            return .failure(Invalid("host \(String(host.prefix(64)).debugDescription) is not a valid host name"))
        }
        return .success(Destination(host: name, port: port, isIPLiteral: false))
    }

    /// Four dot-separated decimal octets, no leading zeros (which some resolvers read as octal).
    static func isIPv4Literal(_ text: Substring) -> Bool {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return false }
        return parts.allSatisfy { part in
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                let value = Int(part), value <= 255
            else { return false }
            return part.count == 1 || part.first != "0"
        }
    }

    /// Letters, digits, `-` and `_` in dot-separated labels of 1–63 characters, 253 characters at most, and
    /// not all-numeric (so `1.2.3` or `0x7f.1` never reaches the resolver as a disguised address).
    static func isValidHostName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= maxHostLength else { return false }
        let labels = name.split(separator: ".", omittingEmptySubsequences: false)
        for label in labels {
            guard !label.isEmpty, label.utf8.count <= maxLabelLength else { return false }
            for byte in label.utf8 {
                let ok =
                    (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x30 && byte <= 0x39) || byte == 0x2d || byte == 0x5f
                if !ok { return false }
            }
        }
        if let last = labels.last, last.allSatisfy({ $0.isNumber }) { return false }
        if let last = labels.last, last.hasPrefix("0x") { return false }
        return true
    }
}
