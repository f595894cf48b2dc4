import NIOHTTP1

/// Rewrites request and response heads as they cross the proxy (RFC 9110 §7.6, RFC 9112 §3.2.2): origin-form
/// target upstream, `Host` from the URL, hop-by-hop fields removed, `Via` added. Every other field, and its
/// order, is kept.
package enum ForwardingHeaders {
    package static func request(_ head: HTTPRequestHead, destination: Destination, originForm: String) -> HTTPRequestHead {
        var headers = HopByHopHeaders.stripped(head.headers)
        // A proxy must replace Host with the URL's authority (RFC 9112 §3.2.2); it keeps its place.
        let host = destination.hostHeader(defaultPort: 80)
        var hostFields = 0
        var hostMatches = false
        for (name, value) in headers where HopByHopHeaders.asciiEqual(name, "host") {
            hostFields += 1
            hostMatches = value == host
        }
        if hostFields != 1 || !hostMatches {
            var rebuilt = HTTPHeaders()
            rebuilt.reserveCapacity(headers.count + 2)
            var hostWritten = false
            for (name, value) in headers {
                if HopByHopHeaders.asciiEqual(name, "host") {
                    if !hostWritten { rebuilt.add(name: name, value: host) }
                    hostWritten = true
                } else {
                    rebuilt.add(name: name, value: value)
                }
            }
            if !hostWritten {
                rebuilt.add(name: "Host", value: host)
            }
            headers = rebuilt
        }
        headers.add(name: "Via", value: HopByHopHeaders.via(for: head.version))
        return HTTPRequestHead(version: .http1_1, method: head.method, uri: originForm, headers: headers)
    }

    static func response(
        _ head: HTTPResponseHead,
        clientVersion: HTTPVersion,
        clientKeepAlive: Bool
    ) -> HTTPResponseHead {
        var headers = HopByHopHeaders.stripped(head.headers)
        headers.add(name: "Via", value: HopByHopHeaders.via(for: head.version))
        if !clientKeepAlive {
            headers.add(name: "Connection", value: "close")
        }
        // An HTTP/1.0 client cannot read chunked framing: answer it in 1.0, which frames by close instead.
        let version: HTTPVersion = clientVersion.major == 1 && clientVersion.minor == 0 ? .http1_0 : .http1_1
        return HTTPResponseHead(version: version, status: head.status, headers: headers)
    }
}
