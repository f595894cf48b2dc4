import Foundation
import TestSupport
import Testing

/// An inspected CONNECT begins its upstream TLS handshake as soon as the upstream's TCP connection is up, before the
/// client's ClientHello is in, for what the ClientHello will most likely ask: the CONNECT host, and the ALPN offer
/// the agent's clients settled on. It serves only a ClientHello that asks exactly that; any other gets a connection
/// of its own. Upstream connections are not kept here (each CONNECT dials), and the origin prints the SNI of each
/// ClientHello it gets, so what reached it, and when, shows.
@Suite struct EarlyHandshakeTests {
    let inspection = InspectionTests()

    func setUp() throws -> InspectionTests.Setup {
        try inspection.setUp(extra: ["KAIZEN_UPSTREAM_IDLE_TIMEOUT": "0"], originArguments: ["--print-sni"])
    }

    /// Two connections with curl offering http/1.1 alone: the agent's clients have settled on that offer, and TLS was
    /// inspected on the origin's port.
    func settle(_ setup: InspectionTests.Setup) throws {
        let base = "https://localhost:\(setup.originPort)"
        let result = try inspection.curl(
            setup, [base + "/hello", base + "/hello"], extra: ["--http1.1", "-H", "Connection: close"])
        #expect(result.stdout.components(separatedBy: "hello from origin").count - 1 == 2, "\(result.stderr)")
        _ = try setup.origin.waitForLines(count: 2, timeout: 20) { $0 == "SNI localhost" }
    }

    /// A client that sends its ClientHello only when told, offering `alpn`; its answer.
    func helloWhenOriginWasReached(_ setup: InspectionTests.Setup, alpn: String, clientHellosBefore: Int) throws -> String {
        let script = Paths.endToEndDirectory.appendingPathComponent("mitm_client.py").path
        let client = try ChildProcess(
            Paths.which("python3"),
            [script, "hello-when-told", "\(setup.proxyPort)", "\(setup.originPort)", setup.inspectionCA, alpn])
        _ = try client.waitForLine(timeout: 20) { $0 == "CONNECTED" }
        // The origin has the proxy's ClientHello while the client's is still unsent.
        _ = try setup.origin.waitForLines(count: clientHellosBefore + 1, timeout: 20) { $0 == "SNI localhost" }
        client.signal(SIGUSR1)
        return try client.waitForLine(timeout: 20) { $0.hasPrefix("HTTP/") }
    }

    func earlyHandshakes(_ setup: InspectionTests.Setup) throws -> (used: Double?, discarded: Double?) {
        let metrics = try AdminTests().get(try setup.proxy.adminPort(), "/metrics").body
        return (
            AdminTests.value(metrics, #"kaizen_egress_upstream_early_handshakes_total{outcome="used"}"#),
            AdminTests.value(metrics, #"kaizen_egress_upstream_early_handshakes_total{outcome="discarded"}"#)
        )
    }

    @Test func theUpstreamHandshakeBeginsBeforeTheClientHelloAndServesIt() throws {
        let setup = try setUp()
        try settle(setup)
        let answer = try helloWhenOriginWasReached(setup, alpn: "http/1.1", clientHellosBefore: 2)
        #expect(answer == "HTTP/1.1 200 OK hello from origin none", "\(answer)")
        let actions = try setup.waitForActions(3)
        let last = try #require(actions.last)
        #expect(last["intercepted"] as? Bool == true && last["status"] as? Int == 200, "\(last)")
        #expect(last["method"] as? String == "GET" && last["path"] as? String == "/hello", "\(last)")
        // The connection begun early served: the origin had no other.
        #expect(setup.origin.stdoutLines.filter { $0 == "SNI localhost" }.count == 3, "\(setup.origin.stdoutLines)")
        let counted = try earlyHandshakes(setup)
        #expect(counted.used == 1 && (counted.discarded ?? 0) == 0, "\(counted)")
    }

    @Test func aClientHelloWithAnotherOfferGetsAConnectionOfItsOwn() throws {
        let setup = try setUp()
        try settle(setup)
        let answer = try helloWhenOriginWasReached(setup, alpn: "h2,http/1.1", clientHellosBefore: 2)
        #expect(answer == "HTTP/1.1 200 OK hello from origin none", "\(answer)")
        let actions = try setup.waitForActions(3)
        #expect(actions.last?["status"] as? Int == 200, "\(actions)")
        // The one begun early (offered http/1.1) was closed unused; another was dialled for this offer.
        _ = try setup.origin.waitForLines(count: 4, timeout: 20) { $0 == "SNI localhost" }
        let counted = try earlyHandshakes(setup)
        #expect(counted.discarded == 1 && (counted.used ?? 0) == 0, "\(counted)")
    }

    /// No early handshake before the agent's clients have settled on an offer: after one inspected connection (TLS is
    /// known on the origin's port, the offer made once), the next connection's ClientHello still comes first.
    @Test func noHandshakeBeginsBeforeTheAgentsOfferIsKnown() throws {
        let setup = try setUp()
        let once = try inspection.curl(
            setup, ["https://localhost:\(setup.originPort)/hello"], extra: ["--http1.1", "-H", "Connection: close"])
        #expect(once.stdout == "hello from origin", "\(once.stderr)")
        _ = try setup.origin.waitForLines(count: 1, timeout: 20) { $0 == "SNI localhost" }
        let script = Paths.endToEndDirectory.appendingPathComponent("mitm_client.py").path
        let client = try ChildProcess(
            Paths.which("python3"),
            [script, "hello-when-told", "\(setup.proxyPort)", "\(setup.originPort)", setup.inspectionCA, "http/1.1"])
        _ = try client.waitForLine(timeout: 20) { $0 == "CONNECTED" }
        client.signal(SIGUSR1)
        let answer = try client.waitForLine(timeout: 20) { $0.hasPrefix("HTTP/") }
        #expect(answer == "HTTP/1.1 200 OK hello from origin none", "\(answer)")
        _ = try setup.waitForActions(2)
        // One connection to the origin for each ClientHello; none begun before one, used or not.
        #expect(setup.origin.stdoutLines.filter { $0 == "SNI localhost" }.count == 2, "\(setup.origin.stdoutLines)")
        let counted = try earlyHandshakes(setup)
        #expect((counted.used ?? 0) == 0 && (counted.discarded ?? 0) == 0, "\(counted)")
    }
}
