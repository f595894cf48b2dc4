import AccessControl
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Telemetry

/// Whether a new connection may be served, for every listener: `KAIZEN_ALLOW_CLIENTS` first (a client outside the
/// ranges is closed at once, without a byte of response), then the connection limits (tracked from here on).
/// Refusals of each kind are logged at most once a minute, with how many there were, so a scan cannot flood the log.
final class ClientAdmission: Sendable {
    enum Refusal {
        /// Close without answering.
        case outsideAllowedClients
        /// Past the connection limits: a client that speaks HTTP gets a 503.
        case busy
    }

    private let tracker: ConnectionTracker
    private let outside: RefusalLog
    private let overload: RefusalLog
    private let metrics: ProxyMetrics?

    init(tracker: ConnectionTracker, logger: Logger, metrics: ProxyMetrics?) {
        self.tracker = tracker
        self.metrics = metrics
        self.outside = RefusalLog("refused a client outside KAIZEN_ALLOW_CLIENTS", logger: logger)
        self.overload = RefusalLog("refused a connection: too many open", logger: logger)
    }

    /// Nil when `channel` is admitted (and now tracked), or why not. `allowed`: the client ranges in force
    /// (nil: any client).
    func admit(_ channel: any Channel, allowed: [CIDR]?) -> Refusal? {
        if let allowed, !Self.contains(allowed, channel.remoteAddress) {
            outside.note(client: channel.remoteAddress)
            metrics?.connectionRefused(reason: "outside_allowed_clients")
            return .outsideAllowedClients
        }
        if let refusal = tracker.add(channel) {
            overload.note(client: channel.remoteAddress, reason: "\(refusal)")
            switch refusal {
            case .total: metrics?.connectionRefused(reason: "max_connections")
            case .perClient: metrics?.connectionRefused(reason: "max_connections_per_client")
            }
            return .busy
        }
        return nil
    }

    private static func contains(_ ranges: [CIDR], _ address: SocketAddress?) -> Bool {
        guard let ip = address?.ipAddress, let parsed = IPAddress(ip) else { return false }
        let plain = parsed.embeddedIPv4.first { $0.form == "IPv4-mapped" }?.address ?? parsed
        return ranges.contains { $0.contains(parsed) || $0.contains(plain) }
    }
}

/// Logs a kind of refusal at most once a minute, with how many there were since the last line: a flood of them
/// (a scan, a connection storm) cannot flood the log.
final class RefusalLog: Sendable {
    private let message: String
    private let logger: Logger
    private let state = NIOLockedValueBox<(count: Int, lastLog: NIODeadline?)>((0, nil))

    init(_ message: String, logger: Logger) {
        self.message = message
        self.logger = logger
    }

    func note(client: SocketAddress?, reason: String? = nil) {
        let now = NIODeadline.now()
        let report: Int? = state.withLockedValue { state in
            state.count += 1
            guard state.lastLog.map({ now - $0 >= .seconds(60) }) ?? true else { return nil }
            defer { state = (0, now) }
            return state.count
        }
        guard let report else { return }
        var metadata: Logger.Metadata = [
            "client.address": "\(Reporting.describe(client))", "refused_since_last_log": "\(report)",
        ]
        if let reason { metadata["reason"] = "\(reason)" }
        logger.notice("\(message)", metadata: metadata)
    }
}
