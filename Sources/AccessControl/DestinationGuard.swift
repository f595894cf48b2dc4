/// Keeps the proxy from being a way into the network it runs in (SSRF): destinations in loopback, private,
/// link-local (cloud metadata at 169.254.169.254 among them), CGNAT, multicast, unspecified and reserved ranges
/// are refused, also when an IPv6 address carries one of them (IPv4-mapped, IPv4-compatible, NAT64, 6to4,
/// Teredo), and so are the proxy's own listeners and every address of the machine it runs on (a public IPv4 or a
/// global IPv6 address reaches the machine's own services as loopback does). `KAIZEN_ALLOW_PRIVATE` opens
/// exceptions by range or host name.
///
/// The check runs on the addresses the proxy is about to dial, after its one name lookup, so a name that
/// resolves differently a moment later (DNS rebinding) changes nothing.
public struct DestinationGuard: Sendable {
    /// Why a destination is refused: `private address 10.0.0.5`, `link-local address 169.254.169.254`, …
    public struct Denial: Error, Sendable, Hashable, CustomStringConvertible {
        /// For the log and the action: the address and why it is refused.
        public var reason: String
        /// For the client. The same as `reason` for a client that named an address. For a client that named a host,
        /// `reason` would tell it what the name resolves to inside the network (an agent could map internal names to
        /// addresses that way): it is told only that the name resolves to a refused address.
        public var clientReason: String
        /// An exception (`KAIZEN_ALLOW_PRIVATE`) would open it: a private, local or reserved range, or an address of
        /// this machine; not the proxy's own listeners, the unspecified address or `KAIZEN_DENY_DESTINATIONS`.
        public var exceptionOpens: Bool
        public var description: String { reason }

        public init(reason: String, clientReason: String? = nil, exceptionOpens: Bool = false) {
            self.reason = reason
            self.clientReason = clientReason ?? reason
            self.exceptionOpens = exceptionOpens
        }

        /// `reason` kept for the log and the action; the client of `host` is told less when `host` is a name.
        init(reason: String, host: String, exceptionOpens: Bool = false) {
            let literal = host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
            self.init(
                reason: reason,
                clientReason: IPAddress(literal) == nil ? "\(host) resolves to a refused address (the proxy's log says which)" : nil,
                exceptionOpens: exceptionOpens)
        }
    }

    /// A listener of this proxy; `address` nil means every address of the machine (a wildcard listener).
    public struct Listener: Sendable, Hashable {
        public var address: IPAddress?
        public var port: Int

        public init(address: IPAddress?, port: Int) {
            self.address = address
            self.port = port
        }
    }

    /// Ranges allowed although they are refused by default.
    public var allowedRanges: [CIDR]
    /// Host names (`internal.example`, or `*.corp.example` for names below it) allowed to resolve anywhere.
    public var allowedNames: [String]
    /// Ranges refused besides `refused` (`KAIZEN_DENY_DESTINATIONS`: internal networks on public addresses, such as
    /// IPv6 VPC and pod ranges). No exception opens them.
    public var deniedRanges: [CIDR]
    public var listeners: [Listener]
    /// The machine's own addresses: refused as destinations (unless an exception covers them), and never dialled
    /// on the port of a wildcard listener.
    public var localAddresses: [IPAddress]

    public init(
        allowedRanges: [CIDR] = [], allowedNames: [String] = [], deniedRanges: [CIDR] = [], listeners: [Listener] = [],
        localAddresses: [IPAddress] = []
    ) {
        self.allowedRanges = allowedRanges
        self.allowedNames = allowedNames.map { $0.lowercased() }
        self.deniedRanges = deniedRanges
        self.listeners = listeners
        self.localAddresses = localAddresses
    }

    /// The ranges refused by default, and why.
    static let refused: [(CIDR, String)] = [
        ("0.0.0.0/8", "unspecified"), ("10.0.0.0/8", "private"), ("100.64.0.0/10", "shared (CGNAT)"),
        ("127.0.0.0/8", "loopback"), ("169.254.0.0/16", "link-local"), ("172.16.0.0/12", "private"),
        ("192.0.0.0/24", "reserved"), ("192.0.2.0/24", "documentation"), ("192.168.0.0/16", "private"),
        ("198.18.0.0/15", "benchmarking"), ("198.51.100.0/24", "documentation"), ("203.0.113.0/24", "documentation"),
        ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"), ("::1/128", "loopback"), ("::/96", "reserved (IPv4-compatible)"),
        ("::ffff:0:0:0/96", "reserved (IPv4-translated)"), ("64:ff9b:1::/48", "private (local NAT64)"),
        ("100::/64", "discard-only"), ("2001:db8::/32", "documentation"), ("3fff::/20", "documentation"),
        ("fc00::/7", "private (unique local)"),
        ("fe80::/10", "link-local"), ("fec0::/10", "site-local"), ("ff00::/8", "multicast"),
    ].map { (CIDR($0.0)!, $0.1) }

