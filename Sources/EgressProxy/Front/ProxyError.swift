import NIOHTTP1

/// A response the proxy itself generates, with the reason the client, the log and the action see.
struct ProxyError: Error, Hashable, Sendable {
    var status: HTTPResponseStatus
    /// A short explanation for the log, the action and (unless `clientReason` says less) the client; never contains
    /// secrets or request data beyond the target.
    var reason: String
    /// What the client is told instead of `reason`, when it must know less (the address a refused name resolves to).
    var clientReason: String? = nil
    /// The `Proxy-Status` error type (RFC 9209 §2.3).
    var proxyStatusError: String
    /// Whether the failure was already logged with its target (dial failures are), so answering it is not.
    var logged = false
    /// The proxy refused the destination by its own rules: the action says `decision: block`.
    var blocked = false
    /// A 407: the answer asks for `Proxy-Authorization`.
    var asksForCredentials = false
    /// Enforce mode: the policy that blocks the destination (the action's verdict reason).
    var policy: String? = nil
    /// The destination guard refused it, and `KAIZEN_ALLOW_PRIVATE` could open it.
    var exceptionOpens = false

    /// 403 for a destination a control-plane policy blocks (enforce mode).
    static func blockedByPolicy(_ policy: String) -> ProxyError {
        ProxyError(
            status: .forbidden, reason: Reporting.blockedByPolicy(policy),
            proxyStatusError: "http_request_denied", logged: true, blocked: true, policy: policy)
    }

    /// 407 Proxy Authentication Required.
    static let credentialsRequired = ProxyError(
        status: .proxyAuthenticationRequired, reason: "proxy authentication required",
        proxyStatusError: "http_request_denied", asksForCredentials: true)

    /// 403 for a CONNECT to a port outside `KAIZEN_CONNECT_PORTS`.
    static func portNotAllowed(_ port: Int) -> ProxyError {
        ProxyError(
            status: .forbidden, reason: "destination not allowed: CONNECT to port \(port) is not permitted",
            proxyStatusError: "http_request_denied", logged: true, blocked: true)
    }

    static func badRequest(_ reason: String) -> ProxyError {
        ProxyError(status: .badRequest, reason: reason, proxyStatusError: "http_request_error")
    }

    static func upstreamClosed(_ reason: String) -> ProxyError {
        ProxyError(
            status: .badGateway,
            reason: "upstream closed the connection before responding (\(reason))",
            proxyStatusError: "http_response_incomplete"
        )
    }

    /// 502 for a response that cannot be relayed as framed: a status outside 100–599, or a 101 no request asked for.
    static func unusableResponse(_ reason: String) -> ProxyError {
        ProxyError(status: .badGateway, reason: "unusable upstream response: \(reason)", proxyStatusError: "http_protocol_error")
    }

    static func dial(_ failure: UpstreamConnector.Failure) -> ProxyError {
        ProxyError(
            status: HTTPResponseStatus(statusCode: failure.status),
            reason: failure.reason,
            clientReason: failure.clientReason,
            proxyStatusError: failure.proxyStatusError,
            logged: true,
            blocked: failure.blocked,
            exceptionOpens: failure.exceptionOpens
        )
    }
}
