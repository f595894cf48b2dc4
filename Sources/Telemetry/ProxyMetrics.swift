public import CoreMetrics

/// The proxy's metrics as the rest of the proxy records them: one method per event, over handles made once
/// from a `MetricsFactory` (the Prometheus one in the binary, a test's own in tests). Every label value comes
/// from a small fixed vocabulary, never from traffic, so the handles are all made up front and the data path
/// takes no lock to find one.
public final class ProxyMetrics: Sendable {
    public static let transports = ["connect", "http", "transparent"]
    public static let connectionOutcomes = ["connected", "failed", "blocked"]
    public static let modes = ["passthrough", "inspected", "forwarded", "none"]
    public static let requestOutcomes = ["forwarded", "rejected", "blocked", "unsent"]
    public static let peekOutcomes = ["sni", "no_sni", "not_tls", "none"]
    public static let policyDecisions = ["allow", "block", "would_block"]
    public static let policyFetchOutcomes = ["updated", "not_modified", "invalid", "refused", "unavailable"]
    public static let dropStages = ["queue", "spool", "disk", "corrupt", "dead_letter"]
    public static let deliveryFailureReasons = ["unreachable", "unauthorized", "unavailable", "rejected"]
    public static let proxyAuthFailureReasons = ["missing", "malformed", "invalid", "duplicate"]
    public static let connectionRefusalReasons = ["outside_allowed_clients", "max_connections", "max_connections_per_client"]

    private let connections: [String: Counter]
    private let ended: [String: Counter]
    private let inspectedRequests: [String: Counter]
    private let peeks: [String: Counter]
    private let decisions: [String: Counter]
    private let fetches: [String: Counter]
    private let drops: [String: Counter]
    private let deliveryFailures: [String: Counter]
    private let proxyAuthFailures: [String: Counter]
    private let connectionRefusals: [String: Counter]
    private let bytesFromClient: Counter
    private let bytesToClient: Counter
    private let openConnections: Meter
    private let idleUpstreams: Meter
    private let passthroughTunnels: Meter
    private let inspectedTunnels: Meter
    private let leafHits: Counter
    private let leafMisses: Counter
    private let fullUpstreamHandshakes: Counter
    private let resumedUpstreamHandshakes: Counter
    private let usedEarlyHandshakes: Counter
    private let discardedEarlyHandshakes: Counter
    private let reusedUpstreams: Counter
    private let mintDuration: CoreMetrics.Timer
    private let mintFailures: Counter
    private let upstreamVerificationFailures: Counter
    private let upstreamHandshakeFailures: Counter
    private let interceptFailures: Counter
    private let reporterQueue: Meter
    private let spoolBytes: Meter
    private let deliveryDuration: CoreMetrics.Timer
    private let delivered: Counter
    private let controlPlaneReachable: Meter

