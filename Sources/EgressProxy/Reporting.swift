import Audit
import ControlPlane
import Logging
import NIOCore
import NIOHTTP1
import Telemetry

/// What every connection handler needs to report: the agent name, the sink, the base logger, and the
/// destination baseline that marks an agent's first connection to a destination.
struct Reporting: Sendable {
    var agent: String
    var sink: any ActionSink
    var logger: Logger
    var baseline: DestinationBaseline? = nil
    /// Present with an API key: the control plane's policies, observed or enforced.
    var policy: PolicyCheck? = nil
    var metrics: ProxyMetrics? = nil
    /// `KAIZEN_LOG_FORMAT=json`: the per-connection line's fields as log metadata (JSON fields); in text they are
    /// written into the message in a fixed order.
    var structuredLogs = false
    /// Once-per-process hints naming the setting a new setup is likely missing (shared by every copy).
    var hints = OperatorHints()

    /// Records the action. A connection that reached a destination its agent never reached before is marked
    /// `first_seen` and logged; requests after the first inside one intercepted connection are not connections.
    /// `metadata` is consumed: the caller's last use of its copy moves here, not a copy of some thirty fields per request.
    func action(target: String, metadata: consuming ConnectMetadata, verdict: ConnectAction.Verdict = .observed) {
        var verdict = verdict
        if verdict == .observed, let policy, policy.enforcing {
            verdict = metadata.policy.map(Self.blocked) ?? (policy.hasPolicy(for: agent) ? Self.allowedByPolicy : Self.allowedWithoutPolicy)
        }
        if let baseline, metadata.outcome == .connected, metadata.connectionID.map({ $0 == metadata.eventID }) ?? true,
            baseline.observe(agent: agent, destination: target, now: WallClock.nowMillis())
        {
            metadata.firstSeen = true
            logger.notice(
                "agent \(Self.printable(agent)) connected to a destination it has never connected to (\(Self.printable(target)))"
            )
        }
        if let metrics { count(metadata, verdict: verdict, in: metrics) }
        sink.record(.action(ConnectAction(agent: agent, target: target, metadata: metadata, verdict: verdict)))
    }

    /// The metrics an action stands for: a connection or an inspected request, its peek, its policy decision,
    /// an inspection failure.
    private func count(_ metadata: ConnectMetadata, verdict: ConnectAction.Verdict, in metrics: ProxyMetrics) {
        let blocked = verdict.decision == "block"
        let isLaterRequest = metadata.connectionID.map { $0 != metadata.eventID } ?? false
        if !isLaterRequest {
            // An inspected connection's first request carries the connection's event id; a block of that request
            // is the request's, not the connection's.
            let connectionBlocked = blocked && metadata.intercepted != true
            let outcome = connectionBlocked ? "blocked" : metadata.outcome == .failed ? "failed" : "connected"
            metrics.connection(transport: metadata.transport.rawValue, outcome: outcome)
            if metadata.sni != nil {
                metrics.peek(outcome: "sni")
            } else if metadata.tls == false && metadata.sniError?.hasPrefix("not TLS") == true {
                metrics.peek(outcome: "not_tls")
            } else if metadata.tls == true && (metadata.sniError == nil || metadata.sniError == ClientHelloPeek.noServerName) {
                metrics.peek(outcome: "no_sni")
            } else if metadata.sniError != nil {
                // Nothing parseable: no bytes in time, or a ClientHello malformed, too large or too slow.
                metrics.peek(outcome: "none")
            }
        }
        let rejected = metadata.error?.hasPrefix("rejected") ?? false
        // A request: it has a method or a status, or it was refused before either was read (an HTTP/2 stream NIO found
        // malformed, say). A connection's own failure (the client refused the leaf) is not one.
        if metadata.connectionID != nil, metadata.method != nil || metadata.status != nil || rejected {
            let unsent = metadata.error?.contains("before it was sent upstream") ?? false
            metrics.inspectedRequest(outcome: blocked ? "blocked" : rejected ? "rejected" : unsent ? "unsent" : "forwarded")
        }
        switch metadata.inspection {
        case InterceptedConnection.upstreamNotTrusted: metrics.upstreamVerificationFailed()
        // An upstream requiring a client certificate is counted where it is found (its requests may be reported first).
        case InterceptedConnection.upstreamHandshakeFailed: metrics.upstreamHandshakeFailed()
        case "tls_intercept_failed": metrics.interceptFailed()
        default: break
        }
        if let policy {
            metrics.policyDecision(metadata.policy == nil ? "allow" : policy.enforcing ? "block" : "would_block")
        }
    }

    /// Enforce mode: no policy blocks the destination.
    static let allowedByPolicy = ConnectAction.Verdict(decision: "allow", reason: "allowed by policy")
    /// Enforce mode with no policy loaded for the agent yet, failing open: nothing judged it.
    static let allowedWithoutPolicy = ConnectAction.Verdict(decision: "allow", reason: "no policy loaded (KAIZEN_POLICY_FAIL=open)")

    /// What a refused destination's error says: the policy that blocks it, or that none was loaded (failing closed).
    static func blockedByPolicy(_ policy: String) -> String {
        policy == PolicyCheck.noPolicyReason || policy == PolicyCheck.unreadableServerNameReason
            || policy == PolicyCheck.unjudgedHostReason
            ? "destination blocked: \(policy)" : "destination blocked by policy \(printable(policy))"
    }

