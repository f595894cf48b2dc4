import AccessControl
import ControlPlane
import Policy

/// `KAIZEN_MODE` and `KAIZEN_POLICY_FAIL` applied to the policies the store holds: what the connection handlers
/// ask before they dial, once they know the address, and once they know the SNI.
final class PolicyCheck: Sendable {
    let store: PolicyStore
    /// Enforce mode: a block refuses the connection or request. Observe mode: it is only reported.
    let enforcing: Bool
    let failClosed: Bool

    /// The reason a block carries when no policy was ever loaded and `KAIZEN_POLICY_FAIL=closed`.
    static let noPolicyReason = "no policy loaded (KAIZEN_POLICY_FAIL=closed)"

    init(store: PolicyStore, enforcing: Bool, failClosed: Bool) {
        self.store = store
        self.enforcing = enforcing
        self.failClosed = failClosed
    }

    /// What a tunnel whose server name could not be read is blocked by, when the agent's policies judge names: a
    /// ClientHello the proxy cannot parse (malformed, too large, too slow) may still name a blocked host to a server
    /// that can.
    static let unreadableServerNameReason = "server name not judged: the ClientHello could not be read"

    /// The same for plain HTTP inside a tunnel whose `Host` (or target) is not a host name the policy can judge.
    static let unjudgedHostReason = "host not judged: the request names no valid host"

    /// Whether the loaded policies of `agent` have a rule about names (so an unread server name matters).
    func judgesNames(agent: String) -> Bool { store.policies(for: agent)?.policies.judgesNames ?? false }

    /// Whether a policy (even an empty one) was loaded for `agent`.
    func hasPolicy(for agent: String) -> Bool { store.policies(for: agent) != nil }

    /// The name of the policy that blocks the destination, nil when none does. See `PolicySet.decide` for
    /// `complete`.
    func blockingPolicy(agent: String, host: String?, address: String?, complete: Bool) -> String? {
        guard let loaded = store.policies(for: agent) else {
            return failClosed ? Self.noPolicyReason : nil
        }
        let parsed = address.flatMap { IPAddress($0) }
        switch loaded.policies.decide(host: host, address: parsed, complete: complete) {
        case .allow: return nil
        case .block(let policy): return policy
        }
    }
}

extension Reporting {
    /// Applies the policy to a connection or request: records in `metadata` which policy blocks it (and, in
    /// observe mode, `would_block`). Returns the policy's name when the proxy must refuse (enforce mode).
    /// A block found earlier (by the CONNECT host, say) stays.
    func judge(_ metadata: inout ConnectMetadata, host: String?, address: String?, complete: Bool = true) -> String? {
        guard let policy else { return nil }
        if metadata.policy == nil {
            metadata.policy = policy.blockingPolicy(agent: agent, host: host, address: address, complete: complete)
        }
        if !policy.enforcing { metadata.wouldBlock = metadata.policy != nil }
        return policy.enforcing ? metadata.policy : nil
    }

    /// A TLS tunnel whose ClientHello could not be read, when the agent's policies judge names: blocked (enforce
    /// mode) or `would_block` (observe mode) by `PolicyCheck.unreadableServerNameReason`. Returns the reason when the
    /// proxy must refuse.
    func judgeUnreadableServerName(
        _ metadata: inout ConnectMetadata, reason: String = PolicyCheck.unreadableServerNameReason
    ) -> String? {
        guard let policy, metadata.policy == nil, policy.judgesNames(agent: agent) else { return nil }
        metadata.policy = reason
        if !policy.enforcing { metadata.wouldBlock = true }
        return policy.enforcing ? metadata.policy : nil
    }
}
