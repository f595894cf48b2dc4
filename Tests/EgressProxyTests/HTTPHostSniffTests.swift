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
