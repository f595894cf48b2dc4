@testable import EgressProxy
import NIOHTTP1
import Testing

@Suite struct ForwardingHeadersTests {
    let destination = Destination(host: "example.org", port: 8080, isIPLiteral: false)

    @Test func requestDropsHopByHopAndKeepsTheRestInOrder() {
        let head = HTTPRequestHead(
            version: .http1_1,
            method: .POST,
            uri: "http://example.org:8080/x",
            headers: [
                "Host": "wrong.example", "X-First": "1", "Connection": "keep-alive, X-Private",
                "X-Private": "secret-hop", "Proxy-Connection": "keep-alive", "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic c2VjcmV0", "TE": "trailers", "Trailer": "X-T", "Upgrade": "h2c",
                "Content-Length": "5", "X-Last": "2", "x-first": "again",
            ]
        )
        let out = ForwardingHeaders.request(head, destination: destination, originForm: "/x")
        #expect(out.uri == "/x")
        #expect(out.method == .POST)
        #expect(out.version == .http1_1)
        let names = out.headers.map { $0.name.lowercased() }
        #expect(names == ["host", "x-first", "content-length", "x-last", "x-first", "via"])
        #expect(out.headers["Host"] == ["example.org:8080"])
        #expect(out.headers["X-First"] == ["1", "again"])
        #expect(out.headers["Via"] == ["1.1 kaizen-egress"])
    }

    @Test func requestWithoutHostGetsOneAndDefaultPortIsOmitted() {
        let head = HTTPRequestHead(version: .http1_0, method: .GET, uri: "http://[::1]/", headers: [:])
        let out = ForwardingHeaders.request(
            head,
            destination: Destination(host: "::1", port: 80, isIPLiteral: true),
            originForm: "/"
        )
        #expect(out.headers["Host"] == ["[::1]"])
        #expect(out.headers["Via"] == ["1.0 kaizen-egress"])
    }

    @Test func responseDropsHopByHopAndSaysCloseWhenTheClientLeaves() {
        let head = HTTPResponseHead(
            version: .http1_1,
            status: .ok,
            headers: ["Connection": "keep-alive", "Keep-Alive": "timeout=5", "Content-Length": "3", "X-A": "b"]
        )
        let kept = ForwardingHeaders.response(head, requestMethod: "GET", clientVersion: .http1_1, clientKeepAlive: true)
        #expect(kept.head.headers.map { $0.name.lowercased() } == ["content-length", "x-a", "via"])
        #expect(kept.keepAlive)
        let closing = ForwardingHeaders.response(head, requestMethod: "GET", clientVersion: .http1_1, clientKeepAlive: false)
        #expect(closing.head.headers["Connection"] == ["close"] && !closing.keepAlive)
        let old = ForwardingHeaders.response(head, requestMethod: "GET", clientVersion: .http1_0, clientKeepAlive: false)
        #expect(old.head.version == .http1_0)
    }

    /// Transfer codings are relayed as the upstream applied them (`gzip, chunked` stays so: the body is still
    /// gzip-coded). A body with no length ends the client's connection with it; an HTTP/1.0 client, which cannot
    /// read chunked framing, gets the body ended by the close instead.
    @Test func responseFramingIsKeptAndABodyEndedByTheCloseEndsTheClientsConnection() {
        func response(_ headers: HTTPHeaders, method: String = "GET", client: HTTPVersion = .http1_1) -> (HTTPHeaders, Bool, HTTPVersion) {
            let head = HTTPResponseHead(version: .http1_1, status: .ok, headers: headers)
            let (out, keepAlive) = ForwardingHeaders.response(head, requestMethod: method, clientVersion: client, clientKeepAlive: true)
            var fields = out.headers
            fields.remove(name: "via")
            return (fields, keepAlive, out.version)
        }
        let gzip = response(["Transfer-Encoding": "gzip, chunked"])
        #expect(gzip.0["Transfer-Encoding"] == ["gzip, chunked"] && gzip.1)
        let unframed = response(["Content-Type": "text/plain"])
        #expect(unframed.0["Connection"] == ["close"] && !unframed.1)
        let head = response(["Content-Type": "text/plain"], method: "HEAD")
        #expect(head.0["Connection"].isEmpty && head.1)
        let old = response(["Transfer-Encoding": "chunked"], client: .http1_0)
        #expect(old.0["Transfer-Encoding"].isEmpty && old.0["Connection"] == ["close"] && !old.1 && old.2 == .http1_0)
        let oldGzip = response(["Transfer-Encoding": "gzip, Chunked"], client: .http1_0)
        #expect(oldGzip.0["Transfer-Encoding"] == ["gzip"] && !oldGzip.1)
        let lengthForOld = response(["Content-Length": "3"], client: .http1_0)
        #expect(lengthForOld.1)
    }
}
