import Audit
import ControlPlane
import Logging
import NIOCore

/// What every connection handler needs to report: the agent name, the sink, the base logger, and the
/// destination baseline that marks an agent's first connection to a destination.
struct Reporting: Sendable {
    var agent: String
    var sink: any ActionSink
    var logger: Logger
    var baseline: DestinationBaseline? = nil
    /// Present with an API key: the control plane's policies, observed or enforced.
    var policy: PolicyCheck? = nil

    /// Records the action. A connection that reached a destination its agent never reached before is marked
    /// `first_seen` and logged; requests after the first inside one intercepted connection are not connections.
    func action(target: String, metadata: ConnectMetadata, verdict: ConnectAction.Verdict = .observed) {
        var metadata = metadata
        var verdict = verdict
        if verdict == .observed, let policy, policy.enforcing {
            verdict = metadata.policy.map(Self.blocked) ?? Self.allowedByPolicy
        }
        if let baseline, metadata.outcome == .connected, metadata.connectionID.map({ $0 == metadata.eventID }) ?? true,
            baseline.observe(agent: agent, destination: target, now: WallClock.nowMillis())
        {
            metadata.firstSeen = true
            logger.notice(
                "agent \(Self.printable(agent)) connected to a destination it has never connected to (\(Self.printable(target)))"
            )
        }
        sink.record(.action(ConnectAction(agent: agent, target: target, metadata: metadata, verdict: verdict)))
    }

    /// Enforce mode: no policy blocks the destination.
    static let allowedByPolicy = ConnectAction.Verdict(decision: "allow", reason: "allowed by policy")

    /// The verdict for a connection the proxy refused by its own rules (the destination guard, the port list).
    static func blocked(_ reason: String) -> ConnectAction.Verdict {
        ConnectAction.Verdict(decision: "block", reason: reason)
    }

    /// `text` with control and non-ASCII characters escaped (`\u{…}`), so a hostile name cannot forge log lines.
    static func printable(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value >= 0x7f }) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            if scalar.value < 0x20 || scalar.value >= 0x7f {
                out += "\\u{\(String(scalar.value, radix: 16))}"
            } else {
                out.unicodeScalars.append(scalar)
            }
        }
        return out
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
