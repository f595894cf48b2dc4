import Foundation
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
        for (name, value) in headers where name.equalsIgnoringASCIICase("host") {
            hostFields += 1
            hostMatches = value == host
        }
        if hostFields != 1 || !hostMatches {
            var rebuilt = HTTPHeaders()
            rebuilt.reserveCapacity(headers.count + 2)
            var hostWritten = false
            for (name, value) in headers {
                if name.equalsIgnoringASCIICase("host") {
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

    /// The head sent to the client for an upstream's response, and whether the client's connection can carry
    /// another request after it: not when the client asked to close, nor when the body is delimited by the
    /// close of the connection (it is relayed as the upstream framed it).
    /// - Parameter requestMethod: the method of the request answered (a response to HEAD has no body).
    static func response(
        _ head: HTTPResponseHead,
        requestMethod: String,
        clientVersion: HTTPVersion,
        clientKeepAlive: Bool
    ) -> (head: HTTPResponseHead, keepAlive: Bool) {
        var headers = HopByHopHeaders.stripped(head.headers)
        headers.add(name: "Via", value: HopByHopHeaders.via(for: head.version))
        // An HTTP/1.0 client cannot read chunked framing: answer it in 1.0, with the body ended by the close.
        let http10 = clientVersion.major == 1 && clientVersion.minor == 0
        if http10 { headers = withoutChunkedCoding(headers) }
        let informational = head.status.code >= 100 && head.status.code < 200 && head.status.code != 101
        let keepAlive = clientKeepAlive
            && (informational || ResponseFraming(status: head.status, headers: headers, requestMethod: requestMethod) != .untilClose)
        if !keepAlive {
            headers.add(name: "Connection", value: "close")
        }
        return (HTTPResponseHead(version: http10 ? .http1_0 : .http1_1, status: head.status, headers: headers), keepAlive)
    }

    /// `headers` with `chunked` taken out of Transfer-Encoding (the field goes when nothing else is left).
    private static func withoutChunkedCoding(_ headers: HTTPHeaders) -> HTTPHeaders {
        guard headers.contains(where: { $0.name.equalsIgnoringASCIICase("transfer-encoding") }) else { return headers }
        var result = HTTPHeaders()
        for (name, value) in headers {
            guard name.equalsIgnoringASCIICase("transfer-encoding") else {
                result.add(name: name, value: value)
                continue
            }
            let codings = value.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
                .filter { !$0.isEmpty && !$0.equalsIgnoringASCIICase("chunked") }
            if !codings.isEmpty { result.add(name: name, value: codings.joined(separator: ", ")) }
        }
        return result
    }
}
