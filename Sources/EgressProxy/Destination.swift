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
}
