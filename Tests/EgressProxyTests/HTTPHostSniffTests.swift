@testable import EgressProxy
import NIOCore
import Testing

@Suite struct HTTPHostSniffTests {
    func host(_ text: String) -> String? {
        HTTPHostSniff.host(in: ByteBuffer(string: text))
    }

    @Test func theHostOfAPlainRequest() {
        #expect(host("GET /a HTTP/1.1\r\nUser-Agent: x\r\nHost: Example.COM:8080\r\n\r\n") == "example.com")
        #expect(host("POST / HTTP/1.0\r\nhost:  api.test \r\n\r\nbody") == "api.test")
        #expect(host("GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n") == "2001:db8::1")
    }

    /// Every host a request names: its absolute-form target's and each Host's; lines may end in a bare LF; a value
    /// that is no host name is kept apart.
    @Test func everyNameARequestGives() {
        func names(_ text: String) -> HTTPHostSniff.Names? { HTTPHostSniff.names(in: ByteBuffer(string: text)) }
        #expect(names("GET http://Blocked.test:80/x HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n")
            == .init(host: "a.test", all: ["blocked.test", "a.test", "b.test"], invalid: nil))
        #expect(names("GET / HTTP/1.1\nHost: blocked.test\n\n")?.all == ["blocked.test"])
        #expect(names("GET / HTTP/1.1\r\nHost: blocked%2etest\r\n\r\n")?.invalid == "blocked%2etest")
        #expect(names("GET / HTTP/1.1\r\nHost: a.test, blocked.test\r\n\r\n")?.all == [])
    }

    @Test(arguments: [
        "SSH-2.0-OpenSSH_9.6\r\n",
        "GET / HTTP/2\r\nHost: a.test\r\n\r\n",
        "get / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        "GET / HTTP/1.1\r\nX: y\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a.test",  // head not complete in these bytes: the field still counts only once ended
        "GET / HTTP/1.1\r\nHost: \r\n\r\n",
    ])
    func notAHostWhenItIsNotClearlyHTTP(_ text: String) {
        #expect(host(text) == nil)
    }
}
