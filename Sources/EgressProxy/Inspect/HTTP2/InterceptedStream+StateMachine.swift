/// One HTTP/2 stream inside an inspected connection: the request the client opened it with and the upstream's
/// response, frame by frame. Decides when the exchange is complete (then it is reported, once) and what a reset
/// or a close means for the other side. Pure: the stream handlers do the I/O.
struct InterceptedStreamStateMachine {
    typealias Exchange = InterceptedExchangeStateMachine.Exchange

    enum Action: Equatable {
        /// Pass the frame on to the other side.
        case forward
        /// Pass it on; the exchange is complete (or, for an extended CONNECT, established): report it.
        case forwardAndReport(Exchange)
        /// Not passed on (a frame that means nothing to the other side, or one after the exchange failed).
        case drop
    }

    enum Side: Equatable { case client, upstream }

    private(set) var exchange: Exchange?
    private var reported = false
    private(set) var requestEnded = false
    /// The upstream's END_STREAM has been read (the response is whole and on its way to the client).
    private(set) var responseEnded = false
    /// The response's END_STREAM has been written to the client: the exchange is complete only then, and its
    /// body bytes are those written, not those read (a client that stops reading leaves some in the proxy).
    private var responseDelivered = false
    /// An extended CONNECT (RFC 8441): after a 2xx the stream carries another protocol's bytes.
    private var tunnel = false
    private let reportQuery: Bool

    init(reportQuery: Bool) {
        self.reportQuery = reportQuery
    }

    /// Whether the request's first HEADERS have arrived.
    var hasRequest: Bool { exchange != nil }
    /// Whether the response's final status (not a 1xx) has arrived: later HEADERS are its trailers.
    var hasFinalStatus: Bool { exchange?.status != nil }
    var isReported: Bool { reported }

    /// The request's HEADERS (`:method`, `:path`, `:protocol` as sent), or its trailers when it has begun.
    mutating func requestHeaders(
        method: String?, path: String?, extendedProtocol: String?, hosts: [String] = [], endStream: Bool
    ) -> Action {
        if exchange == nil {
            var opened = Exchange(
                method: method ?? "",
                path: path.map { InterceptedExchangeStateMachine.reportedPath($0, keepQuery: reportQuery) } ?? "")
            opened.requestHosts = hosts
            if let extendedProtocol {
                tunnel = true
                opened.upgrade = extendedProtocol.lowercased()
            }
            exchange = opened
        }
        if endStream { requestEnded = true }
        return completeIfDone()
    }

    mutating func requestData(_ count: Int, endStream: Bool) -> Action {
        guard exchange != nil else { return .drop }
        if !reported { exchange!.requestBodyBytes &+= UInt64(count) }
        if endStream { requestEnded = true }
        return completeIfDone()
    }

    /// The response's HEADERS: an informational (1xx) head, the final head (`status`), or trailers.
    mutating func responseHeaders(status: Int?, endStream: Bool) -> Action {
        guard exchange != nil else { return .drop }
        if let status, exchange!.status == nil {
            if (100..<200).contains(status) { return .forward }  // 100 Continue, 103 Early Hints
            exchange!.status = status
            if tunnel, (200..<300).contains(status), !reported {
                // The tunnel is up: reported now, as an HTTP/1.1 upgrade is at its 101; what it carries is not.
                exchange!.upgraded = true
                reported = true
                if endStream { responseEnded = true }
                return .forwardAndReport(exchange!)
            }
        }
        if endStream { responseEnded = true }
        return .forward
    }

    /// DATA read from the upstream: passed on; its bytes count once written (`responseWritten`).
    mutating func responseData(endStream: Bool) -> Action {
        guard exchange != nil else { return .drop }
        if endStream { responseEnded = true }
        return .forward
    }

    /// `count` bytes of the response's body, and its end when `endStream`, were written to the client: the
    /// exchange to report when that completes it.
    mutating func responseWritten(_ count: Int, endStream: Bool) -> Exchange? {
        guard exchange != nil, !reported else { return nil }
        exchange!.responseBodyBytes &+= UInt64(count)
        if endStream { responseDelivered = true }
        guard case .forwardAndReport(let exchange) = completeIfDone() else { return nil }
        return exchange
    }

    /// The stream ended otherwise than by both END_STREAMs (a reset from `side`, an error, a connection closing):
    /// the exchange to report, when it was not reported yet.
    mutating func ended(_ why: String) -> (Exchange, error: String)? {
        guard let exchange, !reported else { return nil }
        reported = true
        return (exchange, why)
    }

    /// The proxy answered the request itself (`status`): the exchange to report.
    mutating func answered(status: Int) -> Exchange? {
        guard var exchange, !reported else { return nil }
        exchange.status = status
        reported = true
        self.exchange = exchange
        return exchange
    }

    private mutating func completeIfDone() -> Action {
        guard !reported, requestEnded, responseDelivered, let exchange else { return .forward }
        reported = true
        return .forwardAndReport(exchange)
    }
}
