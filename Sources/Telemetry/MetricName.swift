/// Every metric the proxy exports, in one place: its Prometheus name, type, labels and meaning.
/// docs/operations.md lists the same table; a test keeps the two in step.
public struct MetricName: Sendable, Hashable {
    public let name: String
    public let type: String
    public let labels: [String]
    public let help: String

    public static let connections = MetricName(
        name: "kaizen_egress_connections_total", type: "counter", labels: ["transport", "outcome"],
        help: "Connections and plain-HTTP requests reported, by transport (connect, http, transparent) and outcome (connected, failed, blocked).")
    public static let connectionsEnded = MetricName(
        name: "kaizen_egress_connections_ended_total", type: "counter", labels: ["mode", "outcome"],
        help: "Connections ended (plain-HTTP exchanges too), by mode (passthrough, inspected, forwarded, none) and outcome (connected, failed, blocked): one per canonical log line.")
    public static let inspectedRequests = MetricName(
        name: "kaizen_egress_inspected_requests_total", type: "counter", labels: ["outcome"],
        help: "Requests inside inspected connections (an HTTP/1.1 exchange or an HTTP/2 stream each), by outcome (forwarded, rejected, blocked, unsent: an HTTP/2 stream the client reset before it was sent upstream).")
    public static let bytes = MetricName(
        name: "kaizen_egress_bytes_total", type: "counter", labels: ["direction"],
        help: "Bytes relayed, from_client or to_client, counted when a connection or exchange closes.")
    public static let openConnections = MetricName(
        name: "kaizen_egress_open_connections", type: "gauge", labels: [],
        help: "Client connections open now (both listeners).")
    public static let activeTunnels = MetricName(
        name: "kaizen_egress_active_tunnels", type: "gauge", labels: ["kind"],
        help: "Tunnels open now: passthrough (relayed untouched) or inspected.")
    public static let sniParse = MetricName(
        name: "kaizen_egress_sni_parse_total", type: "counter", labels: ["outcome"],
        help: "ClientHello peeks, by outcome: sni, no_sni (a ClientHello without a server name), not_tls (another protocol), none (no ClientHello could be read: no bytes in time, or one malformed, past 64 KiB or not whole within 10 s).")
    public static let mintDuration = MetricName(
        name: "kaizen_egress_leaf_mint_duration_seconds", type: "histogram", labels: [],
        help: "Time to mint one leaf certificate (inspection).")
    public static let mintFailures = MetricName(
        name: "kaizen_egress_leaf_mint_failures_total", type: "counter", labels: [],
        help: "Leaf certificates that could not be minted (the client's connection is closed, the action says why).")
    public static let leafCache = MetricName(
        name: "kaizen_egress_leaf_cache_total", type: "counter", labels: ["result"],
        help: "Leaf certificate lookups: hit (cached, or minted by a concurrent request) or miss (minted).")
    public static let upstreamVerificationFailures = MetricName(
        name: "kaizen_egress_upstream_verification_failures_total", type: "counter", labels: [],
        help: "Inspected connections whose upstream failed certificate verification (never shown to the client as trusted).")
    public static let upstreamHandshakeFailures = MetricName(
        name: "kaizen_egress_upstream_handshake_failures_total", type: "counter", labels: [],
        help: "Inspected connections whose upstream TLS handshake failed other than by its certificate (the upstream's alert, such as no_application_protocol, or its close), and upstreams that required a client certificate (mutual TLS).")
    public static let upstreamHandshakes = MetricName(
        name: "kaizen_egress_upstream_tls_handshakes_total", type: "counter", labels: ["kind"],
        help: "Inspected connections' TLS handshakes with their upstream: full (its certificate checked, the chain taken from the verification cache when it holds it) or resumed (a session from an earlier full handshake).")
    public static let earlyUpstreamHandshakes = MetricName(
        name: "kaizen_egress_upstream_early_handshakes_total", type: "counter", labels: ["outcome"],
        help: "Upstream TLS handshakes begun before the client's ClientHello was in: used (the ClientHello asked for what it was made for) or discarded (closed unused: the ClientHello asked for another name or ALPN offer, was not inspected, or did not come, or the upstream failed or closed meanwhile).")
    public static let upstreamReused = MetricName(
        name: "kaizen_egress_upstream_connections_reused_total", type: "counter", labels: [],
        help: "Inspected connections that took an idle, verified upstream connection an earlier inspected connection of the same agent had opened (no TLS handshake with the upstream of their own).")
    public static let idleUpstreams = MetricName(
        name: "kaizen_egress_upstream_idle_connections", type: "gauge", labels: [],
        help: "Idle, verified upstream connections kept for reuse now (KAIZEN_UPSTREAM_IDLE_TIMEOUT).")
    public static let interceptFailures = MetricName(
        name: "kaizen_egress_intercept_failures_total", type: "counter", labels: [],
        help: "Clients that refused the minted certificate (pinning, or the CA not trusted); the name then passes through (with KAIZEN_INSPECT_REQUIRED: is refused) for KAIZEN_PINNED_PASSTHROUGH.")
    public static let proxyAuthFailures = MetricName(
        name: "kaizen_egress_proxy_auth_failures_total", type: "counter", labels: ["reason"],
        help: "Requests refused by proxy authentication (KAIZEN_PROXY_AUTH), by reason: missing (no Proxy-Authorization, as a client's first try), malformed (not Basic agent:token), invalid (a wrong token or an unknown agent, one label for both so the metric does not tell which agents exist), duplicate (two Proxy-Authorization headers).")
    public static let connectionsRefused = MetricName(
        name: "kaizen_egress_connections_refused_total", type: "counter", labels: ["reason"],
        help: "Client connections refused on arrival, before any request was read, by reason: outside_allowed_clients (KAIZEN_ALLOW_CLIENTS), max_connections (KAIZEN_MAX_CONNECTIONS), max_connections_per_client (KAIZEN_MAX_CONNECTIONS_PER_CLIENT). They make no action; the log has one line a minute per kind.")
    public static let reporterQueue = MetricName(
        name: "kaizen_egress_reporter_queue_depth", type: "gauge", labels: [],
        help: "Actions waiting for the control plane: in memory plus in the spool.")
    public static let spoolBytes = MetricName(
        name: "kaizen_egress_spool_bytes", type: "gauge", labels: [],
        help: "Bytes of undelivered actions in the spool on disk.")
    public static let deliveryDuration = MetricName(
        name: "kaizen_egress_delivery_duration_seconds", type: "histogram", labels: [],
        help: "Time for one batch of actions to be sent to and accepted by the control plane.")
    public static let delivered = MetricName(
        name: "kaizen_egress_actions_delivered_total", type: "counter", labels: [],
        help: "Actions the control plane accepted.")
    public static let dropped = MetricName(
        name: "kaizen_egress_actions_dropped_total", type: "counter", labels: ["stage"],
        help: "Actions the control plane does not have: queue (memory full), spool (KAIZEN_SPOOL_MAX_BYTES reached), disk (the spool could not be written, a full disk; or its directory was removed while the proxy ran), corrupt (a corrupt record found in the spool, at start or by a later read), dead_letter (refused for good, or failed five times while others were accepted: set aside in dead-letter.jsonl).")
    public static let deliveryFailures = MetricName(
        name: "kaizen_egress_delivery_failures_total", type: "counter", labels: ["reason"],
        help: "Failed delivery attempts: unreachable, unauthorized (401/403), unavailable (other status), rejected (400/413/422, one per action; the control plane stays reachable).")
    public static let controlPlaneReachable = MetricName(
        name: "kaizen_egress_control_plane_reachable", type: "gauge", labels: [],
        help: "1 when the last delivery round delivered actions (even if one action in it failed), 0 when a round did nothing (unreachable, unavailable, key refused).")
    public static let policyDecisions = MetricName(
        name: "kaizen_egress_policy_decisions_total", type: "counter", labels: ["decision"],
        help: "Policy decisions on reported actions: allow, block (enforce mode) or would_block (observe mode).")
    public static let policyFetches = MetricName(
        name: "kaizen_egress_policy_fetches_total", type: "counter", labels: ["outcome"],
        help: "Policy fetches: updated, not_modified, invalid (kept the last good), refused (401/403), unavailable.")

    public static let all: [MetricName] = [
        .connections, .connectionsEnded, .inspectedRequests, .bytes, .openConnections, .activeTunnels, .sniParse, .mintDuration, .mintFailures,
        .leafCache,
        .upstreamVerificationFailures, .upstreamHandshakeFailures, .upstreamHandshakes, .earlyUpstreamHandshakes, .upstreamReused, .idleUpstreams, .interceptFailures, .proxyAuthFailures, .connectionsRefused, .reporterQueue, .spoolBytes, .deliveryDuration, .delivered,
        .dropped, .deliveryFailures, .controlPlaneReachable, .policyDecisions, .policyFetches,
    ]
}
