/// What the proxy knows about one connection (or one plain-HTTP request), reported in `action.metadata`.
///
/// Destination-only mode fills in destination facts only: no path, query, header or body is ever recorded.
public struct ConnectMetadata: Sendable, Hashable, Decodable {
    /// How the client asked for the destination.
    public enum Transport: String, Sendable, Hashable, Decodable {
        /// An HTTP `CONNECT` tunnel; bytes are relayed untouched.
        case connect
        /// A plain-HTTP request in absolute form (`GET http://host/…`), forwarded by the proxy.
        case http
        /// A connection redirected to the transparent listener (iptables): relayed like a CONNECT tunnel to
        /// its original destination.
        case transparent
    }

    /// Whether the proxy reached the destination.
    public enum Outcome: String, Sendable, Hashable, Decodable {
        case connected
        case failed
    }

    /// Always `egress`: the action came from this proxy.
    public var source: String = "egress"
    public var eventID: EventID
    public var transport: Transport
    public var host: String
    public var port: Int
    /// The client's address, `ip:port` (`[ip]:port` for IPv6).
    public var client: String
    /// When the client's request was received, RFC 3339 UTC with milliseconds.
    public var startedAt: String
    public var outcome: Outcome
    /// The address the proxy connected to, once connected.
    public var resolvedIP: String?
    /// Why the connection failed, when it did (`connection refused`, `name resolution failed`, …).
    public var error: String?
    /// The HTTP status the proxy answered the client with when it could not connect (502, 504).
    public var status: Int?

    /// Whether the client's first bytes were a TLS ClientHello. `nil` before the proxy has looked (plain HTTP).
    public var tls: Bool?
    /// The server name from the ClientHello; `null` in JSON when TLS was expected but no name was found.
    public var sni: String?
    /// Why there is no SNI (not TLS, malformed, too large, no client bytes in time, or the client sent none).
    public var sniError: String?
    /// ALPN protocols the client offered, in order.
    public var alpn: [String]?
    /// Set when the SNI names a different host than the one the client asked the proxy for.
    public var sniMismatch: Bool?

    // Inspection mode (a customer CA is configured). Destination-only mode never sets these.

    /// `true` when the proxy terminated the client's TLS and re-originated it: the request fields are known.
    public var intercepted: Bool?
    /// Why a connection was not inspected although a CA is configured (`passthrough host`, `not TLS`, …),
    /// or why inspection failed (`upstream certificate verification failed: …`).
    public var inspection: String?
    /// The request, inside an intercepted connection: method and path (query removed unless configured).
    public var method: String?
    public var path: String?
    /// The HTTP version an intercepted connection speaks on both sides (the protocol the upstream chose by
    /// ALPN, the client being answered with the same): `h2` or `http/1.1`.
    public var negotiatedProtocol: String?
    /// Inspected connections: true when the upstream TLS session was resumed (its certificate was verified by the
    /// full handshake of an earlier connection); absent after a full handshake.
    public var upstreamResumed: Bool?
    /// Inspected connections that took an idle upstream connection an earlier one opened (no handshake of their
    /// own with the upstream): the `event_id` of the connection whose handshake opened and verified it.
    public var upstreamReusedFrom: String?
    /// The host a request named (an absolute-form URI's authority, its Host, an HTTP/2 `:authority`) when that is
    /// not the connection's `host`: a request inside one tunnel may ask for another destination.
    public var requestHost: String?
    /// The protocol a request switched to (`websocket`): an HTTP/1.1 `Upgrade` answered with 101, or an HTTP/2
    /// extended CONNECT's `:protocol` (RFC 8441). What flows after the switch is relayed, not reported.
    public var upgrade: String?
    /// Body sizes of that request and its response, in bytes.
    public var requestBodyBytes: UInt64?
    public var responseBodyBytes: UInt64?
    /// The intercepted connection a request belongs to (its first action's event id).
    public var connectionID: EventID?
    /// Transparent mode: the address and port the agent connected to before the redirect, `ip:port`.
    public var originalDst: String?
    /// `true` on the agent's first connection to this `host:port` (outside its baseline); absent otherwise.
    public var firstSeen: Bool?
    /// The policy that blocks this destination (in enforce mode also the verdict's reason), or that would
    /// block it (observe mode); absent when no policy blocks it.
    public var policy: String?
    /// Observe mode with policies from the control plane: whether enforce mode would have blocked this.
    public var wouldBlock: Bool?

    public init(
        eventID: EventID,
        transport: Transport,
        host: String,
        port: Int,
        client: String,
        startedAt: String,
        outcome: Outcome
    ) {
        self.eventID = eventID
        self.transport = transport
        self.host = host
        self.port = port
        self.client = client
        self.startedAt = startedAt
        self.outcome = outcome
    }

    enum CodingKeys: String, CodingKey {
        case source
        case eventID = "event_id"
        case transport, host, port, client
        case startedAt = "started_at"
        case outcome
        case resolvedIP = "resolved_ip"
        case error, status, tls, sni
        case sniError = "sni_error"
        case alpn
        case sniMismatch = "sni_mismatch"
        case intercepted, inspection, method, path
        case negotiatedProtocol = "protocol"
        case upstreamResumed = "upstream_resumed"
        case upstreamReusedFrom = "upstream_reused_from"
        case upgrade
        case requestHost = "request_host"
        case requestBodyBytes = "request_body_bytes"
        case responseBodyBytes = "response_body_bytes"
        case connectionID = "connection_id"
        case originalDst = "original_dst"
        case firstSeen = "first_seen"
        case policy
        case wouldBlock = "would_block"
    }

    /// The metadata object, fields in a fixed order. Once the proxy has looked at a tunnel's first bytes,
    /// `sni` is always present, `null` when there is none.
    public func writeJSON(to json: inout JSONWriter) {
        json.beginObject()
        json.field("source", source)
        json.field("event_id", eventID.description)
        json.field("transport", transport.rawValue)
        json.field("host", host)
        json.field("port", port)
        json.field("client", client)
        json.field("started_at", startedAt)
        json.field("outcome", outcome.rawValue)
        if let resolvedIP { json.field("resolved_ip", resolvedIP) }
        if let error { json.field("error", error) }
        if let status { json.field("status", status) }
        if let tls { json.field("tls", tls) }
        if tls != nil || sniError != nil { json.field("sni", sni) }
        if let sniError { json.field("sni_error", sniError) }
        if let alpn { json.field("alpn", alpn) }
        if let sniMismatch { json.field("sni_mismatch", sniMismatch) }
        if let intercepted { json.field("intercepted", intercepted) }
        if let inspection { json.field("inspection", inspection) }
        if let method { json.field("method", method) }
        if let path { json.field("path", path) }
        if let negotiatedProtocol { json.field("protocol", negotiatedProtocol) }
        if let upstreamResumed { json.field("upstream_resumed", upstreamResumed) }
        if let upstreamReusedFrom { json.field("upstream_reused_from", upstreamReusedFrom) }
        if let upgrade { json.field("upgrade", upgrade) }
        if let requestHost { json.field("request_host", requestHost) }
        if let requestBodyBytes { json.field("request_body_bytes", requestBodyBytes) }
        if let responseBodyBytes { json.field("response_body_bytes", responseBodyBytes) }
        if let connectionID { json.field("connection_id", connectionID.description) }
        if let originalDst { json.field("original_dst", originalDst) }
        if let firstSeen { json.field("first_seen", firstSeen) }
        if let policy { json.field("policy", policy) }
        if let wouldBlock { json.field("would_block", wouldBlock) }
        json.endObject()
    }
}
