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
        let kept = ForwardingHeaders.response(head, clientVersion: .http1_1, clientKeepAlive: true)
        #expect(kept.headers.map { $0.name.lowercased() } == ["content-length", "x-a", "via"])
        let closing = ForwardingHeaders.response(head, clientVersion: .http1_1, clientKeepAlive: false)
        #expect(closing.headers["Connection"] == ["close"])
        let old = ForwardingHeaders.response(head, clientVersion: .http1_0, clientKeepAlive: false)
        #expect(old.version == .http1_0)
    }
}
