public import AccessControl

/// The policies that apply to one agent, and the decision they take for a destination.
///
/// A destination is blocked by the first enabled blocklist whose rules match it, else by the first enabled
/// allowlist whose rules do not match it (blocklists first, so an explicit "never" wins over an allowlist
/// elsewhere); otherwise it is allowed. Each policy holds on its own: with two allowlists, a destination must be
/// on both. Correlation policies, disabled ones and allowlists without a `domains` or `ips` rule take no part; an
/// allowlist whose every entry is invalid admits nothing.
public struct PolicySet: Sendable, Hashable {
    public var policies: [DestinationPolicy]

    public init(_ policies: [DestinationPolicy]) {
        self.policies = policies
    }

    public static let empty = PolicySet([])

    /// Whether a destination's name can change the decision: an enabled blocklist or allowlist has a `domains` rule.
    public var judgesNames: Bool {
        policies.contains { $0.enabled && $0.mode != .correlation && $0.hasNameRules }
    }

    public enum Decision: Sendable, Hashable {
        case allow
        /// Blocked by the named policy.
        case block(policy: String)
    }

    /// The decision for `host` (a name, or an IP literal) reached at `address`.
    ///
    /// With `complete` false, a missing host or address is not known *yet* (before resolution, before the SNI):
    /// the answer is then final only for a block, because an allowlist whose rules might still match what is
    /// missing does not block. With `complete` true, what is missing is absent (a connection without a name).
    public func decide(host: String?, address: IPAddress?, complete: Bool = true) -> Decision {
        let literal = host.flatMap { IPAddress(Self.unbracketed($0)) }
        let address = address ?? literal
        let name = literal == nil ? host : nil
        for policy in policies where policy.enabled && policy.mode == .blocklist {
            if policy.matches(host: name, address: address) { return .block(policy: policy.name) }
        }
        // Every allowlist must admit the destination (each policy holds on its own).
        for policy in policies where policy.enabled && policy.mode == .allowlist && policy.appliesToDestinations {
            if policy.matches(host: name, address: address) { continue }
            if !complete {
                // Undecided while what the policy's rules look at is still to come.
                if address == nil && policy.hasAddressRules { continue }
                if host == nil && policy.hasNameRules { continue }
            }
            return .block(policy: policy.name)
        }
        return .allow
    }

    private static func unbracketed(_ host: String) -> String {
        host.hasPrefix("[") && host.hasSuffix("]") ? String(host.dropFirst().dropLast()) : host
    }
}
