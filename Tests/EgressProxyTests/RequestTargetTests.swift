@testable import EgressProxy
import Testing

@Suite struct RequestTargetTests {
    @Test(arguments: [
        ("example.org:443", "example.org", 443, false, "example.org:443"),
        ("EXAMPLE.org.:8443", "example.org", 8443, false, "example.org:8443"),
        ("127.0.0.1:22", "127.0.0.1", 22, true, "127.0.0.1:22"),
        ("[::1]:443", "::1", 443, true, "[::1]:443"),
        ("[2001:DB8::1]:1", "2001:db8::1", 1, true, "[2001:db8::1]:1"),
        ("my_host.internal:65535", "my_host.internal", 65535, false, "my_host.internal:65535"),
        // One IPv6 address is one target however it is written (RFC 5952).
        ("[0:0:0:0:0:0:0:1]:443", "::1", 443, true, "[::1]:443"),
        ("[2001:0DB8:0:0::0:1]:8443", "2001:db8::1", 8443, true, "[2001:db8::1]:8443"),
        ("[::FFFF:7f00:1]:443", "::ffff:127.0.0.1", 443, true, "[::ffff:127.0.0.1]:443"),
    ])
    func acceptsAuthorities(_ text: String, _ host: String, _ port: Int, _ literal: Bool, _ target: String) throws {
        let destination = try RequestTarget.parseAuthority(text).get()
        #expect(destination.host == host)
        #expect(destination.port == port)
        #expect(destination.isIPLiteral == literal)
        #expect(destination.description == target)
    }

    @Test(arguments: [
        "", "example.org", "example.org:", "example.org:0", "example.org:65536", "example.org:+443",
        "example.org:44 3", "user@example.org:443", "::1:443", "[::1]", "[nothex::1]:443", "[127.0.0.1]:443",
        "exa mple.org:443", "exa/mple.org:443", "1.2.3:443", "01.2.3.4:443", "0x7f.1:443", ":443",
        "\(String(repeating: "a", count: 64)).org:443", "[::1]:443x", "[::1]x:443", "example..org:443",
        "[fe80::1%25eth0]:443", "[fe80::1%eth0]:443",
    ])
    func refusesBadAuthorities(_ text: String) {
        #expect(throws: RequestTarget.Invalid.self) { try RequestTarget.parseAuthority(text).get() }
    }

    @Test(arguments: [
        ("http://example.org/a/b?c=d", "example.org", 80, "/a/b?c=d"),
        ("HTTP://Example.org", "example.org", 80, "/"),
        ("http://example.org?x", "example.org", 80, "/?x"),
        ("http://example.org:8080/p#frag", "example.org", 8080, "/p"),
        ("http://[::1]:81/", "::1", 81, "/"),
        ("http://[0::0:1]:81/", "::1", 81, "/"),
        ("http://127.0.0.1:/x", "127.0.0.1", 80, "/x"),
    ])
    func acceptsAbsoluteURIs(_ uri: String, _ host: String, _ port: Int, _ originForm: String) throws {
        let (destination, target) = try RequestTarget.parseAbsoluteURI(uri).get()
        #expect(destination.host == host)
        #expect(destination.port == port)
        #expect(target == originForm)
    }

    @Test(arguments: [
        "/index.html", "*", "https://example.org/", "ftp://example.org/", "http://user:pw@example.org/",
        "http:///path", "http://exa mple.org/", "example.org/path", "http://[::1/",
    ])
    func refusesOtherRequestTargets(_ uri: String) {
        #expect(throws: RequestTarget.Invalid.self) { try RequestTarget.parseAbsoluteURI(uri).get() }
    }

    @Test func originFormGetsAHelpfulReason() {
        guard case .failure(let error) = RequestTarget.parseAbsoluteURI("/") else {
            Issue.record("accepted")
            return
        }
        #expect(error.description.contains("proxy"))
    }
}
