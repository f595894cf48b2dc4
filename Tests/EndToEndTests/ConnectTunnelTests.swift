import ControlPlane
import EgressProxy
import Foundation
import TestSupport
import NIOCore
import Testing

/// CONNECT through the proxy to real peers on loopback: curl and an HTTPS origin, banner and echo servers.
@Suite struct ConnectTunnelTests {
    static let curl = Paths.which("curl")

    @Test func curlGetsThePageAndTheActionHasTargetAndSNI() async throws {
        let pki = try TestPKI.mint()
        let (origin, originPort) = try ChildProcess.origin(
            mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        let (proxy, sink) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }

        let result = try runCommand(Self.curl, [
            "-sS", "--max-time", "20", "-x", proxy.url, "--cacert", pki.caCertificate,
            "https://localhost:\(originPort)/hello",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout == "hello from origin")

        let action = try await sink.action(target: "localhost:\(originPort)")
        let metadata = action.action.metadata
        #expect(action.agent == "egress-agent")
        #expect(action.action.kind == "connect")
        #expect(action.verdict == .observed)
        #expect(metadata.source == "egress")
        #expect(metadata.transport == .connect)
        #expect(metadata.outcome == .connected)
        #expect(metadata.host == "localhost")
        #expect(metadata.port == originPort)
        #expect(metadata.tls == true)
        #expect(metadata.sni == "localhost")
        #expect(metadata.sniError == nil)
        #expect(metadata.sniMismatch == false)
        #expect(metadata.alpn?.contains("http/1.1") == true)
        #expect(metadata.resolvedIP == "127.0.0.1" || metadata.resolvedIP == "::1")
        #expect(metadata.client.hasPrefix("127.0.0.1:"))

        let close = try await sink.close(eventID: metadata.eventID)
        #expect(close.close.bytesFromClient > 300)
        #expect(close.close.bytesToClient > 300)
        // curl and the origin both close at the end (close_notify, then FIN); either may be seen first.
        #expect(close.close.closedBy == .client || close.close.closedBy == .upstream)
        #expect(close.close.reason == "eof")
        await proxy.stop()
    }

    @Test func ipv6LiteralConnect() async throws {
        let pki = try TestPKI.mint()
        let (origin, originPort) = try ChildProcess.origin(
            mode: "https", host: "::1", cert: pki.serverCertificate, key: pki.serverKey)
        let (proxy, sink) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }

        let result = try runCommand(Self.curl, [
            "-sS", "--max-time", "20", "-x", proxy.url, "--cacert", pki.caCertificate,
            "https://[::1]:\(originPort)/hello",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout == "hello from origin")
        let action = try await sink.action(target: "[::1]:\(originPort)")
        #expect(action.action.metadata.host == "::1")
        #expect(action.action.metadata.resolvedIP == "::1")
        #expect(action.action.metadata.tls == true)
        // curl sends no SNI for an IP address: the action says so instead of guessing.
        #expect(action.action.metadata.sni == nil)
        #expect(action.action.metadata.sniError == "client sent no server name")
        await proxy.stop()
    }

    @Test func postOf5MBThroughTheTunnelArrivesByteIdentical() async throws {
        let pki = try TestPKI.mint()
        let (origin, originPort) = try ChildProcess.origin(
            mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        let (proxy, _) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let (file, digest) = try RandomFile.make(bytes: 5 * 1024 * 1024)

        let result = try runCommand(Self.curl, [
            "-sS", "--max-time", "60", "-x", proxy.url, "--cacert", pki.caCertificate,
            "--data-binary", "@\(file)", "https://localhost:\(originPort)/sha256",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout == "\(5 * 1024 * 1024) \(digest)")
        await proxy.stop()
    }

    /// A client that sends its CONNECT (with or without bytes for the upstream) and its FIN at once, without waiting
    /// for the 200: the tunnel, once set up, delivers those bytes, ends its upstream side too and closes, instead of
    /// waiting forever for bytes that will never come.
    @Test(arguments: ["", "bytes sent before the 200\n"])
    func aCONNECTFollowedAtOnceByAHalfCloseEndsTheTunnel(_ early: String) throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "echo")
        defer { withExtendedLifetime(origin) {} }
        let (proxy, proxyPort) = try InspectionTests.startProxy([:])
        let socket = try RawSocket(host: "127.0.0.1", port: proxyPort, timeout: 10)
        try socket.send("CONNECT 127.0.0.1:\(originPort) HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + early)
        socket.shutdownWrite()
        let (bytes, ending) = socket.receiveUntilEnd()
        let answer = String(decoding: bytes, as: UTF8.self)
        #expect(answer.hasPrefix("HTTP/1.1 200 ") && answer.hasSuffix("\r\n\r\n" + early), "\(answer.debugDescription)")
        #expect(ending == "clean end", "\(ending)")
        let close = try proxy.waitForLines(count: 1, timeout: 20) { $0.contains("\"close\"") }
        #expect(close[0].contains(#""closed_by":"client""#), "\(close[0])")
        // Ended by the client's FIN, not by the ClientHello peek giving up on bytes after 10 s.
        let record = try JSONSerialization.jsonObject(with: Data(close[0].utf8)) as? [String: Any]
        let duration = (record?["close"] as? [String: Any])?["duration_ms"] as? Int
        #expect(duration.map { $0 < 8000 } == true, "\(close[0])")
        #expect(!proxy.stdoutLines.contains { $0.contains("none within") }, "\(proxy.stdoutLines)")
    }

    @Test func refusedUpstreamIs502WithAReasonAndIsReported() async throws {
        let closedPort = try FreePort.refusing()
        let (proxy, sink) = try await ProxyHarness.start()
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send("CONNECT 127.0.0.1:\(closedPort) HTTP/1.1\r\nHost: 127.0.0.1:\(closedPort)\r\n\r\n")
        let response = try socket.receiveAll()
        #expect(response.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"))
        #expect(response.contains("Proxy-Status: kaizen-egress; error=connection_refused"))
        #expect(response.hasSuffix("\r\n\r\nconnection refused\n"))

        let action = try await sink.action(target: "127.0.0.1:\(closedPort)")
        #expect(action.action.metadata.outcome == .failed)
        #expect(action.action.metadata.status == 502)
        #expect(action.action.metadata.error == "connection refused")
        await proxy.stop()
    }

    @Test func unresolvableNameIs502() async throws {
        let (proxy, sink) = try await ProxyHarness.start()
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        // .invalid never resolves (RFC 6761), so nothing leaves the machine.
        try socket.send("CONNECT no-such-host.invalid:443 HTTP/1.1\r\n\r\n")
        let response = try socket.receiveAll()
        #expect(response.hasPrefix("HTTP/1.1 502 Bad Gateway\r\n"))
        #expect(response.contains("name resolution failed"))
        let action = try await sink.action(target: "no-such-host.invalid:443")
        #expect(action.action.metadata.outcome == .failed)
        await proxy.stop()
    }

    @Test(arguments: [
        "CONNECT nohost HTTP/1.1\r\n\r\n", "CONNECT example.org:99999 HTTP/1.1\r\n\r\n",
        "CONNECT [::1 HTTP/1.1\r\n\r\n", "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET ftp://example.org/ HTTP/1.1\r\n\r\n", "THIS IS NOT HTTP\r\n\r\n",
        "GET http://example.org/ HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ])
    func badRequestsGet400AndClose(_ request: String) async throws {
        let (proxy, sink) = try await ProxyHarness.start()
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send(request)
        let response = try socket.receiveAll()
        #expect(response.hasPrefix("HTTP/1.1 400 Bad Request\r\n"), "\(response)")
        #expect(response.contains("Connection: close"))
        #expect(sink.actions.isEmpty)
        await proxy.stop()
    }

    @Test func bannerFirstServerSpeaksWithNoAddedWait() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "banner")
        let (proxy, sink) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send("CONNECT 127.0.0.1:\(originPort) HTTP/1.1\r\n\r\n")
        let head = try socket.receive(until: "\r\n\r\n")
        #expect(head.hasPrefix("HTTP/1.1 200 Connection established\r\n"))
        var banner = String(head.split(separator: "\r\n\r\n", maxSplits: 1).dropFirst().first ?? "")
        if !banner.contains("SSH-2.0") { banner += try socket.receive(until: "\r\n") }
        #expect(banner == "SSH-2.0-kaizen-test\r\n")
        // The banner came through before the client said anything: the peek held nothing back.
        #expect(sink.actions.isEmpty)

        try socket.send("SSH-2.0-client\r\n")
        #expect(try socket.receive(until: "client") == "SSH-2.0-client\r\n")
        let action = try await sink.action(target: "127.0.0.1:\(originPort)")
        #expect(action.action.metadata.tls == false)
        #expect(action.action.metadata.sni == nil)
        #expect(action.action.metadata.sniError?.hasPrefix("not TLS") == true)
        await proxy.stop()
    }

    @Test func clientHelloBytesAreForwardedBeforeTheHelloIsComplete() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "echo")
        let (proxy, sink) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let hello = try Fixtures.clientHello("chromium")
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send("CONNECT 127.0.0.1:\(originPort) HTTP/1.1\r\n\r\n")
        #expect(try socket.receive(until: "\r\n\r\n").hasPrefix("HTTP/1.1 200"))

        // The first 1,000 bytes come back from the echo server while the hello is still incomplete.
        try socket.send(Array(hello[0..<1000]))
        #expect(try socket.receive(exactly: 1000) == Array(hello[0..<1000]))
        #expect(sink.actions.isEmpty)

        try socket.send(Array(hello[1000...]))
        #expect(try socket.receive(exactly: hello.count - 1000) == Array(hello[1000...]))
        let action = try await sink.action(target: "127.0.0.1:\(originPort)")
        #expect(action.action.metadata.sni == "hello.fixture.test")
        #expect(action.action.metadata.alpn == ["h2", "http/1.1"])
        #expect(action.action.metadata.sniMismatch == true)
        await proxy.stop()
    }

