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
            == .init(host: "blocked.test", all: ["blocked.test", "a.test", "b.test"], invalid: nil))
        #expect(names("GET / HTTP/1.1\nHost: blocked.test\n\n")?.all == ["blocked.test"])
        #expect(names("GET / HTTP/1.1\r\nHost: blocked%2etest\r\n\r\n")?.invalid == "blocked%2etest")
        #expect(names("GET / HTTP/1.1\r\nHost: a.test, blocked.test\r\n\r\n")?.all == [])
    }

    @Test(arguments: [
        "GET / HTTP/1.1\r\nX: y\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: \r\n\r\n",  // an empty Host names nothing: the address is judged
        "OPTIONS * HTTP/1.1\r\n\r\n",
    ])
    func noHostInARequestThatNamesNone(_ text: String) {
        #expect(HTTPHostSniff.sniff(ByteBuffer(string: text), limit: 65_536) == .names(.init()))
    }

    /// Bytes that are not a request, however they start.
    @Test(arguments: [
        "SSH-2.0-OpenSSH_9.6\r\n", "*1\r\n$4\r\nPING\r\n", "NICK agent\r\nUSER a 0 * :a\r\n", "\u{16}\u{03}\u{01}",
        "GET\r\n", "GET / FTP/1.0\r\n",
        "0032git-upload-pack /p.git\u{0}host=blocked.example\u{0}",  // git://: a NUL, and no line end ever
        "0 \u{2}\u{1}\u{0}\u{4}",  // an LDAP PDU whose length byte is a space
        "GET /x\u{0B}HTTP/1.1\r\nHost: blocked.example\r\n\r\n",  // a control byte in the request line
    ])
    func notHTTP(_ text: String) {
        #expect(HTTPHostSniff.sniff(ByteBuffer(string: text), limit: 65_536) == .notHTTP)
    }

    /// What a lenient origin reads as a request is read as one here too, so the names in it are judged: doubled
    /// whitespace, a leading empty line, a version other than 1.0 and 1.1, a lowercase method, `Host :`, HTTP/0.9.
    @Test(arguments: [
        ("GET  /hello HTTP/1.1\r\nHost: blocked.example\r\n\r\n", "blocked.example"),
        ("\r\nGET /hello HTTP/1.1\r\nHost: blocked.example\r\n\r\n", "blocked.example"),
        ("GET /hello HTTP/1.2\r\nHost: blocked.example\r\n\r\n", "blocked.example"),
        ("get /hello http/1.1\r\nHost: blocked.example\r\n\r\n", "blocked.example"),
        ("GET\t/hello\tHTTP/1.1\r\nHost: blocked.example\r\n\r\n", "blocked.example"),
        ("GET /hello HTTP/1.1\r\nHost : blocked.example\r\n\r\n", "blocked.example"),
        ("GET /hello HTTP/1.1\r\nhOsT:blocked.example:8080\r\n\r\n", "blocked.example"),
        ("GET http://blocked.example/hello\r\n", "blocked.example"),
        ("GET http://blocked.example/x HTTP/1.1\r\nHost: ok.example\r\n\r\n", "blocked.example"),
        (String(repeating: "X", count: 40) + " / HTTP/1.1\r\nHost: blocked.example\r\n\r\n", "blocked.example"),
        ("CONNECT blocked.example:443 HTTP/1.1\r\nHost: ok.example\r\n\r\n", "blocked.example"),
    ])
    func whatALenientServerReadsIsRead(_ text: String, _ expected: String) {
        guard case .names(let names) = HTTPHostSniff.sniff(ByteBuffer(string: text), limit: 65_536) else {
            Issue.record("not read: \(text.debugDescription)")
            return
        }
        #expect(names.host == expected && names.all.contains(expected) && names.invalid == nil, "\(names)")
    }

    /// A head not ended yet asks for more, however it is cut; one that cannot end within the limit, one with a folded
    /// Host or a target with spaces cannot be judged.
    @Test func aHeadThatHasNotEndedOrCannotBeRead() {
        let request = "GET /hello HTTP/1.1\r\nUser-Agent: x\r\nHost: blocked.example\r\n\r\n"
        for cut in 1..<request.utf8.count - 1 {
            let part = String(request.utf8.prefix(cut))!
            #expect(HTTPHostSniff.sniff(ByteBuffer(string: part), limit: 65_536) == .needMore, "\(part.debugDescription)")
        }
        func invalid(_ text: String, limit: Int = 65_536) -> String? {
            guard case .names(let names) = HTTPHostSniff.sniff(ByteBuffer(string: text), limit: limit) else { return nil }
            return names.invalid
        }
        let padded = "GET / HTTP/1.1\r\n" + String(repeating: "X-Pad: " + String(repeating: "a", count: 90) + "\r\n", count: 100)
        #expect(invalid(padded + "Host: blocked.example\r\n\r\n", limit: 8_192) == "a request head longer than 8192 bytes")
        #expect(invalid("GET / HTTP/1.1\r\nHost: ok.example\r\n blocked.example\r\n\r\n") == "a Host field folded over lines")
        #expect(invalid("GET /a b HTTP/1.1\r\nHost: ok.example\r\n\r\n") == "a request line with spaces in its target")
        #expect(invalid("GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n") == "a\"b")
        // A CR alone is a line end to some lenient readers, in the request line or a field.
        #expect(invalid("GET / HTTP/1.1\r\nX: y\rHost: blocked.example\r\n\r\n") == "a CR alone in a header line")
        #expect(invalid("GET / HTTP/1.1\rHost:blocked.example\r\r\n\n") == "a CR alone in the request line")
        // HTTP/2 with prior knowledge names its hosts in HPACK: not read, so not judged.
        #expect(invalid("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") == "an HTTP/2 connection (prior knowledge), whose :authority is not read")
        // Any number of empty lines before the request line, up to the limit: past it, not judged.
        #expect(invalid(String(repeating: "\r\n", count: 5000), limit: 8_192) == "a request head longer than 8192 bytes")
        #expect(HTTPHostSniff.sniff(ByteBuffer(string: String(repeating: "\r\n", count: 100)), limit: 8_192) == .needMore)
    }
}
