/// Where the control plane is: `KAIZEN_API_URL` split into what a connection needs.
public struct ControlPlaneEndpoint: Sendable, Hashable {
    public var useTLS: Bool
    public var host: String
    public var port: Int
    /// The URL's path without a trailing slash (usually empty), put before `/v1/...`.
    public var basePath: String

    public struct Invalid: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    /// Parses `https://host[:port][/base]` or `http://…` (the configuration has already refused http to a
    /// host that is not loopback).
    public init(url: String) throws(Invalid) {
        let lower = url.lowercased()
        let rest: Substring
        if lower.hasPrefix("https://") {
            useTLS = true
            rest = url.dropFirst(8)
        } else if lower.hasPrefix("http://") {
            useTLS = false
            rest = url.dropFirst(7)
        } else {
            throw Invalid(description: "\(url) is not an http(s) URL")
        }
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = rest[rest.startIndex..<slash]
        var path = String(rest[slash...])
        while path.hasSuffix("/") { path.removeLast() }
        basePath = path
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { throw Invalid(description: "\(url) has a broken IPv6 address") }
            host = String(authority[authority.index(after: authority.startIndex)..<close])
            let after = authority[authority.index(after: close)...]
            port = after.hasPrefix(":") ? Int(after.dropFirst()) ?? -1 : (useTLS ? 443 : 80)
        } else if let colon = authority.lastIndex(of: ":") {
            host = String(authority[authority.startIndex..<colon])
            port = Int(authority[authority.index(after: colon)...]) ?? -1
        } else {
            host = String(authority)
            port = useTLS ? 443 : 80
        }
        guard !host.isEmpty, (1...65535).contains(port) else { throw Invalid(description: "\(url) has no valid host and port") }
    }

    /// `Host` header value.
    public var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == (useTLS ? 443 : 80) ? name : "\(name):\(port)"
    }
}
