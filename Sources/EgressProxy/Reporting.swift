import ControlPlane
import Logging
import NIOCore

/// What every connection handler needs to report: the agent name, the sink, and the base logger.
struct Reporting: Sendable {
    var agent: String
    var sink: any ActionSink
    var logger: Logger

    func action(target: String, metadata: ConnectMetadata) {
        sink.record(.action(ConnectAction(agent: agent, target: target, metadata: metadata)))
    }

    func close(_ body: CloseRecord.Body) {
        sink.record(.close(CloseRecord(agent: agent, close: body)))
    }

    /// `ip:port`, `[ip]:port` for IPv6, for the action's `client` and `resolved_ip` fields.
    static func describe(_ address: SocketAddress?) -> String {
        guard let address, let ip = address.ipAddress else { return "unknown" }
        guard let port = address.port else { return ip }
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }
}

/// Milliseconds between two monotonic instants.
func milliseconds(from start: NIODeadline, to end: NIODeadline) -> UInt64 {
    UInt64(max(0, (end - start).nanoseconds / 1_000_000))
}