    /// Whether the proxy may dial `address`:`port` for a client that asked for `host` (a name or the literal).
    public func check(_ address: IPAddress, port: Int, host: String) -> Denial? {
        if let listener = ownListener(address, port: port) {
            return Denial(reason: "the proxy's own listener \(listener)", host: host)
        }
        // 0.0.0.0 and :: reach this machine's own listeners on Linux: never dialled, whatever the exceptions.
        let plain = address.embeddedIPv4.first { $0.form == "IPv4-mapped" }?.address ?? address
        if plain.bytes.allSatisfy({ $0 == 0 }) { return Denial(reason: "unspecified address \(address)", host: host) }
        let candidates = [("", address)] + address.embeddedIPv4.map { ("\($0.form) ", $0.address) }
        for (form, candidate) in candidates {
            if let range = deniedRanges.first(where: { $0.contains(candidate) }) {
                let shown = form.isEmpty ? "\(address)" : "\(address) (\(form)\(candidate))"
                return Denial(reason: "address \(shown) in KAIZEN_DENY_DESTINATIONS (\(range))", host: host)
            }
        }
        if isAllowedName(host) { return nil }
        for (form, candidate) in candidates {
            if allowedRanges.contains(where: { $0.contains(candidate) }) { continue }
            let shown = form.isEmpty ? "\(address)" : "\(address) (\(form)\(candidate))"
            if let (_, why) = Self.refused.first(where: { $0.0.contains(candidate) }) {
                return Denial(reason: "\(why) address \(shown)", host: host, exceptionOpens: true)
            }
            if localAddresses.contains(candidate) {
                return Denial(reason: "this machine's own address \(shown)", host: host, exceptionOpens: true)
            }
        }
        return nil
    }

    /// Whether a connection just made is to the machine itself: its two ends have the same address (Linux takes
    /// the destination as the source for one of its own addresses). Catches an address the machine gained after
    /// `localAddresses` was read. The exceptions apply as in `check`.
    public func checkConnected(local: IPAddress, remote: IPAddress, port: Int, host: String) -> Denial? {
        guard Self.sameAddress(local, remote) else { return nil }
        var knowing = self
        knowing.localAddresses.append(Self.plain(remote))
        return knowing.check(remote, port: port, host: host)
    }

    /// Whether two addresses are one (an IPv4-mapped IPv6 address is its IPv4 address): a connection's two ends
    /// being one is a connection to the machine itself. Cheap, so callers ask it before anything else.
    public static func sameAddress(_ one: IPAddress, _ other: IPAddress) -> Bool { plain(one) == plain(other) }

    private static func plain(_ address: IPAddress) -> IPAddress {
        address.embeddedIPv4.first { $0.form == "IPv4-mapped" }?.address ?? address
    }

    func isAllowedName(_ host: String) -> Bool {
        let name = host.lowercased()
        return allowedNames.contains { pattern in
            if pattern.hasPrefix("*.") { return name.hasSuffix(pattern.dropFirst(1)) }
            return name == pattern
        }
    }

    /// Whether `address`:`port` is one of this proxy's listeners.
    public func isOwnListener(_ address: IPAddress, port: Int) -> Bool {
        ownListener(address, port: port) != nil
    }

    private static let loopback4 = CIDR("127.0.0.0/8")!
    private static let loopback6 = IPAddress("::1")!

    private func ownListener(_ address: IPAddress, port: Int) -> String? {
        guard listeners.contains(where: { $0.port == port }) else { return nil }
        let plain = address.embeddedIPv4.first { $0.form == "IPv4-mapped" }?.address ?? address
        for listener in listeners where listener.port == port {
            if let bound = listener.address {
                if bound == plain { return "\(bound):\(port)" }
                // A listener on loopback is reached by every loopback address of its family.
                if Self.loopback4.contains(bound), Self.loopback4.contains(plain) { return "\(bound):\(port)" }
            } else if localAddresses.contains(plain) || Self.loopback4.contains(plain) || plain == Self.loopback6
                || plain.bytes.allSatisfy({ $0 == 0 })
            {
                return "port \(port) (listening on every address)"
            }
        }
        return nil
    }
}
