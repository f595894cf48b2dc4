import AccessControl
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// `KAIZEN_ALLOW_CLIENTS`: a client outside the ranges is closed at once, without a byte of response. Refusals
/// are logged at most once a minute, with how many there were, so a scan cannot flood the log.
final class ClientAdmission: Sendable {
    private let allowed: [CIDR]?
    private let refusals: RefusalLog

    init(allowed: [CIDR]?, logger: Logger) {
        self.allowed = allowed
        self.refusals = RefusalLog("refused a client outside KAIZEN_ALLOW_CLIENTS", logger: logger)
    }

    func admits(_ channel: any Channel) -> Bool {
        guard let allowed else { return true }
        if let ip = channel.remoteAddress?.ipAddress, let address = IPAddress(ip) {
            let plain = address.embeddedIPv4.first { $0.form == "IPv4-mapped" }?.address ?? address
            if allowed.contains(where: { $0.contains(address) || $0.contains(plain) }) { return true }
        }
        refusals.note(client: channel.remoteAddress)
        return false
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
