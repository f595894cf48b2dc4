import HTTP1Codec
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
        /// The client asked to close after this exchange (`Connection: close`, or HTTP/1.0 without keep-alive).
        var clientCloses = false
        /// The upstream's response ends its connection (`Connection: close`, or a body that runs until the close).
        var upstreamCloses = false
        /// The response's body has no length and is not chunked: it ends where the upstream's connection does.
        var closeDelimited = false
        /// The upstream switched protocols (101): the connection becomes a two-way byte relay.
        var upgraded = false
        /// The protocol the request asked to switch to (its `Upgrade` header, or an HTTP/2 `:protocol`).
        var upgrade: String?
        /// The hosts the request named, in order: an absolute-form URI's authority and its Host (HTTP/2:
        /// `:authority` and the `host` fields), without ports. The first that is not the connection's is reported.
        var requestHosts: [String] = []
    }

    /// Heads of the current exchange's response read so far, interim (1xx) ones included.
    private var responseHeads = 0

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
        /// The upstream's response will not be relayed (it broke a limit): not passed on; the client is told (a 502
        /// when no final head went to it), the exchange reported with the reason, the connection closed.
        case refuseResponse(reason: String)
    }

    /// Heads one response may have, its 1xx interim responses included: as many as the HEADERS frames an HTTP/2 stream
    /// may carry from the upstream (`HTTP2FrameCounter.headersPerStream`), so an upstream that sends 1xx responses
    /// without end holds a connection no longer on either protocol.
    static let responseHeadLimit = HTTP2FrameCounter.headersPerStream

    private(set) var current: Exchange?
    private(set) var completed = 0
    /// A request or response of connection-bound authentication (NTLM, Negotiate) went through: the upstream
    /// connection belongs to this client connection only, never to another (RFC 4559 §6 and the like).
    private(set) var upstreamBound = false
    /// Whether the upstream connection may serve another client connection once this one's exchanges are over
    /// (`UpstreamPool`): not once it is bound (above), a response ended it (`Connection: close`, a body that runs
    /// until the close), it was asked to close (`upstreamAskedToClose`), or an upgrade took it over.
    var upstreamReusable: Bool { !upstreamBound && !upstreamEnding }
    private var upstreamEnding = false

    /// A request went to the upstream asking it to close after its response (an HTTP/1.0 request without
    /// keep-alive, or a `Connection: close` that was passed on).
    mutating func upstreamAskedToClose() { upstreamEnding = true }
    private var closed = false
    private let reportQuery: Bool
    /// The host the connection was opened to (the CONNECT host, lowercase): a Host that names it needs no parsing.
    private let connectionHost: String?

    init(reportQuery: Bool, connectionHost: String? = nil) {
        self.reportQuery = reportQuery
        self.connectionHost = connectionHost
    }

    /// Whether the client side may be read: not while a complete request waits for its response.
    var mayReadClient: Bool {
        guard !closed else { return false }
        guard let current else { return true }
        return !current.requestEnded
    }

    mutating func requestHead(_ head: HTTP1Head) -> Action {
        guard !closed, current == nil else { return .close }
        let fields = RequestFields(head, connectionHost: connectionHost)
        let target = head.target
        var exchange = Exchange(method: head.method, path: Self.reportedPath(target, keepQuery: reportQuery))
        if let problem = Self.problem(with: head, target: target, fields: fields) {
            closed = true
            current = exchange
            return .reject(reason: problem)
        }
        exchange.clientCloses = !HTTP1Head.keepsAlive(version: head.version, fields.connection)
        exchange.closeAfter = exchange.clientCloses
        if fields.connectionBoundAuthorization { upstreamBound = true }
        exchange.upgrade = fields.upgrade?.lowercased()
        if fields.hostIsConnections, let connectionHost, target.utf8.first == UInt8(ascii: "/") {
            exchange.requestHosts = [connectionHost]  // the usual request: origin-form, Host naming the connection's
        } else {
            exchange.requestHosts = Self.requestedHosts(uri: target, host: fields.host)
        }
        current = exchange
        responseHeads = 0
        return .forward
    }

    /// What an inspected request head's fields say for framing, routing and reporting, found in one pass over
    /// them; a field is compared by name only when its name has the length of one the proxy reads.
    struct RequestFields {
        var hostCount = 0
        /// The first Host field's value.
        var host: String?
        /// The first Upgrade field's value.
        var upgrade: String?
        /// A Content-Length or Transfer-Encoding field is present.
        var framed = false
        /// The transfer codings of all Transfer-Encoding fields, and whether each is `chunked`.
        var codings = 0
        var onlyChunked = true
        /// An Authorization field of a scheme that authenticates the connection rather than the request.
        var connectionBoundAuthorization = false
        /// The Connection fields' options (keep-alive, close).
        var connection = HTTP1Head.ConnectionOptions()
        /// A Connection or Proxy-Connection field names a framing field (lowercase): it would be dropped on the way.
        var namesFramingField: String?

        /// The first Host names `connectionHost` (in any case, with or without a port).
        var hostIsConnections = false

        init(_ head: HTTP1Head, connectionHost: String? = nil) {
            for index in head.fields.indices {
                switch head.fieldNameLength(index) {
                case 4 where head.nameIs(index, "host"):
                    hostCount += 1
                    guard host == nil else { break }
                    if let connectionHost, head.withValue(index, { Self.names(connectionHost, hostField: $0) }) {
                        hostIsConnections = true
                        host = connectionHost
                    } else {
                        host = head.value(index)
                    }
                case 7 where head.nameIs(index, "upgrade"):
                    if upgrade == nil { upgrade = head.value(index) }
                case 14 where head.nameIs(index, "content-length"):
                    framed = true
                case 17 where head.nameIs(index, "transfer-encoding"):
                    framed = true
                    head.forEachElement(ofField: index) { coding in
                        codings += 1
                        if !HTTP1Head.equalsLowercase(coding, "chunked") { onlyChunked = false }
                    }
                case 13 where head.nameIs(index, "authorization"), 19 where head.nameIs(index, "proxy-authorization"):
                    if InterceptedExchangeStateMachine.isConnectionBound(scheme: head.value(index)) {
                        connectionBoundAuthorization = true
                    }
                case 10 where head.nameIs(index, "connection"), 16 where head.nameIs(index, "proxy-connection"):
                    let isConnection = head.fieldNameLength(index) == 10
                    head.forEachElement(ofField: index) { option in
                        if HTTP1Head.equalsLowercase(option, "content-length") {
                            namesFramingField = "content-length"
                        } else if HTTP1Head.equalsLowercase(option, "transfer-encoding") {
                            namesFramingField = "transfer-encoding"
                        } else if isConnection, HTTP1Head.equalsLowercase(option, "close") {
                            connection.close = true
                        } else if isConnection, HTTP1Head.equalsLowercase(option, "keep-alive") {
                            connection.keepAlive = true
                        }
                    }
                default:
                    break
                }
            }
        }

        /// Whether a Host value is `host` (lowercase) in any case, then nothing or a port.
        static func names(_ host: String, hostField value: UnsafeRawBufferPointer) -> Bool {
            var host = host
            return host.withUTF8 { host in
                guard value.count >= host.count else { return false }
                for i in 0..<host.count {
                    var byte = value[i]
                    if byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z") { byte |= 0x20 }
                    if byte != host[i] { return false }
                }
                guard value.count > host.count else { return true }
                guard value[host.count] == UInt8(ascii: ":"), value.count > host.count + 1 else { return false }
                return value[(host.count + 1)...].allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
            }
        }
    }

    /// The first protocol an `Upgrade` value offers that is not WebSocket (printable, at most 64 characters), or nil.
    static func upgradeOtherThanWebSocket(_ value: String) -> String? {
        for offer in value.split(separator: ",") {
            var name = offer.split(separator: "/", maxSplits: 1).first ?? ""
            while name.first == " " || name.first == "\t" { name = name.dropFirst() }
            while name.last == " " || name.last == "\t" { name = name.dropLast() }
            if name.lowercased() != "websocket" { return Reporting.printable(String(name.prefix(64))) }
        }
        return nil
    }

    /// Requests the proxy refuses to forward because the two ends could read them differently. The codec has
    /// refused what it cannot frame (both length fields, several or invalid lengths, codings that do not end in
    /// one `chunked`); these are the rest.
    package static func problem(with head: HTTP1Head) -> String? {
        problem(with: head, target: head.target, fields: RequestFields(head))
    }

    static func problem(with head: HTTP1Head, target: String, fields: RequestFields) -> String? {
        if head.methodIs("CONNECT") {
            // A tunnel inside a tunnel: after it the connection would carry bytes no one parses or reports, and the
            // proxy's own port is where tunnels are opened (and judged).
            return "a CONNECT inside an inspected connection"
        }
        if let upgrade = fields.upgrade, let other = Self.upgradeOtherThanWebSocket(upgrade) {
            // After a 101 the connection is relayed as bytes: WebSocket messages stay with the host the request named,
            // but h2c would carry requests no one judges or reports, and connect-udp (RFC 9298) traffic to any host.
            return "an Upgrade to \(other), which inspection does not relay"
        }
        if fields.codings > 0 && (fields.codings != 1 || !fields.onlyChunked) {
            return "a Transfer-Encoding other than chunked"
        }
        if fields.framed, let named = fields.namesFramingField {
            // A field named in Connection is dropped on the way (RFC 9110 §7.6.1): the body would go on unframed.
            return "Connection names \(named)"
        }
        if fields.codings > 0 && head.version.minor == 0 {
            // HTTP/1.0 has no chunked coding: an HTTP/1.0 server would read the chunks as the body's bytes.
            return "Transfer-Encoding in an HTTP/1.0 request"
        }
        if fields.hostCount > 1 {
            // RFC 9112 §3.2: a request with more than one Host is invalid; two could name two destinations.
            return "more than one Host header"
        }
        if !fields.hostIsConnections, let host = fields.host, !Destination.isValidHostField(host) {
            // RFC 9112 §3.2: an invalid Host is refused; a lenient upstream could read a name in it no one judged.
            return "an invalid Host"
        }
        if let authority = absoluteFormAuthority(target), !Destination.isValidHostField(String(authority)) {
            return "an invalid authority in the request target"
        }
        if target.utf8.contains(UInt8(ascii: "#")) {
            // A request target has no fragment (RFC 9112 §3.2); forwarding one would send what is not reported.
            return "a fragment in the request target"
        }
        return nil
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

    mutating func responseHead(_ head: HTTP1Head) -> Action {
        guard !closed, current != nil else { return .close }
        responseHeads += 1
        if responseHeads > Self.responseHeadLimit {
            closed = true
            upstreamEnding = true
            return .refuseResponse(
                reason: "more than \(Self.responseHeadLimit) heads in one response (1xx interim responses included)")
        }
        // 1xx responses (100 Continue) are passed on; the final response comes after them.
        if head.status >= 100 && head.status < 200 && head.status != 101 { return .forward }
        current!.status = head.status
        if head.status == 101 {
            current!.upgraded = true
            upstreamEnding = true
        } else {
            // A body that runs until the upstream closes reaches the client the same way: its end is the close.
            // No body after HEAD or CONNECT (the upstream's decoder reads none after either).
            // As the upstream's decoder framed it, when it did.
            let method = current!.method
            let framing = head.bodyFraming.map { .success($0) }
                ?? HTTP1BodyFraming.response(head, requestMethodIsHEAD: method == "HEAD" || method == "CONNECT")
            // A pattern, not `==`: Result's generic equality costs a runtime metadata lookup per response.
            current!.closeDelimited = if case .success(.untilClose) = framing { true } else { false }
            if !head.keepsAlive || current!.closeDelimited {
                current!.upstreamCloses = true
                current!.closeAfter = true
                upstreamEnding = true
            }
            if head.status == 401 || head.status == 407, Self.offersConnectionBoundScheme(head) {
                upstreamBound = true
            }
        }
        return .forward
    }

    /// Whether a 401's or 407's challenges offer a connection-bound scheme (NTLM, Negotiate).
    private static func offersConnectionBoundScheme(_ head: HTTP1Head) -> Bool {
        head.fields.indices.contains { index in
            ((head.fieldNameLength(index) == 16 && head.nameIs(index, "www-authenticate"))
                || (head.fieldNameLength(index) == 18 && head.nameIs(index, "proxy-authenticate")))
                && isConnectionBound(challenges: head.value(index))
        }
    }

    /// Whether credentials (an Authorization value: one scheme, then its token; checked on every request that has
    /// one, so without splitting the value) are of a scheme that authenticates a connection (NTLM, Negotiate:
    /// Kerberos or NTLM through SPNEGO), not a request.
    static func isConnectionBound(scheme credentials: some StringProtocol) -> Bool {
        var scheme = credentials.trimmingASCIIWhitespace()
        if let space = scheme.utf8.firstIndex(of: UInt8(ascii: " ")) { scheme = scheme[..<space] }
        return scheme.equalsIgnoringASCIICase("ntlm") || scheme.equalsIgnoringASCIICase("negotiate")
    }

    /// Whether a field of challenges (WWW-Authenticate, Proxy-Authenticate: several may share one field) offers a
    /// connection-bound scheme. Each comma-separated element's first word is looked at: a challenge's parameters
    /// (`realm="x"`) never match.
    static func isConnectionBound(challenges: String) -> Bool {
        challenges.split(separator: ",").contains { isConnectionBound(scheme: $0) }
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
        // A final response before the request's end: the origin may read the rest of the body as a request of its
        // own (a "CL.0" desync); the connection never serves another client connection.
        if !current!.requestEnded { upstreamEnding = true }
        return completeIfDone()
    }

    /// The connection ended; returns the exchange cut short, if one was open. Its request or response may have
    /// gone part of the way (a chunked body cut by a malformed chunk): the upstream connection is never reused.
    mutating func connectionClosed() -> Exchange? {
        closed = true
        if current != nil { upstreamEnding = true }
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

    /// The body's framing, for a request with a Content-Length or Transfer-Encoding field. The proxy's own port
    /// refuses the same requests.
    package static func framingProblem(with head: HTTPRequestHead) -> String? {
        // Most requests have neither field: one pass, nothing allocated.
        guard head.headers.contains(where: {
            $0.name.equalsIgnoringASCIICase("content-length") || $0.name.equalsIgnoringASCIICase("transfer-encoding")
        }) else { return nil }
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
        if !encodings.isEmpty, encodings.count != 1 || !encodings[0].equalsIgnoringASCIICase("chunked") {
            return "a Transfer-Encoding other than chunked"
        }
        // A field named in Connection is dropped on the way (RFC 9110 §7.6.1): the body would go on unframed.
        for (name, value) in head.headers
        where name.equalsIgnoringASCIICase("connection") || name.equalsIgnoringASCIICase("proxy-connection") {
            for token in value.split(separator: ",") {
                let token = token.trimmingASCIIWhitespace()
                if token.equalsIgnoringASCIICase("content-length") || token.equalsIgnoringASCIICase("transfer-encoding") {
                    return "Connection names \(token.lowercased())"
                }
            }
        }
        if !encodings.isEmpty && head.version == .http1_0 {
            // HTTP/1.0 has no chunked coding: an HTTP/1.0 server would read the chunks as the body's bytes.
            return "Transfer-Encoding in an HTTP/1.0 request"
        }
        return nil
    }

    /// The hosts a request names: an absolute-form URI's authority (an origin routes by it, RFC 9112 §3.2.2), then
    /// its Host header; without ports.
    static func requestedHosts(_ head: HTTP1Head) -> [String] {
        requestedHosts(uri: head.target, host: RequestFields(head).host)
    }

    private static func requestedHosts(uri: String, host: String?) -> [String] {
        let fromURI = absoluteFormHost(uri)
        let fromHost = Destination.hostWithoutPort(host)
        switch (fromURI, fromHost) {
        case (nil, nil): return []
        case (let name?, nil), (nil, let name?): return [name]
        case (let first?, let second?): return [first, second]
        }
    }

    /// Where an absolute-form request target's authority starts (after `scheme://`); nil for any other form.
    private static func authorityStart(_ uri: String) -> String.Index? {
        // Origin-form ("/path") first: most requests, and no search through the target.
        guard uri.utf8.first != UInt8(ascii: "/") else { return nil }
        return uri.utf8.firstRange(of: "://".utf8)?.upperBound
    }

    /// The authority of an absolute-form request target (`https://host:port/path`) without its userinfo; nil for any
    /// other form.
    static func absoluteFormAuthority(_ uri: String) -> Substring? {
        guard let start = authorityStart(uri) else { return nil }
        let rest = Substring(uri)[start...]
        let end = rest.firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? rest.endIndex
        let authority = rest[..<end]
        if let at = authority.lastIndex(of: "@") { return authority[authority.index(after: at)...] }
        return authority
    }

    /// The host of an absolute-form request target (`https://host:port/path`), without a port.
    static func absoluteFormHost(_ uri: String) -> String? {
        guard let start = authorityStart(uri) else { return nil }
        let rest = uri.utf8[start...]
        let end = rest.firstIndex { $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#") }
        // Userinfo (`user:password@`) is dropped by hostWithoutPort.
        return Destination.hostWithoutPort(String(Substring(rest[..<(end ?? rest.endIndex)])))
    }

    /// The path as reported: the request target without its query (unless kept) and fragment.
    static func reportedPath(_ uri: String, keepQuery: Bool) -> String {
        let utf8 = uri.utf8
        var start = utf8.startIndex
        var needsSlash = false
        // Absolute form: the path only. The host is `request_host` when it is not the connection's; userinfo
        // (`user:password@`) is never reported.
        if let authority = authorityStart(uri) {
            start = utf8[authority...].firstIndex {
                $0 == UInt8(ascii: "/") || $0 == UInt8(ascii: "?") || $0 == UInt8(ascii: "#")
            } ?? utf8.endIndex
            needsSlash = start == utf8.endIndex || utf8[start] != UInt8(ascii: "/")
        }
        let end = utf8[start...].firstIndex { $0 == UInt8(ascii: "#") || (!keepQuery && $0 == UInt8(ascii: "?")) }
            ?? utf8.endIndex
        if start == utf8.startIndex && end == utf8.endIndex { return uri }  // origin-form, nothing to remove
        let path = Substring(utf8[start..<end])
        return needsSlash ? "/" + path : String(path)
    }
}
