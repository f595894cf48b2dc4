public import OpenSSLTLS
import Synchronization

/// Which tunnels are inspected, decided from the CONNECT host and the ClientHello. Pure apart from the
/// memory of names whose clients refused a minted certificate (pinning), which is thread-safe. That memory is per
/// agent: an agent that refused the leaf for a name passes its own later connections to it through, never another
/// agent's.
public final class InspectionPolicy: Sendable {
    public enum Decision: Sendable, Hashable {
        /// Terminate the client's TLS with a leaf for `leaf`; verify the upstream as `upstreamName`.
        case inspect(leaf: OpenSSLCertificateAuthority.LeafName, upstreamName: String)
        /// Relay untouched, as destination-only mode does, as the customer chose (`KAIZEN_PASSTHROUGH_HOSTS`,
        /// `KAIZEN_INSPECT_HOSTS`); `reason` goes in the action.
        case passthrough(reason: String)
        /// Relay untouched because the name cannot be inspected for a while (`PinReason`): refused instead with
        /// `KAIZEN_INSPECT_REQUIRED`. `reason` goes in the action.
        case pinned(reason: String)
        /// A CONNECT to an address whose SNI is a passthrough name: passed through only if `name` resolves to that
        /// address (ask `decide` again with `sniResolvesToAddress`); otherwise the SNI counts for nothing.
        case passthroughIfNameResolves(name: String)
    }

    private let inspectHosts: HostPatterns?
    private let passthroughHosts: HostPatterns?
    private let pinnedFor: Int64
    /// Why a name passes through for a while: its client refused the minted certificate (pinning), or its upstream
    /// requires a client certificate, which only the agent has (mutual TLS cannot be inspected).
    public enum PinReason: Sendable, Hashable {
        case clientRefusedCertificate
        case upstreamRequiresClientCertificate

        var passthroughReason: String {
            switch self {
            case .clientRefusedCertificate: "client refused the inspection certificate recently (pinning)"
            case .upstreamRequiresClientCertificate: "the upstream required a client certificate recently (mutual TLS)"
            }
        }
    }

    private struct Pin {
        var until: Int64
        var reason: PinReason
    }

    private let pins = Mutex([String: Pin]())
    private static let pinLimit = 10_000

    /// - Parameters:
    ///   - inspectHosts: only these are inspected (nil: all).
    ///   - passthroughHosts: these never are.
    ///   - pinnedFor: seconds a name whose client refused our certificate passes through.
    public init(inspectHosts: HostPatterns?, passthroughHosts: HostPatterns?, pinnedFor: Int64) {
        self.inspectHosts = inspectHosts
        self.passthroughHosts = passthroughHosts
        self.pinnedFor = pinnedFor
    }

    /// Whether a CONNECT to `host` may be inspected at all (before its ClientHello is seen): false when the
    /// host is excluded whatever the SNI says, so the tunnel is set up as a plain relay at once.
    public func mayInspect(connectHost host: String) -> Bool {
        !(passthroughHosts?.matches(host) ?? false)
    }

    /// - Parameters:
    ///   - connectHost: the host of the CONNECT request (a name or an IP address, no brackets).
    ///   - isTLS: whether the client's first bytes were a ClientHello.
    ///   - serverName: the ClientHello's SNI, if any.
    ///   - agent: the agent the connection is reported for (pinning is remembered per agent).
    ///   - sniResolvesToAddress: for a CONNECT to an address, whether the SNI's name resolves to it (nil: not known
    ///     yet; the decision then asks for it when it matters).
    ///
    /// The client chooses its SNI, so the SNI alone never takes a tunnel out of inspection: a passthrough name in the
    /// SNI counts when the CONNECT names the same host, or an address the name resolves to (a client cannot reach
    /// any address uninspected by naming a passthrough host); a tunnel is inspected when either the CONNECT host or
    /// the SNI is in `KAIZEN_INSPECT_HOSTS`.
    public func decide(
        agent: String, connectHost: String, isTLS: Bool, serverName: String?, now: Int64, sniResolvesToAddress: Bool? = nil
    ) -> Decision {
        guard isTLS else { return .passthrough(reason: "not TLS") }
        let connect = connectHost.lowercased()
        let name = serverName?.lowercased() ?? connect
        if let passthroughHosts {
            if passthroughHosts.matches(connect) { return .passthrough(reason: "passthrough host") }
            if name != connect, OpenSSLConnection.isIPAddress(connectHost), passthroughHosts.matches(name) {
                switch sniResolvesToAddress {
                case nil: return .passthroughIfNameResolves(name: name)
                case true?: return .passthrough(reason: "passthrough host")
                case false?: break  // not this address's name: it counts for nothing
                }
            }
        }
        if let inspectHosts, !inspectHosts.matches(name), !inspectHosts.matches(connect) {
            return .passthrough(reason: "not in KAIZEN_INSPECT_HOSTS")
        }
        if let pinned = pinReason(agent: agent, name, now: now) {
            return .pinned(reason: pinned.passthroughReason)
        }
        let leaf: OpenSSLCertificateAuthority.LeafName
        if let serverName, OpenSSLConnection.isIPAddress(serverName) {
            // An address in the SNI (RFC 6066 forbids it; some clients send it): an iPAddress leaf, so the CA's
            // IP name constraints apply to it as to an address with no SNI, and a client checks it as an address.
            leaf = .ip(serverName)
        } else if let serverName {
            leaf = .dns(serverName.lowercased())
        } else if OpenSSLConnection.isIPAddress(connectHost) {
            leaf = .ip(connectHost)
        } else {
            leaf = .dns(connectHost.lowercased())
        }
        return .inspect(leaf: leaf, upstreamName: serverName ?? connectHost)
    }

    /// Takes over `other`'s memory of pinned names (a reload replaces the lists, not what clients taught us).
    public func adoptPins(from other: InspectionPolicy) {
        let copied = other.pins.withLock { $0 }
        pins.withLock { $0.merge(copied) { $1 } }
    }

    /// A client of `agent` aborted the handshake with our certificate, or the upstream for `name` required a client
    /// certificate: pass that agent's connections to `name` through for a while.
    public func notePinned(agent: String, _ name: String, now: Int64, reason: PinReason = .clientRefusedCertificate) {
        pins.withLock { pins in
            if pins.count >= Self.pinLimit {
                pins = pins.filter { $0.value.until > now }
                if pins.count >= Self.pinLimit { pins.removeAll() }
            }
            pins[Self.pinKey(agent, name)] = Pin(until: now + pinnedFor, reason: reason)
        }
    }

    public func isPinned(agent: String, _ name: String, now: Int64) -> Bool {
        pinReason(agent: agent, name, now: now) != nil
    }

    /// Why `agent`'s connections to `name` pass through now, if they do.
    public func pinReason(agent: String, _ name: String, now: Int64) -> PinReason? {
        let key = Self.pinKey(agent, name)
        return pins.withLock { pins in
            guard let pin = pins[key] else { return nil }
            if pin.until <= now {
                pins[key] = nil
                return nil
            }
            return pin.reason
        }
    }

    /// NUL cannot be in an agent name or a host name: the two cannot run together.
    private static func pinKey(_ agent: String, _ name: String) -> String { agent + "\u{0}" + name.lowercased() }
}