    public init(factory: any MetricsFactory) {
        func counters(_ metric: MetricName, _ values: [String]) -> [String: Counter] {
            Dictionary(uniqueKeysWithValues: values.map { ($0, Counter(label: metric.name, dimensions: [(metric.labels[0], $0)], factory: factory)) })
        }
        /// One counter per pair of values of a metric's two labels, keyed `first/second`.
        func grid(_ metric: MetricName, _ firsts: [String], _ seconds: [String]) -> [String: Counter] {
            var counters: [String: Counter] = [:]
            for first in firsts {
                for second in seconds {
                    counters[first + "/" + second] = Counter(
                        label: metric.name, dimensions: [(metric.labels[0], first), (metric.labels[1], second)],
                        factory: factory)
                }
            }
            return counters
        }
        connections = grid(.connections, Self.transports, Self.connectionOutcomes)
        ended = grid(.connectionsEnded, Self.modes, Self.connectionOutcomes)
        inspectedRequests = counters(.inspectedRequests, Self.requestOutcomes)
        peeks = counters(.sniParse, Self.peekOutcomes)
        decisions = counters(.policyDecisions, Self.policyDecisions)
        fetches = counters(.policyFetches, Self.policyFetchOutcomes)
        drops = counters(.dropped, Self.dropStages)
        deliveryFailures = counters(.deliveryFailures, Self.deliveryFailureReasons)
        proxyAuthFailures = counters(.proxyAuthFailures, Self.proxyAuthFailureReasons)
        connectionRefusals = counters(.connectionsRefused, Self.connectionRefusalReasons)
        bytesFromClient = Counter(label: MetricName.bytes.name, dimensions: [("direction", "from_client")], factory: factory)
        bytesToClient = Counter(label: MetricName.bytes.name, dimensions: [("direction", "to_client")], factory: factory)
        openConnections = Meter(label: MetricName.openConnections.name, factory: factory)
        idleUpstreams = Meter(label: MetricName.idleUpstreams.name, factory: factory)
        passthroughTunnels = Meter(label: MetricName.activeTunnels.name, dimensions: [("kind", "passthrough")], factory: factory)
        inspectedTunnels = Meter(label: MetricName.activeTunnels.name, dimensions: [("kind", "inspected")], factory: factory)
        leafHits = Counter(label: MetricName.leafCache.name, dimensions: [("result", "hit")], factory: factory)
        leafMisses = Counter(label: MetricName.leafCache.name, dimensions: [("result", "miss")], factory: factory)
        fullUpstreamHandshakes = Counter(
            label: MetricName.upstreamHandshakes.name, dimensions: [("kind", "full")], factory: factory)
        resumedUpstreamHandshakes = Counter(
            label: MetricName.upstreamHandshakes.name, dimensions: [("kind", "resumed")], factory: factory)
        reusedUpstreams = Counter(label: MetricName.upstreamReused.name, factory: factory)
        usedEarlyHandshakes = Counter(
            label: MetricName.earlyUpstreamHandshakes.name, dimensions: [("outcome", "used")], factory: factory)
        discardedEarlyHandshakes = Counter(
            label: MetricName.earlyUpstreamHandshakes.name, dimensions: [("outcome", "discarded")], factory: factory)
        mintDuration = CoreMetrics.Timer(label: MetricName.mintDuration.name, factory: factory)
        mintFailures = Counter(label: MetricName.mintFailures.name, factory: factory)
        upstreamVerificationFailures = Counter(label: MetricName.upstreamVerificationFailures.name, factory: factory)
        upstreamHandshakeFailures = Counter(label: MetricName.upstreamHandshakeFailures.name, factory: factory)
        interceptFailures = Counter(label: MetricName.interceptFailures.name, factory: factory)
        reporterQueue = Meter(label: MetricName.reporterQueue.name, factory: factory)
        spoolBytes = Meter(label: MetricName.spoolBytes.name, factory: factory)
        deliveryDuration = CoreMetrics.Timer(label: MetricName.deliveryDuration.name, factory: factory)
        delivered = Counter(label: MetricName.delivered.name, factory: factory)
        controlPlaneReachable = Meter(label: MetricName.controlPlaneReachable.name, factory: factory)
        // Every series exists from the start (at zero), so a dashboard or an alert sees it before the first event.
        passthroughTunnels.set(0)
        inspectedTunnels.set(0)
        openConnections.set(0)
        idleUpstreams.set(0)
    }

    // MARK: connections

    /// A connection (or plain-HTTP request) reported: `transport` connect/http/transparent, `outcome`
    /// connected/failed/blocked.
    public func connection(transport: String, outcome: String) {
        connections[transport + "/" + outcome]?.increment()
    }

    /// A connection ended: `mode` passthrough/inspected/forwarded/none, `outcome` connected/failed/blocked.
    public func connectionEnded(mode: String, outcome: String) {
        ended[mode + "/" + outcome]?.increment()
    }

    /// A request proxy authentication refused: `reason` one of `proxyAuthFailureReasons`.
    public func proxyAuthFailed(reason: String) { proxyAuthFailures[reason]?.increment() }