    /// The verdict for a connection the proxy refused by its own rules (the destination guard, the port list).
    static func blocked(_ reason: String) -> ConnectAction.Verdict {
        ConnectAction.Verdict(decision: "block", reason: reason)
    }

    /// `text` with control and non-ASCII characters escaped, so a hostile name cannot forge log lines.
    static func printable(_ text: String) -> String { LogText.printable(text) }

    func close(_ body: CloseRecord.Body) {
        metrics?.bytes(fromClient: body.bytesFromClient, toClient: body.bytesToClient)
        sink.record(.close(CloseRecord(agent: agent, close: body)))
    }

    /// A connection that failed (a dial, a refusal): reported and logged. `answeredWithStatus`: the client was
    /// answered with the failure's status (a CONNECT's `502`, say), not with a `200` and then a close.
    func connectionFailed(_ metadata: ConnectMetadata, target: String, _ failure: ProxyError, answeredWithStatus: Bool) {
        var metadata = metadata
        metadata.outcome = .failed
        metadata.error = failure.reason
        if answeredWithStatus { metadata.status = Int(failure.status.code) }
        action(
            target: target, metadata: metadata,
            verdict: failure.policy.map(Reporting.blocked) ?? (failure.blocked ? Reporting.blocked(failure.reason) : .observed))
        logConnection(metadata, target: target, mode: "none", close: nil, blockedByProxy: failure.blocked)
        if failure.exceptionOpens {
            hints.give(
                .privateDestination,
                "a destination was refused because it is on a private or local network (\(failure.reason)); to let agents reach such destinations, list them in KAIZEN_ALLOW_PRIVATE (--allow-private), for example 127.0.0.1 or 10.0.0.0/8",
                to: logger)
        }
    }

    /// The canonical line: one `info` line per connection (per exchange for plain HTTP) when it ends, with
    /// everything an operator asks about it: `connection agent=… client=… transport=… target=… sni=… mode=…
    /// decision=… outcome=… bytes_from_client=… bytes_to_client=… duration_ms=… closed_by=… reason=…`.
    /// `mode` is passthrough (relayed untouched), inspected, forwarded (plain HTTP) or none (never connected).
    func logConnection(
        _ metadata: ConnectMetadata,
        target: String,
        mode: String,
        close: CloseRecord.Body?,
        blockedByProxy: Bool = false,
        requests: Int? = nil,
        blockedRequests: Int = 0
    ) {
        let enforcedBlock = policy?.enforcing == true && metadata.policy != nil
        let blocked = blockedByProxy || enforcedBlock
        let outcome = blocked ? "blocked" : metadata.outcome == .failed ? "failed" : "connected"
        metrics?.connectionEnded(mode: mode, outcome: outcome)
        guard logger.logLevel <= .info else { return }
        var fields: [(String, String)] = [
            ("agent", Self.printable(agent)), ("client", metadata.client),
            ("transport", metadata.transport.rawValue), ("target", Self.printable(target)),
        ]
        fields.reserveCapacity(20)
        if let sni = metadata.sni { fields.append(("sni", Self.printable(sni))) }
        fields.append(("mode", mode))
        // Inspected: an upstream connection an earlier one opened and verified, or a resumed TLS session.
        if metadata.upstreamReusedFrom != nil {
            fields.append(("upstream", "reused"))
        } else if metadata.upstreamResumed == true {
            fields.append(("upstream", "resumed"))
        }
        fields.append(("decision", blocked ? "block" : "allow"))
        fields.append(("outcome", outcome))
        if let policy = metadata.policy { fields.append(("policy", Self.printable(policy))) }
        if metadata.wouldBlock == true { fields.append(("would_block", "true")) }
        if let requests { fields.append(("requests", String(requests))) }
        if blockedRequests > 0 { fields.append(("blocked_requests", String(blockedRequests))) }
        if let inspection = metadata.inspection { fields.append(("inspection", Self.printable(inspection))) }
        if let close {
            if let error = metadata.error { fields.append(("error", Self.printable(error))) }
            fields.append(("bytes_from_client", String(close.bytesFromClient)))
            fields.append(("bytes_to_client", String(close.bytesToClient)))
            fields.append(("duration_ms", String(close.durationMs)))
            fields.append(("closed_by", close.closedBy.rawValue))
            fields.append(("reason", Self.printable(close.reason)))
            if let status = close.status { fields.append(("status", String(status))) }
        } else {
            if let error = metadata.error { fields.append(("reason", Self.printable(error))) }
            if let status = metadata.status { fields.append(("status", String(status))) }
        }
        if structuredLogs {
            var values: Logger.Metadata = [:]
            for (key, value) in fields { values[key] = .string(value) }
            logger.info("connection", metadata: values)
        } else {
            // Text logs: the fields in a fixed order in the message itself (no metadata dictionary to build, merge
            // and sort per connection); a value with a space or a quote is quoted.
            var line = "connection"
            line.reserveCapacity(320)
            for (key, value) in fields {
                line += " "
                line += key
                line += "="
                line += Self.quotedIfNeeded(value)
            }
            logger.info("\(line)")
        }
    }

    /// `value`, or `"value"` with `"` and `\` escaped when it holds a space, a quote or a backslash.
    static func quotedIfNeeded(_ value: String) -> String {
        guard value.utf8.contains(where: { $0 == 0x20 || $0 == 0x22 || $0 == 0x5c }) || value.isEmpty else { return value }
        var out = "\""
        for character in value {
            if character == "\"" || character == "\\" { out += "\\" }
            out.append(character)
        }
        return out + "\""
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
