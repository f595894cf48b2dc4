public import AccessControl
import Foundation

/// One policy of the control plane as the proxy applies it to a destination: its `domains` and `ips` rules.
///
/// A domain rule `example.com` matches example.com and every name below it; `*.example.com` only the names
/// below it. An `ips` rule is an address or a CIDR. Rule kinds the proxy cannot apply to a destination (paths,
/// tools, …) are kept in `ignoredRuleKinds` and logged once.
public struct DestinationPolicy: Sendable, Hashable {
    public enum Mode: String, Sendable, Hashable {
        /// Only destinations its rules match may be reached.
        case allowlist
        /// Destinations its rules match may not be reached.
        case blocklist
        /// Correlates actions over time; it says nothing about one destination.
        case correlation
    }

    public var name: String
    public var mode: Mode
    public var enabled: Bool
    /// Names matched with everything below them (`example.com`), lowercased, without a trailing dot.
    public var domains: Set<String>
    /// Names whose subdomains only are matched (`*.example.com` stored as `example.com`).
    public var subdomainsOnly: Set<String>
    public var ranges: [CIDR]
    /// Rule kinds present in the policy that the proxy does not apply (`paths`, `tools`, …), sorted.
    public var ignoredRuleKinds: [String]
    /// Entries of `domains` or `ips` that are neither a host name nor an address or range.
    public var invalidEntries: [String]

    public init(
        name: String,
        mode: Mode,
        enabled: Bool = true,
        domains: [String] = [],
        ips: [String] = [],
        ignoredRuleKinds: [String] = []
    ) {
        self.name = name
        self.mode = mode
        self.enabled = enabled
        self.domains = []
        self.subdomainsOnly = []
        self.ranges = []
        self.ignoredRuleKinds = ignoredRuleKinds
        self.invalidEntries = []
        for entry in domains {
            var name = entry.trimmingCharacters(in: .whitespacesAndNewlines).lowercased()
            if name.hasSuffix(".") { name.removeLast() }
            if name.hasPrefix("*.") {
                name.removeFirst(2)
                guard Self.isHostName(name) else {
                    invalidEntries.append(entry)
                    continue
                }
                subdomainsOnly.insert(name)
            } else if let address = IPAddress(name.replacingOccurrences(of: "[", with: "").replacingOccurrences(of: "]", with: "")) {
                // An address written among the domains is an address rule: a domain rule never sees an IP host.
                ranges.append(CIDR(network: address, prefixLength: address.bytes.count * 8))
            } else {
                guard Self.isHostName(name) else {
                    invalidEntries.append(entry)
                    continue
                }
                self.domains.insert(name)
            }
        }
        for entry in ips {
            let trimmed = entry.trimmingCharacters(in: .whitespacesAndNewlines)
            let unbracketed = trimmed.replacingOccurrences(of: "[", with: "").replacingOccurrences(of: "]", with: "")
            if let range = CIDR(unbracketed) {
                ranges.append(range)
            } else {
                invalidEntries.append(entry)
            }
        }
    }

    /// Whether the destination matches one of the rules. `address` nil: not known (yet), so no `ips` rule matches.
    public func matches(host: String?, address: IPAddress?) -> Bool {
        if let host, !domains.isEmpty || !subdomainsOnly.isEmpty {
            var name = host.lowercased()
            if name.hasSuffix(".") { name.removeLast() }
            if domains.contains(name) { return true }
            // Every parent name, one label at a time: a.b.example.com → b.example.com → example.com → com.
            var rest = Substring(name)
            while let dot = rest.firstIndex(of: ".") {
                rest = rest[rest.index(after: dot)...]
                if domains.contains(String(rest)) || subdomainsOnly.contains(String(rest)) { return true }
            }
        }
        if let address, !ranges.isEmpty {
            // The address, and any IPv4 address it carries (IPv4-mapped, NAT64/DNS64, 6to4, Teredo…), as the
            // destination guard checks them: an IPv4 rule holds on an IPv6-only network too.
            let candidates = [address] + address.embeddedIPv4.map(\.address)
            for candidate in candidates where ranges.contains(where: { $0.contains(candidate) }) {
                return true
            }
        }
        return false
    }

    /// Whether the policy has a valid rule about destinations.
    public var hasDestinationRules: Bool { hasNameRules || hasAddressRules }

    /// Whether the policy names destinations at all, validly or not. An allowlist that does not (only `paths` or
    /// `tools`) says nothing about where an agent may connect and takes no part; one whose every entry is invalid
    /// meant to restrict destinations and admits none.
    public var appliesToDestinations: Bool { hasDestinationRules || !invalidEntries.isEmpty }

    /// Whether this policy's rules could still match once the address is known.
    public var hasAddressRules: Bool { !ranges.isEmpty }

    /// Whether this policy's rules could still match once the name is known.
    public var hasNameRules: Bool { !domains.isEmpty || !subdomainsOnly.isEmpty }

    /// Letters, digits, `-`, `_` and dots between labels; no empty label.
    static func isHostName(_ name: String) -> Bool {
        guard !name.isEmpty, name.utf8.count <= 253 else { return false }
        return name.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            !label.isEmpty && label.utf8.count <= 63
                && label.utf8.allSatisfy { byte in
                    (byte >= 0x61 && byte <= 0x7a) || (byte >= 0x30 && byte <= 0x39) || byte == 0x2d || byte == 0x5f
                }
        }
    }
}