    /// A client connection refused on arrival: `reason` one of `connectionRefusalReasons`.
    public func connectionRefused(reason: String) { connectionRefusals[reason]?.increment() }

    public func inspectedRequest(outcome: String) { inspectedRequests[outcome]?.increment() }
    public func peek(outcome: String) { peeks[outcome]?.increment() }

    public func bytes(fromClient: UInt64, toClient: UInt64) {
        if fromClient > 0 { bytesFromClient.increment(by: Int64(clamping: fromClient)) }
        if toClient > 0 { bytesToClient.increment(by: Int64(clamping: toClient)) }
    }

    public func tunnelOpened(inspected: Bool) { (inspected ? inspectedTunnels : passthroughTunnels).increment() }
    public func tunnelClosed(inspected: Bool) { (inspected ? inspectedTunnels : passthroughTunnels).decrement() }
    public func setOpenConnections(_ count: Int) { openConnections.set(count) }

    // MARK: inspection

    public func leafLookup(hit: Bool) { (hit ? leafHits : leafMisses).increment() }
    public func upstreamHandshake(resumed: Bool) {
        (resumed ? resumedUpstreamHandshakes : fullUpstreamHandshakes).increment()
    }
    public func upstreamReused() { reusedUpstreams.increment() }
    /// An upstream handshake begun before the client's ClientHello was in served its connection (`used`), or was
    /// closed because the ClientHello asked for something else, or none came (`discarded`).
    public func earlyUpstreamHandshake(used: Bool) { (used ? usedEarlyHandshakes : discardedEarlyHandshakes).increment() }
    /// Every pool (a reload starts a new one while the old one empties) adds its own changes.
    public func idleUpstreamsChanged(by delta: Int) {
        if delta > 0 { idleUpstreams.increment(by: Double(delta)) } else if delta < 0 { idleUpstreams.decrement(by: Double(-delta)) }
    }
    public func leafMinted(since start: ContinuousClock.Instant) { mintDuration.record(since: start) }
    public func leafMintFailed() { mintFailures.increment() }
    public func upstreamVerificationFailed() { upstreamVerificationFailures.increment() }
    public func upstreamHandshakeFailed() { upstreamHandshakeFailures.increment() }
    public func interceptFailed() { interceptFailures.increment() }

    // MARK: reporting

    public func setReporterQueue(_ depth: Int) { reporterQueue.set(depth) }
    public func setSpoolBytes(_ bytes: Int64) { spoolBytes.set(bytes) }

    public func delivered(_ count: Int, since start: ContinuousClock.Instant) {
        delivered.increment(by: count)
        deliveryDuration.record(since: start)
        controlPlaneReachable.set(1)
    }

    /// - Parameter reachable: true when the round failed one action but did others: the control plane works, and
    ///   the gauge stays up (it must not flip every round).
    public func deliveryFailed(reason: String, reachable: Bool = false) {
        deliveryFailures[reason]?.increment()
        controlPlaneReachable.set(reachable ? 1 : 0)
    }

    /// The control plane refused an action for good (400, 413, 422): a failed attempt, though the control plane
    /// is reachable.
    public func deliveryRejected() {
        deliveryFailures["rejected"]?.increment()
    }

    public func dropped(_ count: Int, stage: String) {
        guard count > 0 else { return }
        drops[stage]?.increment(by: count)
    }

    // MARK: policy

    public func policyDecision(_ decision: String) { decisions[decision]?.increment() }
    public func policyFetch(_ outcome: String) { fetches[outcome]?.increment() }
}

extension CoreMetrics.Timer {
    /// Records the time from `start` to now.
    func record(since start: ContinuousClock.Instant) {
        let elapsed = ContinuousClock.now - start
        recordNanoseconds(elapsed.components.seconds * 1_000_000_000 + elapsed.components.attoseconds / 1_000_000_000)
    }
}
