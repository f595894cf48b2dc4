import ControlPlane
import EgressProxy
import Foundation
import TestSupport
import NIOCore
import Testing

/// Absolute-form plain-HTTP requests forwarded to a real origin on loopback.
@Suite struct PlainHTTPTests {
    static let curl = Paths.which("curl")

    @Test func postOf5MBArrivesByteIdenticalWithContentLengthAndChunked() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        let (proxy, sink) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let size = 5 * 1024 * 1024
        let (file, digest) = try RandomFile.make(bytes: size)

        for extra in [[String](), ["-H", "Transfer-Encoding: chunked"]] {
            let result = try runCommand(Self.curl, [
                "-sS", "--max-time", "60", "-x", proxy.url, "--data-binary", "@\(file)",
                "-H", "Content-Type: application/octet-stream",
            ] + extra + ["http://127.0.0.1:\(originPort)/sha256"])
            #expect(result.status == 0, "\(result.stderr)")
            #expect(result.stdout == "\(size) \(digest)", "\(extra)")
        }
        let actions = sink.actions.filter { $0.action.target == "127.0.0.1:\(originPort)" }
        #expect(actions.count == 2)
        for action in actions {
            #expect(action.action.metadata.transport == .http)
            #expect(action.action.metadata.tls == nil)
            let close = try await sink.close(eventID: action.action.metadata.eventID)
            #expect(close.close.bytesFromClient == UInt64(size))
            #expect(close.close.status == 200)
            #expect(close.close.reason == "complete")
        }
        await proxy.stop()
    }

    /// An exchange in flight when the proxy is told to stop finishes within the drain, and its close record says it
    /// completed (the drain's close of the connection is not the client cutting it short).
    @Test func anExchangeFinishedDuringTheDrainIsRecordedAsComplete() throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        let (proxy, proxyPort) = try InspectionTests.startProxy([:])
        let socket = try RawSocket(host: "127.0.0.1", port: proxyPort, timeout: 20)
        try socket.send("POST http://127.0.0.1:\(originPort)/sha256 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        _ = try proxy.waitForLines(count: 1, timeout: 20) { $0.contains("\"action\"") }
        proxy.signal(SIGTERM)
        _ = try proxy.waitForStderr(containing: "draining open connections", timeout: 20)
        try socket.send("hello")
        let answer = try socket.receiveAll()
        #expect(answer.hasPrefix("HTTP/1.1 200 ") && answer.hasSuffix("\r\n\r\n5 2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\n"), "\(answer)")
        #expect(try proxy.waitForExit(timeout: 30) == 0)
        let close = try #require(proxy.stdoutLines.first { $0.contains("\"close\"") })
        #expect(close.contains("\"reason\":\"complete\"") && close.contains("\"status\":200"), "\(close)")
    }

    /// An exchange still going when the drain period ends is cut by the proxy, and its record says so (not the client);
    /// a client caught half-way through a request head by the drain is not logged as having sent a malformed one.
    @Test func anExchangeCutAtTheEndOfTheDrainIsRecordedAsShutdown() throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        let (proxy, proxyPort) = try InspectionTests.startProxy(["KAIZEN_DRAIN_SECONDS": "1"])
        let stalled = try RawSocket(host: "127.0.0.1", port: proxyPort, timeout: 20)
        try stalled.send("GET http://127.0.0.1:\(originPort)/unframed?stall=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        _ = try stalled.receive(until: "until close\n")
        let halfHead = try RawSocket(host: "127.0.0.1", port: proxyPort, timeout: 20)
        try halfHead.send("GET http://127.0.0.1:\(originPort)/hello HTTP/1.1\r\nHost: x\r\n")
        proxy.signal(SIGTERM)
        _ = stalled.receiveUntilEnd()
        _ = halfHead.receiveUntilEnd()
        #expect(try proxy.waitForExit(timeout: 30) == 0)
        let close = try #require(proxy.stdoutLines.first { $0.contains("\"close\"") })
        #expect(close.contains(#""closed_by":"proxy""#) && close.contains(#""reason":"shutdown""#), "\(close)")
        #expect(!proxy.stderr.contains("malformed request") && !proxy.stderr.contains("status=400"), "\(proxy.stderr)")
    }

    /// A response the proxy cannot frame (two Content-Length fields) is answered 502 as unusable, not as the upstream
    /// having closed (it had not).
    @Test func anInvalidResponseIs502AsUnusable() throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        let (proxy, proxyPort) = try InspectionTests.startProxy([:])
        let result = try runCommand(Self.curl, ["-s", "-i", "--max-time", "10", "-x", "127.0.0.1:\(proxyPort)", "http://127.0.0.1:\(originPort)/two-lengths"])
        #expect(result.stdout.hasPrefix("HTTP/1.1 502 ") && result.stdout.contains("unusable upstream response: "), "\(result.stdout)")
        let close = try proxy.waitForLines(count: 1, timeout: 20) { $0.contains("\"close\"") }
        #expect(close[0].contains("unusable upstream response") && !close[0].contains("closed the connection"), "\(close[0])")
        // An upstream that closes inside its body (100 bytes promised, 10 sent) closed: it sent nothing unusable.
        _ = try runCommand(Self.curl, ["-s", "--max-time", "10", "-x", "127.0.0.1:\(proxyPort)", "http://127.0.0.1:\(originPort)/truncated"])
        let cut = try proxy.waitForLines(count: 2, timeout: 20) { $0.contains("\"close\"") }
        #expect(cut[1].contains("upstream closed mid-response") && !cut[1].contains("unusable"), "\(cut[1])")
    }

    /// A malformed request pipelined behind a good one: the good one is answered and recorded as it went (200,
    /// complete), then the bad one gets its 400; the 400 is not taken for the first exchange's outcome.
    @Test func aMalformedPipelinedRequestDoesNotRewriteTheRecordBeforeIt() throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        let (proxy, proxyPort) = try InspectionTests.startProxy([:])
        let socket = try RawSocket(host: "127.0.0.1", port: proxyPort, timeout: 20)
        try socket.send("GET http://127.0.0.1:\(originPort)/sized?size=100000 HTTP/1.1\r\nHost: x\r\n\r\nPING\r\n\r\n")
        let (bytes, _) = socket.receiveUntilEnd()
        let answer = String(decoding: bytes, as: UTF8.self)
        #expect(answer.hasPrefix("HTTP/1.1 200 ") && answer.contains("HTTP/1.1 400 "), "\(answer.prefix(300))")
        let close = try proxy.waitForLines(count: 1, timeout: 20) { $0.contains("\"close\"") }
        #expect(close[0].contains(#""status":200"#) && close[0].contains(#""reason":"complete""#), "\(close[0])")
    }

    @Test func endToEndHeadersArriveAndHopByHopOnesDoNot() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        let (proxy, _) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let result = try runCommand(Self.curl, [
            "-sS", "--max-time", "20", "-x", proxy.url, "--proxy-user", "agent:s3cret-token",
            "-H", "X-Trace: abc", "-H", "Connection: keep-alive, X-Hop", "-H", "X-Hop: drop me",
            "-H", "Keep-Alive: timeout=5", "-H", "TE: trailers",
            "http://127.0.0.1:\(originPort)/headers?q=1",
        ])
        #expect(result.status == 0, "\(result.stderr)")
        let lines = result.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first == "GET /headers?q=1 HTTP/1.1")
        #expect(lines.contains("Host: 127.0.0.1:\(originPort)"))
        #expect(lines.contains("X-Trace: abc"))
        #expect(lines.contains("Via: 1.1 kaizen-egress"))
        #expect(lines.contains { $0.hasPrefix("User-Agent: curl/") })
        for dropped in ["Proxy-Authorization", "Proxy-Connection", "X-Hop", "Keep-Alive", "TE", "Connection"] {
            #expect(!lines.contains { $0.lowercased().hasPrefix(dropped.lowercased() + ":") }, "\(dropped)")
        }
        await proxy.stop()
    }

    @Test func keepAliveConnectionRoutesEachRequestToItsHost() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        let (second, secondPort) = try ChildProcess.origin(mode: "http", host: "::1")
        let (proxy, sink) = try await ProxyHarness.start()
        defer { withExtendedLifetime((origin, second)) {} }

        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        for (host, port) in [("127.0.0.1", originPort), ("[::1]", secondPort), ("localhost", originPort)] {
            try socket.send("GET http://\(host):\(port)/hello HTTP/1.1\r\nHost: \(host):\(port)\r\n\r\n")
            let response = try socket.receive(until: "hello from origin\n")
            #expect(response.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(host)")
            #expect(response.hasSuffix("\r\n\r\nhello from origin\n"))
        }
        let targets = ["127.0.0.1:\(originPort)", "[::1]:\(secondPort)", "localhost:\(originPort)"]
        var clients = Set<String>()
        for target in targets {
            let action = try await sink.action(target: target)
            clients.insert(action.action.metadata.client)
        }
        #expect(clients.count == 1)  // all three on one client connection
        await proxy.stop()
    }

    @Test func headRequestsGetNoBody() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        let (proxy, _) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send("HEAD http://127.0.0.1:\(originPort)/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        let head = try socket.receive(until: "\r\n\r\n")
        #expect(head.hasPrefix("HTTP/1.1 200 OK\r\n"))
        #expect(head.contains("Content-Length: 18\r\n"))
        #expect(head.hasSuffix("\r\n\r\n"))
        // The connection is still in step: the next request gets its own answer.
        try socket.send("GET http://127.0.0.1:\(originPort)/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        let next = try socket.receive(until: "hello from origin\n")
        #expect(next.hasPrefix("HTTP/1.1 200 OK\r\n"))
        await proxy.stop()
    }

    /// A response whose framing the client would read otherwise than llhttp (a status below 100 with a body), or a 101
    /// no request asked for (the proxy removes `Upgrade` from requests), is answered 502 and its connection not kept;
    /// a 100 Continue reaches a client waiting for it (`Expect`), and never an HTTP/1.0 client.
    @Test func unusableStatusesAre502AndA100ContinueIsPassedOn() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        let (proxy, sink) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        for (path, reason) in [("/status99", "status 99 is outside 100-599"), ("/unasked-101", "101 Switching Protocols")] {
            let result = try runCommand(Self.curl, [
                "-sS", "--max-time", "10", "-x", proxy.url, "-w", " %{http_code}", "http://127.0.0.1:\(originPort)\(path)",
            ])
            #expect(result.stdout.contains("unusable upstream response: \(reason)") && result.stdout.hasSuffix(" 502"), "\(result.stdout)")
        }
        let continued = try runCommand(Self.curl, [
            "-sS", "-v", "--max-time", "10", "--expect100-timeout", "8", "-x", proxy.url, "-H", "Expect: 100-continue",
            "--data-binary", "payload", "http://127.0.0.1:\(originPort)/sha256",
        ])
        #expect(continued.stderr.contains("< HTTP/1.1 100 Continue") && continued.stdout.hasPrefix("7 "), "\(continued.stderr)")
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send(
            "POST http://127.0.0.1:\(originPort)/sha256 HTTP/1.0\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\npayload")
        let http10 = try socket.receive(until: "\r\n\r\n")
        #expect(http10.hasPrefix("HTTP/1.0 200 OK\r\n"), "\(http10)")
        // The close records say what the client got.
        var statuses: [Int] = []
        for action in sink.actions.filter({ $0.action.target == "127.0.0.1:\(originPort)" }) {
            if let status = try await sink.close(eventID: action.action.metadata.eventID).close.status { statuses.append(status) }
        }
        #expect(statuses == [502, 502, 200, 200], "\(statuses)")
        await proxy.stop()
    }

    /// A client that stops sending its body once the origin has answered (a 413 before the upload was all there) is a
    /// client that stopped, not a malformed request: nothing is logged as one, and the close record has the 413.
    @Test func aClientStoppingAfterAnEarlyAnswerIsNotAMalformedRequest() throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        let (proxy, proxyPort) = try InspectionTests.startProxy([:])
        do {
            let socket = try RawSocket(host: "127.0.0.1", port: proxyPort)
            try socket.send(
                "POST http://127.0.0.1:\(originPort)/early?read=10&length=1&linger=3 HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                    + "Content-Length: 100000\r\n\r\n0123456789")
            let answer = try socket.receive(until: "too large\n")
            #expect(answer.hasPrefix("HTTP/1.1 413 "), "\(answer)")
        }  // the socket closes here, 99,990 bytes short
        let close = try proxy.waitForLines(count: 1, timeout: 20) { $0.contains("\"close\"") }
        #expect(close[0].contains(#""status":413"#), "\(close[0])")
        #expect(close[0].contains(#""reason":"request cut short: the client stopped sending it after the response""#), "\(close[0])")
        #expect(!proxy.stderr.contains("malformed request"), "\(proxy.stderr)")
    }

    /// Responses reach the client framed as the upstream framed them: a transfer coding stays named (the body of
    /// `gzip, chunked` is still gzip-coded), a chunked HEAD response gets no terminator (the connection stays in
    /// step), and an HTTP/1.0 client gets a chunked body unchunked, ended by the close.
    @Test func responsesKeepTheirFramingAndTransferCodings() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        let (proxy, _) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let base = "http://127.0.0.1:\(originPort)"
        let gzipped = try runCommand(Self.curl, ["-sS", "--max-time", "10", "--tr-encoding", "-x", "http://127.0.0.1:\(proxy.port)", base + "/gzipped"])
        #expect(gzipped.status == 0 && gzipped.stdout == "hello gzip", "\(gzipped.stdout) \(gzipped.stderr)")

        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send("HEAD \(base)/chunked HTTP/1.1\r\nHost: x\r\n\r\n")
        let head = try socket.receive(until: "\r\n\r\n")
        #expect(head.hasPrefix("HTTP/1.1 200 OK\r\n") && head.contains("Transfer-Encoding: chunked\r\n"), "\(head)")
        try socket.send("GET \(base)/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        let next = try socket.receive(until: "hello from origin\n")
        #expect(next.hasPrefix("HTTP/1.1 200 OK\r\n"), "\(next)")

        let old = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try old.send("GET \(base)/chunked HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        let answer = try old.receiveAll()
        #expect(answer.hasPrefix("HTTP/1.0 200 OK\r\n") && !answer.contains("Transfer-Encoding"), "\(answer)")
        #expect(answer.hasSuffix("\r\n\r\nhello chunked\n"), "\(answer)")
        await proxy.stop()
    }

    /// A body with no length ends with the connection: the client's is closed only once all of it has gone out,
    /// even to a slow reader (4 KiB receive buffer, 64 KiB per millisecond: slower than the origin sends). The
    /// proxy still has part of the 4 MiB queued when the upstream's close ends it; a close then would drop that
    /// part, and the client could not tell.
    @Test func aBodyEndedByTheCloseReachesASlowReaderWhole() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        let (proxy, _) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let size = 4 << 20
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port, timeout: 30, receiveBuffer: 4096)
        try socket.send("GET http://127.0.0.1:\(originPort)/unframed?size=\(size) HTTP/1.1\r\nHost: x\r\n\r\n")
        let answer = try socket.receiveAllBytes(limit: size + 65536, pause: .milliseconds(1))
        let headEnd = try #require(answer.firstRange(of: Array("\r\n\r\n".utf8)))
        let head = String(decoding: answer[..<headEnd.lowerBound], as: UTF8.self)
        #expect(head.hasPrefix("HTTP/1.1 200") && head.contains("Connection: close"), "\(head)")
        #expect(answer.count - headEnd.upperBound == size)
        await proxy.stop()
    }

    /// A body with no length that the upstream cuts with a TCP reset instead of ending it with a FIN: the client
    /// gets a reset too, never a clean end that would pass the cut body off as whole, and the close record says
    /// the response was cut.
    @Test func aBodyCutByAnUpstreamResetReachesTheClientAsAReset() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        let (proxy, sink) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send("GET http://127.0.0.1:\(originPort)/unframed?size=1000&reset=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        let (_, ending) = socket.receiveUntilEnd()
        #expect(ending.contains("errno \(ECONNRESET)"), "\(ending)")
        let action = try await sink.action(target: "127.0.0.1:\(originPort)")
        let close = try await sink.close(eventID: action.action.metadata.eventID)
        #expect(close.close.reason.hasPrefix("upstream closed mid-response"), "\(close.close.reason)")
        #expect(close.close.closedBy == .upstream)
        await proxy.stop()
    }

    /// An upstream that stalls part-way through a body with no length is cut by the idle timeout: the client's
    /// connection is reset, since a FIN would end that body as if it were whole. (1 s: well above the time the
    /// origin takes to send the head under a loaded test run.)
    @Test func aBodyCutByTheIdleTimeoutReachesTheClientAsAReset() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        let (proxy, sink) = try await ProxyHarness.start { $0.idleTimeout = .seconds(1) }
        defer { withExtendedLifetime(origin) {} }
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send("GET http://127.0.0.1:\(originPort)/unframed?stall=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        let (received, ending) = socket.receiveUntilEnd()
        #expect(String(decoding: received, as: UTF8.self).hasSuffix("\r\n\r\nuntil close\n"))
        #expect(ending.contains("errno \(ECONNRESET)"), "\(ending)")
        let action = try await sink.action(target: "127.0.0.1:\(originPort)")
        let close = try await sink.close(eventID: action.action.metadata.eventID)
        #expect(close.close.reason == "idle_timeout")
        await proxy.stop()
    }

    /// A client that sends its requests and half-closes at once (as `nc -N` does) still gets every response
    /// whole, even reading slowly. NIO holds the half-close behind the pipelined request and hands it on while
    /// the last response's end is being written; a close then dropped what was still queued.
    @Test func aHalfCloseAfterPipelinedRequestsStillGetsEveryResponseWhole() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        let (proxy, _) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let size = 4 << 20
        let base = "http://127.0.0.1:\(originPort)"
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port, timeout: 30, receiveBuffer: 4096)
        try socket.send("GET \(base)/hello HTTP/1.1\r\nHost: x\r\n\r\nGET \(base)/sized?size=\(size) HTTP/1.1\r\nHost: x\r\n\r\n")
        socket.shutdownWrite()
        let answer = try socket.receiveAllBytes(limit: size + 65536, pause: .milliseconds(1))
        let text = String(decoding: answer.prefix(4096), as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n") && text.contains("hello from origin\n"), "\(text)")
        let second = try #require(answer.firstRange(of: Array("hello from origin\n".utf8)))
        let rest = answer[second.upperBound...]
        let headEnd = try #require(rest.firstRange(of: Array("\r\n\r\n".utf8)))
        #expect(String(decoding: rest[..<headEnd.lowerBound], as: UTF8.self).hasPrefix("HTTP/1.1 200"))
        #expect(rest.count - (headEnd.upperBound - rest.startIndex) == size)
        await proxy.stop()
    }

    @Test func idleKeepAliveConnectionsAreClosed() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        let (proxy, _) = try await ProxyHarness.start { $0.idleTimeout = .milliseconds(300) }
        defer { withExtendedLifetime(origin) {} }
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send("GET http://127.0.0.1:\(originPort)/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        #expect(try socket.receive(until: "hello from origin\n").hasPrefix("HTTP/1.1 200 OK\r\n"))
        // Then nothing: the proxy closes the connection (EOF here, within the socket's read timeout).
        #expect(try socket.receive().isEmpty)
        await proxy.stop()
    }

    @Test func aKeptUpstreamThatClosesBeforeAnsweringGetsAnIdempotentRequestAgain() async throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        let (proxy, sink) = try await ProxyHarness.start()
        defer { withExtendedLifetime(origin) {} }
        let base = "http://127.0.0.1:\(originPort)"
        // One client connection: /hello opens the upstream connection, /flaky reuses it and the origin hangs up.
        // The GET goes again on a new upstream connection; the POST (its body is gone) is answered 502.
        let result = try runCommand(Self.curl, [
            "-sS", "--max-time", "20", "-x", proxy.url, "-w", "%{http_code} %{num_connects}\n",
            "\(base)/hello", "\(base)/flaky",
            "--next", "-sS", "--max-time", "20", "-x", proxy.url, "-w", "%{http_code} %{num_connects}\n",
            "\(base)/hello",
            "--next", "-sS", "--max-time", "20", "-x", proxy.url, "-w", "%{http_code} %{num_connects}\n",
            "-d", "body", "\(base)/flaky",
        ])
        #expect(result.stdout.hasPrefix("""
            hello from origin
            200 1
            fresh connection
            200 0
            hello from origin
            200 0
            """), "\(result.stdout) \(result.stderr)")
        #expect(result.stdout.hasSuffix("(connection closed)\n502 0"), "\(result.stdout)")
        // Every upstream connection is reported: /hello, /flaky on the kept one, /flaky again on a new one, and so on.
        let actions = sink.actions.filter { $0.action.target == "127.0.0.1:\(originPort)" }
        #expect(actions.count == 5, "\(actions.map(\.action.metadata))")
        #expect(Set(actions.map(\.action.metadata.eventID)).count == actions.count)
        // Each action has its own close: the kept connection's says the request went again, the new one's how it went.
        var closes: [CloseRecord.Body] = []
        for action in actions { closes.append(try await sink.close(eventID: action.action.metadata.eventID).close) }
        let resent = closes.filter { $0.reason.hasPrefix("error: the kept connection closed before answering") }
        #expect(resent.count == 1 && resent.first?.closedBy == .upstream, "\(closes)")
        #expect(closes.filter { $0.status == 200 }.count == 3, "\(closes)")
        await proxy.stop()
    }

    @Test func refusedUpstreamIs502() async throws {
        let closedPort = try FreePort.refusing()
        let (proxy, sink) = try await ProxyHarness.start()
        let result = try runCommand(Self.curl, [
            "-sS", "--max-time", "20", "-x", proxy.url, "-w", "%{http_code}", "http://127.0.0.1:\(closedPort)/",
        ])
        #expect(result.stdout.hasSuffix("connection refused\n502"))
        let action = try await sink.action(target: "127.0.0.1:\(closedPort)")
        #expect(action.action.metadata.outcome == .failed)
        #expect(action.action.metadata.error == "connection refused")
        await proxy.stop()
    }
}
