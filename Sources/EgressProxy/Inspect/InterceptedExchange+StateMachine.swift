import Foundation
import NIOHTTP1

/// The HTTP/1.1 exchanges inside one intercepted connection: one request at a time (the next is read only
/// once the response to this one has ended), each reported when it ends. Pure: the handlers do the I/O.
package struct InterceptedExchangeStateMachine {
    /// One request and its response, as reported.
    struct Exchange: Equatable {
        var method: String
        var path: String
        var requestBodyBytes: UInt64 = 0
        var responseBodyBytes: UInt64 = 0
        var status: Int?
        var requestEnded = false
        var responseEnded = false
        /// Either side asked to close after this exchange.
        var closeAfter = false
        /// The upstream switched protocols (101): the connection becomes a two-way byte relay.
        var upgraded = false
        /// The protocol the request asked to switch to (its `Upgrade` header, or an HTTP/2 `:protocol`).
        var upgrade: String?
        /// The hosts the request named, in order: an absolute-form URI's authority and its Host (HTTP/2:
        /// `:authority` and the `host` fields), without ports. The first that is not the connection's is reported.
        var requestHosts: [String] = []
    }

    enum Action: Equatable {
        case none
        /// Pass this part on to the other side.
        case forward
        /// Pass it on; the exchange is complete: report it, then read the next request (or close).
        case forwardAndComplete(Exchange, thenClose: Bool)
        /// Pass it on; the exchange is complete (report it) and the connection is now a raw relay.
        case forwardAndUpgrade(Exchange)
        /// A request the proxy will not forward: answer 400 with the reason, report it, close.
        case reject(reason: String)
        /// Nothing more can happen on this connection: close both sides (the part is dropped).
        case close
    }

    private(set) var current: Exchange?
    private(set) var completed = 0
    private var closed = false
    private let reportQuery: Bool

    init(reportQuery: Bool) {
        self.reportQuery = reportQuery
    }

    /// Whether the client side may be read: not while a complete request waits for its response.
    var mayReadClient: Bool {
        guard !closed else { return false }
        guard let current else { return true }
        return !current.requestEnded
    }

    mutating func requestHead(_ head: HTTPRequestHead) -> Action {
        guard !closed, current == nil else { return .close }
        if let problem = Self.problem(with: head) {
            closed = true
            current = Exchange(method: head.method.rawValue, path: Self.reportedPath(head.uri, keepQuery: reportQuery))
            return .reject(reason: problem)
        }
        var exchange = Exchange(method: head.method.rawValue, path: Self.reportedPath(head.uri, keepQuery: reportQuery))
        exchange.closeAfter = !head.isKeepAlive
        exchange.upgrade = head.headers.first(name: "upgrade")?.lowercased()
        exchange.requestHosts = Self.requestedHosts(head)
        current = exchange
        return .forward
    }

    mutating func requestBody(_ count: Int) -> Action {
        guard !closed, current != nil else { return .close }
        current!.requestBodyBytes &+= UInt64(count)
        return .forward
    }

    mutating func requestEnd() -> Action {
        guard !closed, current != nil else { return .close }
        current!.requestEnded = true
        return completeIfDone()
    }

    mutating func responseHead(_ head: HTTPResponseHead) -> Action {
        guard !closed, current != nil else { return .close }
        // 1xx responses (100 Continue) are passed on; the final response comes after them.
        if head.status.code >= 100 && head.status.code < 200 && head.status.code != 101 { return .forward }
        current!.status = Int(head.status.code)
        if head.status == .switchingProtocols {
            current!.upgraded = true
        } else if !head.isKeepAlive {
            current!.closeAfter = true
        }
        return .forward
    }

    mutating func responseBody(_ count: Int) -> Action {
        guard !closed, current != nil else { return .close }
        current!.responseBodyBytes &+= UInt64(count)
        return .forward
    }

    mutating func responseEnd() -> Action {
        guard !closed, current != nil else { return .close }
        guard current!.status != nil else { return .forward }  // the end of an informational response
        current!.responseEnded = true
        return completeIfDone()
    }

    /// The connection ended; returns the exchange cut short, if one was open.
    mutating func connectionClosed() -> Exchange? {
        closed = true
        defer { current = nil }
        return current
    }

    private mutating func completeIfDone() -> Action {
        guard let exchange = current, exchange.requestEnded, exchange.responseEnded else { return .forward }
        current = nil
        completed += 1
        if exchange.upgraded {
            closed = true  // no more HTTP on this connection
            return .forwardAndUpgrade(exchange)
        }
        if exchange.closeAfter { closed = true }
        return .forwardAndComplete(exchange, thenClose: exchange.closeAfter)
    }

    /// Requests the proxy refuses to forward because the two ends could read them differently.
    package static func problem(with head: HTTPRequestHead) -> String? {
        let lengths = head.headers[canonicalForm: "content-length"]
        let encodings = head.headers[canonicalForm: "transfer-encoding"]
        if !lengths.isEmpty && !encodings.isEmpty {
            return "both Content-Length and Transfer-Encoding"
        }
        if lengths.count > 1 || (head.headers["content-length"].count > 1) {
            return "more than one Content-Length"
        }
        if let length = lengths.first, length.isEmpty || !length.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) {
            return "an invalid Content-Length"
        }
        if !encodings.isEmpty, encodings.map({ $0.lowercased() }) != ["chunked"] {
            return "a Transfer-Encoding other than chunked"
        }
        if head.version != .http1_1 && head.version != .http1_0 {
            return "an unsupported HTTP version"
        }
        if !encodings.isEmpty && head.version == .http1_0 {
            // HTTP/1.0 has no chunked coding: an HTTP/1.0 server would read the chunks as the body's bytes.
            return "Transfer-Encoding in an HTTP/1.0 request"
        }
        if head.headers["host"].count > 1 {
            // RFC 9112 §3.2: a request with more than one Host is invalid; two could name two destinations.
            return "more than one Host header"
        }
        if head.uri.contains("#") {
            // A request target has no fragment (RFC 9112 §3.2); forwarding one would send what is not reported.
            return "a fragment in the request target"
        }
        return nil
    }

    /// The hosts a request names: an absolute-form URI's authority (an origin routes by it, RFC 9112 §3.2.2), then
    /// its Host header; without ports.
    static func requestedHosts(_ head: HTTPRequestHead) -> [String] {
        [absoluteFormHost(head.uri), Destination.hostWithoutPort(head.headers.first(name: "host"))].compactMap { $0 }
    }

    /// The host of an absolute-form request target (`https://host:port/path`), without a port.
    static func absoluteFormHost(_ uri: String) -> String? {
        // Origin-form ("/path") first: most requests, and no search through the target.
        guard uri.first != "/", let schemeEnd = uri.range(of: "://") else { return nil }
        let authority = uri[schemeEnd.upperBound...].prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        return Destination.hostWithoutPort(authority.split(separator: "@").last.map(String.init) ?? "")
    }

    /// The path as reported: the request target without its query (unless kept) and fragment.
    static func reportedPath(_ uri: String, keepQuery: Bool) -> String {
        var path = Substring(uri)
        // Absolute form: the path only. The host is `request_host` when it is not the connection's; userinfo
        // (`user:password@`) is never reported.
        if path.first != "/", let schemeEnd = path.range(of: "://") {
            let rest = path[schemeEnd.upperBound...]
            let pathStart = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
            path = rest[pathStart...]
            if path.first != "/" { path = "/" + path }
        }
        if let hash = path.firstIndex(of: "#") { path = path[..<hash] }
        if !keepQuery, let question = path.firstIndex(of: "?") { path = path[..<question] }
        return String(path)
    }
}