    @Test func bytesSentWithTheConnectRequestAreNotLost() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "echo")
        let (proxy, sink) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let hello = try Fixtures.clientHello("curl")
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        // A client that does not wait for the 200 before sending its ClientHello.
        try socket.send(Array("CONNECT 127.0.0.1:\(originPort) HTTP/1.1\r\n\r\n".utf8) + hello)
        let head = "HTTP/1.1 200 Connection established\r\n\r\n"
        let reply = try socket.receive(exactly: head.utf8.count + hello.count)
        #expect(Array(reply[0..<head.utf8.count]) == Array(head.utf8))
        #expect(Array(reply[head.utf8.count...]) == hello)
        let action = try await sink.action(target: "127.0.0.1:\(originPort)")
        #expect(action.action.metadata.sni == "hello.fixture.test")
        await proxy.stop()
    }

    @Test func halfCloseIsForwardedNotTurnedIntoAClose() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "halfclose")
        let (proxy, sink) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send("CONNECT 127.0.0.1:\(originPort) HTTP/1.1\r\n\r\n")
        #expect(try socket.receive(until: "\r\n\r\n").hasPrefix("HTTP/1.1 200"))
        try socket.send(Array(repeating: 0x41, count: 100_000))
        socket.shutdownWrite()
        // The server only answers after it saw our FIN; the answer still reaches us.
        #expect(try socket.receiveAll() == "got 100000 bytes\n")
        let action = try await sink.action(target: "127.0.0.1:\(originPort)")
        let close = try await sink.close(eventID: action.action.metadata.eventID)
        #expect(close.close.bytesFromClient == 100_000)
        #expect(close.close.bytesToClient == 17)
        #expect(close.close.closedBy == .client)
        await proxy.stop()
    }

    @Test func idleTunnelsAreClosedAndRecordedAsSuch() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "echo")
        let (proxy, sink) = try await ProxyHarness.start { $0.idleTimeout = .milliseconds(300) }
        defer { withExtendedLifetime(origin) {} }
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send("CONNECT 127.0.0.1:\(originPort) HTTP/1.1\r\n\r\n")
        #expect(try socket.receive(until: "\r\n\r\n").hasPrefix("HTTP/1.1 200"))
        try socket.send("ping")
        #expect(try socket.receive(exactly: 4) == Array("ping".utf8))
        // Nothing more is sent: the proxy closes the tunnel (EOF here, within the socket's read timeout).
        #expect(try socket.receive().isEmpty)
        let action = try await sink.action(target: "127.0.0.1:\(originPort)")
        let close = try await sink.close(eventID: action.action.metadata.eventID)
        #expect(close.close.closedBy == .proxy)
        #expect(close.close.reason == "idle_timeout")
        await proxy.stop()
    }

    @Test func shutdownDrainsThenClosesWhatIsLeftAsShutdown() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "echo")
        let (proxy, sink) = try await ProxyHarness.start { $0.drainTimeout = .milliseconds(200) }
        defer { withExtendedLifetime(origin) {} }
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send("CONNECT 127.0.0.1:\(originPort) HTTP/1.1\r\n\r\n")
        #expect(try socket.receive(until: "\r\n\r\n").hasPrefix("HTTP/1.1 200"))
        try socket.send("still here")
        #expect(try socket.receive(exactly: 10) == Array("still here".utf8))

        // Stopping waits for the drain period, then closes the open tunnel and records why.
        await proxy.stop()
        #expect(try socket.receive().isEmpty)
        let action = try await sink.action(target: "127.0.0.1:\(originPort)")
        let close = try await sink.close(eventID: action.action.metadata.eventID)
        #expect(close.close.closedBy == .proxy)
        #expect(close.close.reason == "shutdown")
        #expect(close.close.bytesFromClient == 10)
        // And the listener is gone.
        #expect(throws: (any Error).self) { try RawSocket(host: "127.0.0.1", port: proxy.port) }
    }

    @Test func connectTimeoutIs504() async throws {
        // A listener that never accepts, with its backlog full: further SYNs go unanswered on loopback.
        let blackhole = try Blackhole()
        let (proxy, sink) = try await ProxyHarness.start { $0.connectTimeout = .milliseconds(300) }
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send("CONNECT 127.0.0.1:\(blackhole.port) HTTP/1.1\r\n\r\n")
        let response = try socket.receiveAll()
        #expect(response.hasPrefix("HTTP/1.1 504 Gateway Timeout\r\n"), "\(response)")
        #expect(response.contains("connect timeout after 300ms"))
        let action = try await sink.action(target: "127.0.0.1:\(blackhole.port)")
        #expect(action.action.metadata.status == 504)
        withExtendedLifetime(blackhole) {}
        await proxy.stop()
    }
}
