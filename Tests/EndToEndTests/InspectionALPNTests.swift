import Foundation
import TestSupport
import Testing

/// ALPN under inspection: the upstream is offered what the client offered (less what inspection cannot relay),
/// and the client is answered with exactly the upstream's choice, or no ALPN when it made none. openssl
/// s_server is the upstream (its ALPN list set per case), openssl s_client the client, through the proxy.
@Suite struct InspectionALPNTests {
    /// `openssl s_server` on a free loopback port with `alpn` (nil: no ALPN at all), serving a status page.
    func upstream(_ pki: TestPKI, alpn: String?) throws -> (ChildProcess, Int) {
        let port = try FreePort.closed()
        var arguments = ["s_server", "-accept", "127.0.0.1:\(port)", "-cert", pki.serverCertificate, "-key", pki.serverKey, "-www"]
        if let alpn { arguments += ["-alpn", alpn] }
        let server = try ChildProcess(Paths.which("openssl"), arguments)
        _ = try server.waitForLine(timeout: 20) { $0.contains("ACCEPT") }
        return (server, port)
    }

    /// The ALPN line `openssl s_client` prints after its handshake through the proxy, and whether it verified.
    func client(proxyPort: Int, port: Int, trust: String, alpn: String?) throws -> (alpn: String, verified: Bool, output: String) {
        var arguments = [
            "s_client", "-proxy", "127.0.0.1:\(proxyPort)", "-connect", "localhost:\(port)", "-servername", "localhost",
            "-CAfile", trust, "-verify_return_error",
        ]
        if let alpn { arguments += ["-alpn", alpn] }
        let result = try runCommand(Paths.which("openssl"), arguments, timeout: 30)
        let output = result.stdout + "\n" + result.stderr
        let line = output.split(separator: "\n").first { $0.hasPrefix("ALPN protocol:") || $0.hasPrefix("No ALPN negotiated") }
        return (line.map(String.init) ?? "no ALPN line", output.contains("Verify return code: 0 (ok)"), output)
    }

    @Test(arguments: [
        // client offers, upstream supports, what the client must see
        ("h2,http/1.1", "http/1.1", "ALPN protocol: http/1.1"),
        ("h2,http/1.1", "h2,http/1.1", "ALPN protocol: h2"),
        ("h2", "h2", "ALPN protocol: h2"),
        ("x-custom/1,h2", "h2", "ALPN protocol: h2"),
        ("http/1.1", "h2,http/1.1", "ALPN protocol: http/1.1"),
        ("http/1.1", nil, "No ALPN negotiated"),
        ("h2,http/1.1", nil, "No ALPN negotiated"),
        (nil, "http/1.1", "No ALPN negotiated"),
        ("http/1.1", "h2", "No ALPN negotiated"),
        // HTTP/1.0 goes the HTTP/1.1 way: inspected (the minted leaf verifies), not passed through.
        ("http/1.0", "http/1.1,http/1.0", "ALPN protocol: http/1.0"),
    ] as [(String?, String?, String)])
    func theClientGetsTheUpstreamsChoice(_ clientOffer: String?, _ upstreamALPN: String?, _ expected: String) throws {
        let pki = try TestPKI.mint()
        let ca = try InspectionTests.makeCA(in: pki.directory)
        let (server, port) = try upstream(pki, alpn: upstreamALPN)
        defer { withExtendedLifetime(server) {} }
        let (proxy, proxyPort) = try InspectionTests.startProxy([
            "KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": ca + "/ca.key", "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
        ])
        defer { withExtendedLifetime(proxy) {} }
        let seen = try client(proxyPort: proxyPort, port: port, trust: ca + "/ca.pem", alpn: clientOffer)
        #expect(seen.alpn == expected, "\(seen.output.suffix(1500)) \(proxy.stderr.suffix(1500))")
        #expect(seen.verified, "the minted leaf verifies: \(seen.output.suffix(800))")
    }

    @Test func withHTTP2InspectionOffTheUpstreamIsOfferedHTTP1Only() throws {
        let pki = try TestPKI.mint()
        let ca = try InspectionTests.makeCA(in: pki.directory)
        let (server, port) = try upstream(pki, alpn: "h2,http/1.1")
        defer { withExtendedLifetime(server) {} }
        let (proxy, proxyPort) = try InspectionTests.startProxy([
            "KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": ca + "/ca.key", "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
            "KAIZEN_INSPECT_HTTP2": "off",
        ])
        defer { withExtendedLifetime(proxy) {} }
        let both = try client(proxyPort: proxyPort, port: port, trust: ca + "/ca.pem", alpn: "h2,http/1.1")
        #expect(both.alpn == "ALPN protocol: http/1.1" && both.verified, "\(both.output.suffix(1500))")
        // Offering only h2, the client gets the upstream itself (its certificate, verified by the test PKI).
        let h2Only = try client(proxyPort: proxyPort, port: port, trust: pki.caCertificate, alpn: "h2")
        #expect(h2Only.alpn == "ALPN protocol: h2" && h2Only.verified, "\(h2Only.output.suffix(1500))")
    }

    @Test func aClientOfferingOnlyWhatCannotBeRelayedPassesThroughUntouched() throws {
        let pki = try TestPKI.mint()
        let ca = try InspectionTests.makeCA(in: pki.directory)
        let (server, port) = try upstream(pki, alpn: "x-custom/1")
        defer { withExtendedLifetime(server) {} }
        let (proxy, proxyPort) = try InspectionTests.startProxy([
            "KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": ca + "/ca.key", "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
        ])
        // The upstream's own certificate reaches the client (verified by the test PKI, not the inspection CA),
        // and the protocol is the one the two sides chose.
        let seen = try client(proxyPort: proxyPort, port: port, trust: pki.caCertificate, alpn: "x-custom/1")
        #expect(seen.alpn == "ALPN protocol: x-custom/1" && seen.verified, "\(seen.output.suffix(1500))")
        let action = try proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
        #expect(action.contains("which inspection does not relay"), "\(action)")
    }
}
