import Foundation
import TestSupport
import Testing

/// HTTP/2 inside inspection: curl, nghttp and a Python `h2` client speak h2 through the MITM to an h2 origin
/// (Python `h2`, h2_origin.py), stream by stream, and each stream is reported once like an HTTP/1.1 request.
@Suite struct InspectionHTTP2Tests {
    typealias Setup = InspectionTests.Setup

    func setUp(extra: [String: String] = [:]) throws -> Setup {
        let pki = try TestPKI.mint()
        let caDirectory = try InspectionTests.makeCA(in: pki.directory)
        let script = Paths.endToEndDirectory.appendingPathComponent("h2_origin.py").path
        let origin = try ChildProcess(
            Paths.which("python3"),
            [script, "--cert", pki.serverCertificate, "--key", pki.serverKey, "--connect-protocol"])
        let line = try origin.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }
        guard let originPort = Int(line.dropFirst(5)) else { throw TestFailure("h2 origin printed \(line)") }
        var environment = [
            "KAIZEN_CA_CERT": caDirectory + "/ca.pem",
            "KAIZEN_CA_KEY": caDirectory + "/ca.key",
            "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
        ]
        environment.merge(extra) { _, new in new }
        let (proxy, proxyPort) = try InspectionTests.startProxy(environment)
        return Setup(
            pki: pki, caDirectory: caDirectory, origin: origin, originPort: originPort, proxy: proxy, proxyPort: proxyPort)
    }

    /// Runs `h2_client.py SCENARIO` through the proxy and returns the JSON object it prints.
    func h2Client(_ scenario: String, _ setup: Setup, _ extra: [String] = []) throws -> [String: Any] {
        let script = Paths.endToEndDirectory.appendingPathComponent("h2_client.py").path
        let result = try runCommand(
            Paths.which("python3"),
            [script, scenario, "--proxy-port", "\(setup.proxyPort)", "--port", "\(setup.originPort)", "--ca", setup.inspectionCA,
             "--timeout", "20"] + extra,
            timeout: 60)
        guard result.status == 0,
            let object = try? JSONSerialization.jsonObject(with: Data(result.stdout.utf8)) as? [String: Any]
        else { throw TestFailure("h2_client.py \(scenario): \(result.status) \(result.stdout) \(result.stderr)") }
        return object
    }

    /// nghttp has no proxy option: a socat listener makes the CONNECT through the proxy to the origin, and nghttp
    /// speaks TLS and h2 through it.
    func connectShim(_ setup: Setup) throws -> (shim: ChildProcess, port: Int) {
        let port = try FreePort.closed()
        let shim = try ChildProcess(
            Paths.which("socat"),
            ["-d", "-d", "TCP-LISTEN:\(port),bind=127.0.0.1,reuseaddr,fork",
             "PROXY:127.0.0.1:localhost:\(setup.originPort),proxyport=\(setup.proxyPort)"])
        try shim.waitForStderr(containing: "listening on", timeout: 10)
        return (shim, port)
    }

    /// A request whose `:path` is not origin-form names a host of its own, which would be neither judged nor reported
    /// (RFC 9113 §8.3.1): answered 400, never sent. A response whose `:status` is not three digits from 100 to 599
    /// is answered 502. Each is reported as what the client got, and the connection goes on.
    @Test func anAbsolutePathAndAnUnreadableStatusAreRefusedAndReported() throws {
        let setup = try setUp()
        let result = try h2Client("odd", setup)
        func status(_ label: String) -> String? { (result[label] as? [String: Any])?["status"] as? String }
        #expect(status("absolute") == "400" && status("abc") == "502" && status("0200") == "502" && status("099") == "502", "\(result)")
        #expect(status("after") == "200", "\(result)")
        let requests = try setup.origin.waitForLines(count: 4, timeout: 10) { $0.hasPrefix("REQUEST ") }
        #expect(!requests.contains { $0.contains("evil.example") }, "\(requests)")
        let actions = try setup.waitForActions(5)
        #expect(actions.compactMap { $0["status"] as? Int }.sorted() == [200, 400, 502, 502, 502], "\(actions)")
        let refused = try #require(actions.first { $0["status"] as? Int == 400 })
        #expect((refused["error"] as? String)?.hasPrefix("rejected: malformed request: :path is not origin-form") == true, "\(refused)")
        #expect(actions.filter { ($0["error"] as? String)?.hasPrefix("unusable upstream response: :status") == true }.count == 3)
    }

    /// Requests NIO's HTTP/2 codec refuses when their HEADERS arrive (a field name in uppercase, a connection-specific
    /// field) never get a stream the proxy handles: each is reset with PROTOCOL_ERROR, never sent, and still reported
    /// and logged, as an HTTP/1.1 request refused with 400 is; the connection goes on.
    @Test func requestsTheHTTP2CodecRefusesAreReportedAndLogged() throws {
        let setup = try setUp(extra: ["KAIZEN_LOG_LEVEL": "info"])
        let result = try h2Client("malformed", setup)
        func field(_ label: String, _ name: String) -> Any? { (result[label] as? [String: Any])?[name] }
        #expect(field("uppercase", "reset") as? Int == 1 && field("connection", "reset") as? Int == 1, "\(result)")
        #expect(field("after", "status") as? String == "200", "\(result)")
        let requests = try setup.origin.waitForLines(count: 1, timeout: 10) { $0.hasPrefix("REQUEST ") }
        let actions = try setup.waitForActions(3)
        #expect(actions.count == 3 && setup.origin.stdoutLines.filter { $0.hasPrefix("REQUEST ") }.count == 1, "\(requests) \(actions)")
        let refused = actions.compactMap { $0["error"] as? String }.sorted()
        #expect(refused == ["rejected: malformed request: ForbiddenHeaderField", "rejected: malformed request: InvalidHTTP2HeaderFieldName"], "\(actions)")
        #expect(actions.filter { $0["error"] != nil }.allSatisfy { $0["method"] == nil && $0["status"] == nil && $0["intercepted"] as? Bool == true })
        #expect(actions.contains { $0["path"] as? String == "/size/5" && $0["status"] as? Int == 200 && $0["error"] == nil })
        _ = try setup.proxy.waitForStderr(containing: "rejected an intercepted request", count: 2, timeout: 10)
        // Counted as what they were: two rejected, one forwarded.
        let metrics = try AdminTests().get(try setup.proxy.adminPort(), "/metrics").body
        #expect(AdminTests.value(metrics, #"kaizen_egress_inspected_requests_total{outcome="rejected"}"#) == 2, "\(metrics)")
        #expect(AdminTests.value(metrics, #"kaizen_egress_inspected_requests_total{outcome="forwarded"}"#) == 1)
    }

    /// A request the client resets in the same write as its HEADERS, while its upstream stream is still being made,
    /// never reaches the upstream, and is reported as not sent; the connection goes on.
    @Test func aRequestResetBeforeItsUpstreamStreamExistsIsNeverSent() throws {
        let setup = try setUp()
        let result = try h2Client("cancelled", setup)
        #expect(result["status"] as? String == "200", "\(result)")
        let request = try setup.origin.waitForLine(timeout: 10) { $0.hasPrefix("REQUEST ") }
        #expect(request == "REQUEST GET /size/5 -", "the DELETE reached the origin first: \(request)")
        let actions = try setup.waitForActions(2)
        let cancelled = try #require(actions.first { $0["method"] as? String == "DELETE" }, "\(actions)")
        #expect((cancelled["error"] as? String)?.hasPrefix("stream reset by the client before it was sent upstream") == true, "\(cancelled)")
        let metrics = try AdminTests().get(try setup.proxy.adminPort(), "/metrics").body
        #expect(AdminTests.value(metrics, #"kaizen_egress_inspected_requests_total{outcome="unsent"}"#) == 1, "\(metrics)")
        #expect(AdminTests.value(metrics, #"kaizen_egress_inspected_requests_total{outcome="forwarded"}"#) == 1)
    }

    /// Streams a client opens before it has acknowledged the proxy's SETTINGS are held to KAIZEN_H2_MAX_STREAMS all
    /// the same: the ones over it are refused (REFUSED_STREAM), so they cannot hold more memory than the limit allows.
    @Test func streamsOverTheLimitAreRefusedBeforeTheSettingsAreAcknowledged() throws {
        let setup = try setUp(extra: ["KAIZEN_H2_MAX_STREAMS": "5"])
        let result = try h2Client("burst", setup, ["--count", "20"])
        #expect(result["refused"] as? Int == 15 && result["answered"] as? Int == 5 && result["other"] as? Int == 0, "\(result)")
    }

    /// Frames NIO queues for a stream the proxy is not reading are bounded only by flow control for DATA: a client
    /// that floods WINDOW_UPDATEs on a stalled stream, or an origin that sends heads without end, has its connection
    /// closed before they pile up (a stream of its own, legitimate traffic, is untouched: the other tests). The
    /// flooded stream's action says why it was cut, as the log does.
    @Test func aStreamFloodedWithFramesClosesTheConnection() throws {
        let setup = try setUp()
        let updates = try h2Client("flood", setup, ["--count", "2000"])
        #expect(updates["closed"] as? Bool == true, "\(updates)")
        _ = try setup.proxy.waitForStderr(containing: "the client flooded a stream", timeout: 10)
        let heads = try h2Client("flood", setup, ["--path", "/many-103"])
        #expect(heads["closed"] as? Bool == true, "\(heads)")
        _ = try setup.proxy.waitForStderr(containing: "the upstream flooded a stream", timeout: 10)
        let actions = try setup.waitForActions(2)
        func error(_ path: String) -> String? {
            actions.first { $0["path"] as? String == path }?["error"] as? String
        }
        #expect(
            error("/size/1000000")?.hasPrefix("connection closed: the client flooded a stream (") == true
                && error("/size/1000000")?.contains("WINDOW_UPDATE frames on stream ") == true, "\(actions)")
        #expect(
            error("/many-103")?.hasPrefix("connection closed: the upstream flooded a stream (") == true
                && error("/many-103")?.contains("HEADERS frames on stream ") == true, "\(actions)")
    }

    /// An origin that answers and then resets the stream with NO_ERROR (stopping an upload it does not need, as
    /// servers do) keeps its connection however often it does: NIO's rapid-reset limit guards a server from clients.
    @Test func anOriginThatStopsUploadsWithNoErrorResetsKeepsItsConnection() throws {
        let setup = try setUp()
        let result = try h2Client("answered", setup, ["--count", "250"])
        #expect(result["answered"] as? Int == 250 && result["after"] as? String == "200", "\(result)")
        // The raised limit is finite: NIO reserves a timestamp per allowed reset up front, and an unbounded limit
        // reserved 16 GiB per connection (the process's peak address space says so).
        let status = try String(contentsOfFile: "/proc/\(setup.proxy.pid)/status", encoding: .utf8)
        let peak = status.split(separator: "\n").first { $0.hasPrefix("VmPeak:") }
            .flatMap { Int($0.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") } ?? 0
        #expect(peak > 0 && peak < 8 * 1024 * 1024, "VmPeak \(peak) kB")
    }

    /// An early answer with a body, then RST_STREAM(NO_ERROR): the answer reaches the client whole, and the exchange is
    /// reported once its last bytes were written, with their size (NIO tells of the reset twice; neither report early).
    @Test func anEarlyAnswerBeforeANoErrorResetIsReportedWithItsBody() throws {
        let setup = try setUp()
        let result = try h2Client("answered", setup, ["--count", "1", "--path", "/answer-reset-body"])
        #expect(result["answered"] as? Int == 1 && result["body"] as? Int == 1000, "\(result)")
        let action = try #require(try setup.waitForActions(2).first { $0["path"] as? String == "/answer-reset-body" })
        #expect(action["status"] as? Int == 200 && action["response_body_bytes"] as? Int == 1000, "\(action)")
    }

    @Test func curlSpeaksHTTP2EndToEndAndEachStreamIsReportedOnceWithItsPath() throws {
        let setup = try setUp()
        let base = "https://localhost:\(setup.originPort)"
        // Two requests on one connection (curl reuses it), the second a POST with a query that is not reported.
        let result = try runCommand(
            Paths.which("curl"),
            ["-sS", "--max-time", "10", "--http2", "-x", "http://127.0.0.1:\(setup.proxyPort)", "--cacert", setup.inspectionCA,
             "-w", " %{http_version}\n", base + "/size/20", "--next", "--http2", "-x", "http://127.0.0.1:\(setup.proxyPort)",
             "--cacert", setup.inspectionCA, "-w", " %{http_version}\n", "-d", "hello there", base + "/echo?token=secret"],
            timeout: 30)
        #expect(result.status == 0 && result.stdout.split(separator: "\n") == ["01234567890123456789 2", "hello there 2"], "\(result.stdout) \(result.stderr)")
        // The origin was spoken to in h2 (its requests arrive as h2 streams).
        let requests = try setup.origin.waitForLines(count: 2, timeout: 10) { $0.hasPrefix("REQUEST ") }
        #expect(requests == ["REQUEST GET /size/20 -", "REQUEST POST /echo?token=secret -"])
        let actions = try setup.waitForActions(2)
        #expect(actions.count == 2, "\(actions)")
        let get = try #require(actions.first { $0["path"] as? String == "/size/20" })
        #expect(get["method"] as? String == "GET" && get["status"] as? Int == 200 && get["protocol"] as? String == "h2")
        #expect(get["response_body_bytes"] as? Int == 20 && get["intercepted"] as? Bool == true)
        #expect(get["request_host"] == nil, "its :authority is the tunnel's host")
        let post = try #require(actions.first { $0["path"] as? String == "/echo" }, "the query is not reported: \(actions)")
        #expect(post["method"] as? String == "POST" && post["request_body_bytes"] as? Int == 11 && post["response_body_bytes"] as? Int == 11)
        // Both streams belong to one connection, reported by its first action's event id.
        #expect(get["connection_id"] as? String == post["connection_id"] as? String)
        #expect(!setup.proxy.stdoutLines.joined().contains("secret"))
    }

    /// Once the agent's clients have settled on an offer (two connections with h2 and http/1.1), a CONNECT begins its
    /// upstream handshake before its ClientHello is in (`EarlyUpstreamHandshake`): what the origin sends as soon as
    /// h2 is chosen (its SETTINGS) waits for the client's connection, which then speaks h2 as any other.
    @Test func anUpstreamHandshakeBegunEarlyServesHTTP2() throws {
        let setup = try setUp()
        for round in 1...4 {
            let result = try runCommand(
                Paths.which("curl"),
                ["-sS", "--max-time", "10", "--http2", "-x", "http://127.0.0.1:\(setup.proxyPort)", "--cacert",
                 setup.inspectionCA, "-w", " %{http_version}\n", "https://localhost:\(setup.originPort)/size/5"],
                timeout: 30)
            #expect(result.status == 0 && result.stdout == "01234 2", "round \(round): \(result.stdout) \(result.stderr)")
        }
        let actions = try setup.waitForActions(4)
        #expect(actions.allSatisfy { $0["protocol"] as? String == "h2" && $0["status"] as? Int == 200 }, "\(actions)")
        let metrics = try AdminTests().get(try setup.proxy.adminPort(), "/metrics").body
        #expect(AdminTests.value(metrics, #"kaizen_egress_upstream_early_handshakes_total{outcome="used"}"#) == 2, "\(metrics)")
        #expect(AdminTests.value(metrics, #"kaizen_egress_upstream_early_handshakes_total{outcome="discarded"}"#) == 0)
    }

    @Test func nghttpSpeaksHTTP2ThroughTheInspection() throws {
        let setup = try setUp()
        let (shim, shimPort) = try connectShim(setup)
        defer { withExtendedLifetime(shim) {} }
        let base = "https://localhost:\(shimPort)"
        // Three concurrent streams on one connection.
        let result = try runCommand(
            Paths.which("nghttp"), ["-n", "-s", "-t", "10", base + "/size/1000", base + "/size/2000", base + "/size/3000"],
            timeout: 30)
        #expect(result.status == 0, "\(result.stdout) \(result.stderr)")
        let actions = try setup.waitForActions(3)
        let paths = Set(actions.compactMap { $0["path"] as? String })
        #expect(paths == ["/size/1000", "/size/2000", "/size/3000"], "\(actions)")
        #expect(actions.allSatisfy { $0["protocol"] as? String == "h2" && $0["status"] as? Int == 200 })
        #expect(Set(actions.compactMap { $0["connection_id"] as? String }).count == 1)
    }

    /// A stream whose whole response the proxy has read, and whose client stops reading it one byte short of its end
    /// (its window never opened again, the connection kept): the action is not held back, in memory only, for as
    /// long as the connection lives, but reported 10 s after the end went to the client's side, with the bytes
    /// written and why it is not whole.
    @Test func aStreamTheClientStopsReadingIsReportedWithinTenSeconds() throws {
        let setup = try setUp()
        let script = Paths.endToEndDirectory.appendingPathComponent("h2_client.py").path
        // 65,536 bytes: one more than the stream's initial window (65,535), so its last byte and END_STREAM wait.
        let client = try ChildProcess(
            Paths.which("python3"),
            [script, "streams", "--proxy-port", "\(setup.proxyPort)", "--port", "\(setup.originPort)", "--ca",
             setup.inspectionCA, "--timeout", "20", "--count", "1", "--stall", "1", "--stall-size", "65536", "--hold", "16"])
        _ = try client.waitForLine(timeout: 30) { $0 == "HOLDING" }
        let started = Date()
        let line = try setup.proxy.waitForLine(timeout: 15) { $0.contains("\"action\"") && $0.contains("/size/65536") }
        let waited = Date().timeIntervalSince(started)
        #expect(line.contains("the client had not taken the whole response 10 s after the proxy passed it on"), "\(line)")
        #expect(line.contains(#""response_body_bytes":65535"#), "\(line)")
        #expect(waited < 12, "reported \(waited) s after the client began holding")
        // The client's connection is still open: the report did not wait for it.
        #expect(!setup.proxy.stdoutLines.contains { $0.contains("\"close\"") }, "\(setup.proxy.stdoutLines.suffix(2))")
        _ = try client.waitForExit(timeout: 30)
    }

    @Test func hundredConcurrentStreamsCompleteAndAStalledOneBlocksNoOther() throws {
        let setup = try setUp()
        // The first stream asks for 4 MB and is never read: its windows fill and it stops; the 99 others finish.
        let seen = try h2Client("streams", setup, ["--count", "100", "--size", "20000", "--stall", "1", "--stall-size", "4000000"])
        #expect(seen["completed"] as? Int == 99, "\(seen)")
        #expect(seen["stalled_ended"] as? Int == 0, "\(seen)")
        let stalled = try #require((seen["stalled_received"] as? [Int])?.first)
        #expect(stalled < 4_000_000, "the stalled stream got only what its window allowed: \(seen)")
        let actions = try setup.waitForActions(100)
        #expect(actions.filter { $0["path"] as? String == "/size/20000" && $0["status"] as? Int == 200 }.count == 99)
        // The stalled stream is reported when the client's connection goes, with the bytes written to the client:
        // at most the 65,535 its window let through, not what the proxy had read from the origin meanwhile.
        let cut = try #require(actions.first { $0["path"] as? String == "/size/4000000" }, "\(actions.count)")
        let reported = try #require(cut["response_body_bytes"] as? Int, "\(cut)")
        #expect(reported <= 65_535 && reported >= stalled, "reported \(reported), received \(stalled)")
        // Its last DATA still waited for the client's window when the connection went: it is reported before the
        // connection's close record, not after it.
        let closeLine = try setup.proxy.waitForLine(timeout: 20) { $0.contains("\"close\"") }
        let lines = setup.proxy.stdoutLines
        let cutIndex = try #require(lines.firstIndex { $0.contains("\"action\"") && $0.contains("/size/4000000") })
        let closeIndex = try #require(lines.firstIndex(of: closeLine))
        #expect(cutIndex < closeIndex, "\(lines.suffix(3))")
    }

    @Test func aGRPCShapedExchangeArrivesIntactWithItsTrailers() throws {
        let setup = try setUp()
        let seen = try h2Client("grpc", setup)
        #expect(seen["status"] as? String == "200" && seen["content_type"] as? String == "application/grpc", "\(seen)")
        #expect(seen["body_matches"] as? Bool == true)
        #expect(seen["trailers"] as? [String: String] == ["grpc-status": "0", "grpc-message": "ok"], "\(seen)")
        let action = try #require(try setup.waitForActions(1).first)
        #expect(action["method"] as? String == "POST" && action["path"] as? String == "/grpc" && action["status"] as? Int == 200)
        #expect(action["request_body_bytes"] as? Int == 10 && action["response_body_bytes"] as? Int == 10, "\(action)")
    }

    @Test func resetsAndGoawaysArePassedOnWithTheirCodes() throws {
        let setup = try setUp()
        let reset = try h2Client("reset", setup)
        #expect(reset["reset"] as? Int == 11, "ENHANCE_YOUR_CALM from the origin: \(reset)")
        let goaway = try h2Client("goaway", setup)
        #expect(goaway["status"] as? String == "200" && goaway["body"] as? String == "bye", "\(goaway)")
        #expect(goaway["goaway"] as? Int == 11, "the origin's GOAWAY code reaches the client: \(goaway)")
        let actions = try setup.waitForActions(2)
        let resetAction = try #require(actions.first { $0["path"] as? String == "/reset" })
        #expect((resetAction["error"] as? String)?.contains("reset by the upstream") == true, "\(resetAction)")
    }

    @Test func aStreamErrorEndsThatStreamOnly() throws {
        let setup = try setUp()
        // A body shorter than its content-length: that stream is reset (PROTOCOL_ERROR), the connection goes on.
        let seen = try h2Client("badstream", setup)
        #expect(seen["bad_reset"] as? Int == 1 && seen["goaway"] is NSNull, "\(seen)")
        #expect(seen["good_status"] as? String == "200" && seen["good_body"] as? String == "01234", "\(seen)")
        // The bad stream was reset by the proxy's HTTP/2 layer, not by the client: the action does not say it was.
        // It had a stream of its own, which reports it: once, not again as a request refused before it had one.
        try setup.proxy.waitUntil(timeout: 20) { lines in lines.contains { $0.contains("\"action\"") && $0.contains("/size/5") } }
        let actions = setup.actions
        #expect(actions.count == 2, "\(actions)")
        let bad = try #require(actions.first { $0["method"] as? String == "POST" }, "\(actions)")
        #expect(!((bad["error"] as? String)?.contains("reset by the client") ?? true), "\(bad)")
    }

    @Test func anUpstreamThatClosesRightAfterItsResponseLosesNoneOfIt() throws {
        let setup = try setUp()
        let shimPort = try connectShim(setup)
        defer { withExtendedLifetime(shimPort.shim) {} }
        // The origin sends 1 MB, GOAWAY, and closes its socket. nghttp gives a 64 KiB window (-W/-w 16), so much of
        // the response still waits in the proxy for the client's window when the upstream is gone: all of it
        // arrives, then the connection closes.
        let result = try runCommand(
            Paths.which("nghttp"), ["-W", "16", "-w", "16", "-t", "20", "https://localhost:\(shimPort.port)/close-after/1000000"],
            timeout: 40)
        #expect(result.status == 0 && result.stdout.utf8.count == 1_000_000, "\(result.stdout.utf8.count) \(result.stderr)")
        let action = try #require(try setup.waitForActions(1).first)
        #expect(action["response_body_bytes"] as? Int == 1_000_000 && action["error"] == nil, "\(action)")
    }

    @Test func aWebSocketOverExtendedConnectIsReportedAndItsFramesRelayed() throws {
        let setup = try setUp()
        let seen = try h2Client("websocket", setup)
        #expect(seen["status"] as? String == "200" && seen["echoed"] as? Bool == true, "\(seen)")
        let requests = try setup.origin.waitForLines(count: 1, timeout: 10) { $0.hasPrefix("REQUEST ") }
        #expect(requests == ["REQUEST CONNECT /chat?room=1 websocket"])
        let action = try #require(try setup.waitForActions(1).first)
        #expect(action["method"] as? String == "CONNECT" && action["path"] as? String == "/chat", "\(action)")
        #expect(action["upgrade"] as? String == "websocket" && action["status"] as? Int == 200, "\(action)")
    }

    /// A stream that would be a tunnel inside the inspected tunnel (a CONNECT without :protocol, or an extended CONNECT
    /// for another protocol than WebSocket: MASQUE's connect-udp reaches any host, named only inside the stream) is
    /// refused with 400 and never reaches the upstream, as HTTP/1.1 refuses a CONNECT; the connection goes on.
    @Test func tunnelsInsideTheInspectedConnectionAreRefused() throws {
        let setup = try setUp()
        let seen = try h2Client("tunnels", setup)
        for label in ["connect", "connect-udp"] {
            #expect((seen[label] as? [String: Any])?["status"] as? String == "400", "\(label): \(seen)")
        }
        #expect((seen["after"] as? [String: Any])?["status"] as? String == "200", "\(seen)")
        let actions = try setup.waitForActions(3)
        #expect(actions[0]["error"] as? String == "rejected: a CONNECT inside an inspected connection", "\(actions[0])")
        #expect((actions[1]["error"] as? String)?.hasPrefix("rejected: an extended CONNECT for connect-udp") == true, "\(actions[1])")
        let requests = setup.origin.stdoutLines.filter { $0.hasPrefix("REQUEST ") }
        #expect(requests.allSatisfy { !$0.contains("CONNECT") }, "\(requests)")
    }

    /// An :authority or host field the proxy could not judge as a name is refused with 400, as HTTP/1.1 refuses such a
    /// Host: a lenient upstream could read a blocked name in `blocked%2eexample`.
    @Test func anAuthorityThatIsNotAHostIsRefused() throws {
        let setup = try setUp()
        let seen = try h2Client("authority", setup)
        for label in ["authority", "host"] {
            #expect((seen[label] as? [String: Any])?["status"] as? String == "400", "\(label): \(seen)")
        }
        #expect((seen["after"] as? [String: Any])?["status"] as? String == "200", "\(seen)")
        let actions = try setup.waitForActions(3)
        #expect((actions[0]["error"] as? String)?.contains("an invalid :authority or host (blocked%2eexample)") == true, "\(actions[0])")
        #expect(setup.origin.stdoutLines.filter { $0.hasPrefix("REQUEST ") }.count == 1)
    }

    @Test func aTunnelWhoseUpstreamDropsItsConnectionIsResetTowardTheClient() throws {
        let setup = try setUp()
        let seen = try h2Client("websocket", setup, ["--cut"])
        #expect(seen["status"] as? String == "200" && seen["echoed"] as? Bool == true, "\(seen)")
        #expect(seen["ended"] as? String == "reset 8", "CANCEL, at once rather than at the idle timeout: \(seen)")
    }

    @Test func enforceModeRefusesABlockedStreamWith403AndTheConnectionsOtherStreamsGoOn() throws {
        let pki = try TestPKI.mint()
        let policies = pki.directory + "/policies"
        try FileManager.default.createDirectory(atPath: policies, withIntermediateDirectories: false)
        try #"{"policies":[{"name":"no-blocked","mode":"blocklist","rules":{"domains":["blocked.test"]}}]}"#
            .write(toFile: policies + "/egress-agent.json", atomically: true, encoding: .utf8)
        let (mock, mockPort) = try ControlPlaneConnectionTests().startMock(pki, policyDirectory: policies)
        defer { withExtendedLifetime(mock) {} }
        let setup = try setUp(extra: [
            "KAIZEN_API_KEY": ControlPlaneConnectionTests.key, "KAIZEN_API_URL": "https://localhost:\(mockPort)",
            "KAIZEN_API_CA_FILE": pki.caCertificate, "KAIZEN_LOCAL": "1", "KAIZEN_MODE": "enforce",
            "KAIZEN_SPOOL_DIR": pki.directory + "/spool", "KAIZEN_STATE_DIR": pki.directory + "/state",
        ])
        _ = try mock.waitForLine(timeout: 20) { $0 == "POLICY egress-agent 200" }
        let proxy = "http://127.0.0.1:\(setup.proxyPort)"
        let base = "https://localhost:\(setup.originPort)"
        // One connection, two streams: the first names a blocked host as its :authority, the second is allowed.
        let result = try runCommand(
            Paths.which("curl"),
            ["-sS", "--max-time", "10", "--http2", "-x", proxy, "--cacert", setup.inspectionCA, "-H", "Host: blocked.test",
             "-w", "%{http_code}\n", base + "/size/5", "--next", "--http2", "-x", proxy, "--cacert", setup.inspectionCA,
             "-w", " %{http_code}\n", base + "/size/5"],
            timeout: 30)
        #expect(result.stdout.contains("blocked by policy no-blocked\n403\n01234 200"), "\(result.stdout) \(result.stderr)")
        // The blocked request never reached the origin; the allowed one did, on the same connection.
        let requests = try setup.origin.waitForLines(count: 1, timeout: 10) { $0.hasPrefix("REQUEST ") }
        #expect(requests == ["REQUEST GET /size/5 -"])
        let actions = try setup.waitForActions(2)
        #expect(actions.compactMap { $0["status"] as? Int }.sorted() == [200, 403], "\(actions)")
        #expect(actions.first { $0["status"] as? Int == 403 }?["policy"] as? String == "no-blocked")
        // The blocked request named another host than the tunnel's: the action says which.
        #expect(actions.first { $0["status"] as? Int == 403 }?["request_host"] as? String == "blocked.test")
        #expect(actions.first { $0["status"] as? Int == 200 }?["request_host"] == nil)
        #expect(setup.proxy.stderrEventually("requests=2 blocked_requests=1"), "\(setup.proxy.stderr)")
    }

    @Test func aDrainingProxyTellsHTTP2ClientsGoawayAndClosesTheirIdleConnections() throws {
        let setup = try setUp()
        let script = Paths.endToEndDirectory.appendingPathComponent("h2_client.py").path
        let client = try ChildProcess(
            Paths.which("python3"),
            [script, "idle", "--proxy-port", "\(setup.proxyPort)", "--port", "\(setup.originPort)", "--ca", setup.inspectionCA,
             "--timeout", "20"])
        _ = try client.waitForLine(timeout: 20) { $0 == "READY" }
        setup.proxy.signal(SIGTERM)
        // GOAWAY(NO_ERROR) first, then the close, long before the drain period (10 s) or the client's 20 s.
        _ = try client.waitForLine(timeout: 10) { $0 == "GOAWAY 0" }
        _ = try client.waitForLine(timeout: 10) { $0 == "CLOSED" }
        #expect(try setup.proxy.waitForExit(timeout: 30) == 0)
        let close = try #require(setup.proxy.stdoutLines.first { $0.contains("\"close\"") })
        #expect(close.contains("\"closed_by\":\"proxy\"") && close.contains("\"reason\":\"shutdown\""), "\(close)")
    }

    @Test func theLimitsAreAdvertisedAndAHeaderListOverTheLimitEndsOnlyThatConnection() throws {
        let setup = try setUp(extra: [
            "KAIZEN_H2_MAX_STREAMS": "10", "KAIZEN_H2_BUFFER_BYTES": "4M", "KAIZEN_MAX_HEADER_BYTES": "16K",
        ])
        let settings = try h2Client("settings", setup)
        // MAX_CONCURRENT_STREAMS, INITIAL_WINDOW_SIZE (4 MiB / (8 × 10)), MAX_HEADER_LIST_SIZE.
        #expect(settings["3"] as? Int == 10 && settings["4"] as? Int == 52_428 && settings["6"] as? Int == 16_384, "\(settings)")
        // The upstream is told no server push.
        let upstreamSettings = try setup.origin.waitForLine(timeout: 10) { $0.hasPrefix("SETTINGS ") }
        #expect(upstreamSettings.contains(" 2=0") || upstreamSettings.hasPrefix("SETTINGS 2=0"), "\(upstreamSettings)")

        let big = try h2Client("bigheader", setup, ["--size", "40000"])
        let code = big["goaway"] as? Int
        #expect(code != nil && code != 0, "a GOAWAY with an error code: \(big)")
        #expect(setup.proxy.stderrEventually("HTTP/2 connection error"))
        // The proxy carries on.
        let next = try runCommand(
            Paths.which("curl"),
            ["-sS", "--max-time", "10", "--http2", "-x", "http://127.0.0.1:\(setup.proxyPort)", "--cacert", setup.inspectionCA,
             "https://localhost:\(setup.originPort)/size/5"],
            timeout: 30)
        #expect(next.status == 0 && next.stdout == "01234", "\(next.stderr)")
    }
}
