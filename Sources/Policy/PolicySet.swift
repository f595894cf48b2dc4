public import AccessControl

/// The policies that apply to one agent, and the decision they take for a destination.
///
/// A destination is blocked by the first enabled blocklist whose rules match it, else by the first enabled
/// allowlist whose rules do not match it (blocklists first, so an explicit "never" wins over an allowlist
/// elsewhere); otherwise it is allowed. Correlation policies and disabled ones take no part.
public struct PolicySet: Sendable, Hashable {
    public var policies: [DestinationPolicy]

    public init(_ policies: [DestinationPolicy]) {
        self.policies = policies
    }

    public static let empty = PolicySet([])

    public enum Decision: Sendable, Hashable {
        case allow
        /// Blocked by the named policy.
        case block(policy: String)
    }

    /// The decision for `host` (a name, or an IP literal) reached at `address`.
    ///
    /// With `address` nil (not resolved yet) the answer is final only for a block: an allowlist whose `ips` rules
    /// might still match the address does not block, so call again once the address is known.
    public func decide(host: String?, address: IPAddress?) -> Decision {
        let literal = host.flatMap { IPAddress(Self.unbracketed($0)) }
        let address = address ?? literal
        let name = literal == nil ? host : nil
        for policy in policies where policy.enabled && policy.mode == .blocklist {
            if policy.matches(host: name, address: address) { return .block(policy: policy.name) }
        }
        for policy in policies where policy.enabled && policy.mode == .allowlist {
            if policy.matches(host: name, address: address) { continue }
            if address == nil && policy.hasAddressRules { continue }  // undecided until the address is known
            return .block(policy: policy.name)
        }
        return .allow
    }

    /// Whether any enabled policy can block something (an empty set or only correlation policies cannot).
    public var canBlock: Bool {
        policies.contains { $0.enabled && $0.mode != .correlation }
    }

    private static func unbracketed(_ host: String) -> String {
        host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    }
}
