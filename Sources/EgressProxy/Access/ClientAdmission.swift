import AccessControl
import Logging
import NIOConcurrencyHelpers
import NIOCore

/// `KAIZEN_ALLOW_CLIENTS`: a client outside the ranges is closed at once, without a byte of response. Refusals
/// are logged at most once a minute, with how many there were, so a scan cannot flood the log.
final class ClientAdmission: Sendable {
    private let allowed: [CIDR]?
    private let logger: Logger
    private let refusals = NIOLockedValueBox<(count: Int, lastLog: NIODeadline?)>((0, nil))

    init(allowed: [CIDR]?, logger: Logger) {
        self.allowed = allowed
        self.logger = logger
    }

    func admits(_ channel: any Channel) -> Bool {
        guard let allowed else { return true }
        if let ip = channel.remoteAddress?.ipAddress, let address = IPAddress(ip) {
            let plain = address.embeddedIPv4.first { $0.form == "IPv4-mapped" }?.address ?? address
            if allowed.contains(where: { $0.contains(address) || $0.contains(plain) }) { return true }
        }
        let now = NIODeadline.now()
        let report: Int? = refusals.withLockedValue { state in
            state.count += 1
            guard state.lastLog.map({ now - $0 >= .seconds(60) }) ?? true else { return nil }
            defer { state = (0, now) }
            return state.count
        }
        if let report {
            logger.notice(
                "refused a client outside KAIZEN_ALLOW_CLIENTS",
                metadata: ["client.address": "\(Reporting.describe(channel.remoteAddress))", "refused_since_last_log": "\(report)"]
            )
        }
        return false
    }
}
