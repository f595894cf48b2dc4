import Foundation
import TestSupport
import Testing

/// Inspection keeps an idle, verified upstream connection for the next inspected connection of the same agent to
/// the same destination (`KAIZEN_UPSTREAM_IDLE_TIMEOUT`). curl with `Connection: close` makes each URL a client
/// connection (and a CONNECT) of its own, and the proxy gives the upstream connection back as soon as a response
/// ends, before the client has it: so the next CONNECT finds it, without racing the client's close.
///
/// Connections are kept per event loop (an inspected connection's two channels share one), and the proxy spreads
/// client connections over one loop per core: so these tests make more client connections than this machine has
/// cores, and check what holds whichever loop each lands on.
@Suite struct UpstreamReuseTests {
    let inspection = InspectionTests()
    /// More client connections than event loops: at least two land on one loop, so at least one reuses.
    let count = max(6, ProcessInfo.processInfo.activeProcessorCount + 1)

    func curlEachOnItsOwnConnection(_ setup: InspectionTests.Setup, _ paths: [String], extra: [String] = []) throws
        -> CommandResult
    {
        let base = "https://localhost:\(setup.originPort)"
        return try inspection.curl(setup, paths.map { base + $0 }, extra: ["-H", "Connection: close"] + extra)
    }

    /// The origin's answers to `/connection`: which of its connections, and which request on it.
    static func served(_ stdout: String) -> [(connection: Int, request: Int)] {
        stdout.split(separator: "\n").compactMap { line in
            let words = line.split(separator: " ")
            guard words.count == 4, words[0] == "connection", let connection = Int(words[1]), let request = Int(words[3])
            else { return nil }
            return (connection, request)
        }
    }

    @Test func theNextClientConnectionTakesTheIdleUpstreamConnectionAndSaysWhoVerifiedIt() throws {
        let setup = try inspection.setUp()
        let result = try curlEachOnItsOwnConnection(setup, Array(repeating: "/connection", count: count))
        #expect(result.status == 0, "\(result.stderr)")
        let served = Self.served(result.stdout)
        try #require(served.count == count, "\(result.stdout)")
        let actions = try setup.waitForActions(count)
        #expect(actions.allSatisfy { $0["intercepted"] as? Bool == true && $0["status"] as? Int == 200 })
        #expect(Set(actions.compactMap { $0["connection_id"] as? String }).count == count)

        // Each client connection either opened an upstream connection of its own (the origin's first request on
        // it), or took one: then its action names the connection that opened and verified it, and the origin saw
        // the next request on that same connection.
        var openedBy: [String: Int] = [:]  // event ID → the origin's connection
        var requests: [Int: Int] = [:]  // the origin's connection → requests it served
        var reused = 0
        for (action, answer) in zip(actions, served) {
            let eventID = try #require(action["event_id"] as? String)
            if let from = action["upstream_reused_from"] as? String {
                reused += 1
                #expect(openedBy[from] == answer.connection, "\(action)")
            } else {
                #expect(requests[answer.connection] == nil, "a new upstream connection was not new: \(answer)")
                openedBy[eventID] = answer.connection
            }
            requests[answer.connection, default: 0] += 1
            #expect(answer.request == requests[answer.connection])
        }
        #expect(reused >= 1 && reused == count - openedBy.count)
        // The connection's log line says so too.
        let lines = try setup.proxy.waitForStderr(containing: "upstream=reused", count: Int(reused), timeout: 20)
        #expect(lines.components(separatedBy: "mode=inspected upstream=reused decision=allow").count - 1 == Int(reused))
        let metrics = try AdminTests().get(try setup.proxy.adminPort(), "/metrics").body
        #expect(AdminTests.value(metrics, "kaizen_egress_upstream_connections_reused_total") == Double(reused), "\(metrics)")
        // Kept now: the connection the last client left, at least (one per event loop that served one).
        let idle = try #require(AdminTests.value(metrics, "kaizen_egress_upstream_idle_connections"))
        #expect(idle >= 1 && idle <= Double(openedBy.count), "\(metrics)")
        // The others each had a handshake (a later one may resume the first one's session).
        let handshakes = try #require(AdminTests.value(metrics, #"kaizen_egress_upstream_tls_handshakes_total{kind="full"}"#))
            + (AdminTests.value(metrics, #"kaizen_egress_upstream_tls_handshakes_total{kind="resumed"}"#) ?? 0)
        #expect(handshakes == Double(count - reused))
    }

    /// `Connection: close` is about the client's connection: the upstream, whose connection may serve another
    /// client, is not told; the client is told in the response that its connection closes, and it does.
    @Test func aClientsConnectionCloseStaysBetweenTheClientAndTheProxy() throws {
        let setup = try inspection.setUp()
        let result = try curlEachOnItsOwnConnection(setup, ["/headers", "/headers"], extra: ["-i"])
        #expect(result.status == 0, "\(result.stderr)")
        let responses = result.stdout.components(separatedBy: "HTTP/1.1 200 Connection established").dropFirst()
        try #require(responses.count == 2, "\(result.stdout)")
        for response in responses {
            let lines = response.components(separatedBy: "\r\n")
            #expect(lines.filter { $0.lowercased().hasPrefix("connection:") } == ["Connection: close"], "\(response)")
            // The body: the request head as the origin received it.
            let echoed = response.components(separatedBy: "\r\n\r\n").last ?? ""
            #expect(echoed.hasPrefix("GET /headers HTTP/1.1\n"), "\(response)")
            #expect(!echoed.lowercased().contains("connection"), "\(echoed)")
        }
    }

    /// `/flaky` hangs up on any request after a connection's first: as an upstream closing an idle connection just
    /// as it is reused. A GET is then sent again on a new upstream connection, and the client sees only its answer.
    @Test func aReusedConnectionThatClosesBeforeAnsweringGetsTheRequestOnANewOne() throws {
        let setup = try inspection.setUp()
        let result = try curlEachOnItsOwnConnection(setup, Array(repeating: "/flaky", count: count))
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.split(separator: "\n") == Array(repeating: "fresh connection", count: count), "\(result.stdout)")
        let actions = try setup.waitForActions(count)
        #expect(actions.allSatisfy { $0["status"] as? Int == 200 && $0["error"] == nil }, "\(actions)")
        // Each was first given a reused connection, or opened its own; those that were ended on a new one, which is
        // what their actions say (no `upstream_reused_from`).
        let metrics = try AdminTests().get(try setup.proxy.adminPort(), "/metrics").body
        let reused = try #require(AdminTests.value(metrics, "kaizen_egress_upstream_connections_reused_total"))
        #expect(reused >= 1)
        #expect(actions.allSatisfy { $0["upstream_reused_from"] == nil })
    }

    /// An upstream that sends the start of a response past the end of the last one (a wrong Content-Length, a body
    /// on a 204) holds it in the connection's decoder: the connection is not kept, so that start never becomes the
    /// next client connection's response. One event loop, so the next client connection would take it.
    @Test func aResponseStartLeftPastTheLastResponseNeverAnswersTheNextConnection() throws {
        let setup = try inspection.setUp(extra: ["KAIZEN_EVENT_LOOPS": "1"])
        let result = try curlEachOnItsOwnConnection(
            setup, ["/connection?leftover=1", "/connection", "/connection"], extra: ["-w", "status %{http_code}\n"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.components(separatedBy: "status 200").count - 1 == 3, "\(result.stdout)")
        // The second client connection got a new upstream connection; the third took that one.
        #expect(Self.served(result.stdout).map { [$0.connection, $0.request] } == [[1, 1], [2, 1], [2, 2]], "\(result.stdout)")
        let actions = try setup.waitForActions(3)
        #expect(actions.map { $0["status"] as? Int } == [200, 200, 200], "\(actions)")
        #expect(actions[1]["upstream_reused_from"] == nil && actions[2]["upstream_reused_from"] as? String == actions[1]["event_id"] as? String)
    }

    /// A request refused halfway through its body (a malformed chunk after one that went upstream) leaves the
    /// upstream connection in the middle of that body: it is closed, not kept for the next client connection, whose
    /// request (a POST, never sent twice) would otherwise fail. One event loop, so the next one would take it.
    @Test func aRequestCutShortInItsBodyLeavesItsUpstreamConnectionUnkept() throws {
        let setup = try inspection.setUp(extra: ["KAIZEN_EVENT_LOOPS": "1"])
        let script = Paths.endToEndDirectory.appendingPathComponent("raw_mitm_request.py").path
        func send(_ request: String) throws -> String {
            try runCommand(Paths.which("python3"), [
                script, "\(setup.proxyPort)", "\(setup.originPort)", setup.inspectionCA, "localhost", request,
            ]).stdout.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        let cut = try send(#"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n"#)
        #expect(cut.hasPrefix("HTTP/1.1 400"), "\(cut)")
        for _ in 0..<2 {
            let next = try send(#"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 0\r\n\r\n"#)
            #expect(next == "HTTP/1.1 200 OK", "\(next)")
        }
        let actions = try setup.waitForActions(3)
        #expect(actions.map { $0["status"] as? Int } == [400, 200, 200], "\(actions)")
        #expect(actions[1]["upstream_reused_from"] == nil, "\(actions[1])")
    }

    /// A POST, even without a body, is never sent twice by the proxy (RFC 9112 §9.3.1): on a reused connection that
    /// closes before answering, it gets a 502, as a first request whose upstream closes always did.
    @Test func aPostOnAReusedConnectionThatClosesIsAnswered502NotSentAgain() throws {
        let setup = try inspection.setUp()
        let result = try curlEachOnItsOwnConnection(
            setup, Array(repeating: "/flaky", count: count), extra: ["-X", "POST", "-w", "%{http_code}\n"])
        #expect(result.status == 0, "\(result.stderr)")
        let codes = result.stdout.split(separator: "\n").filter { $0 == "200" || $0 == "502" }
        #expect(codes.count == count, "\(result.stdout)")
        let metrics = try AdminTests().get(try setup.proxy.adminPort(), "/metrics").body
        let reused = try #require(AdminTests.value(metrics, "kaizen_egress_upstream_connections_reused_total"))
        #expect(reused >= 1 && Double(codes.filter { $0 == "502" }.count) == reused, "\(result.stdout)")
        let actions = try setup.waitForActions(count)
        #expect(actions.filter { $0["status"] as? Int == 502 }.allSatisfy {
            ($0["error"] as? String)?.hasPrefix("upstream closed the connection before responding") == true
                && $0["upstream_reused_from"] != nil
        })
    }

    /// A taken connection the upstream closes before any request went on it (its idle timeout can end it just as it
    /// is taken) is replaced at once, so the request the client sends next is answered. One event loop
    /// (`NIO_SINGLETON_GROUP_LOOP_COUNT`), so the next client connection takes the kept one.
    @Test func aTakenConnectionThatClosesBeforeItsFirstRequestIsReplaced() throws {
        let setup = try inspection.setUp(extra: ["NIO_SINGLETON_GROUP_LOOP_COUNT": "1"])
        // No ALPN, as the Python client below: a kept connection serves only the same offer.
        let held = try curlEachOnItsOwnConnection(setup, ["/connection?hold=1"], extra: ["--no-alpn"])
        #expect(held.stdout == "connection 1 request 1", "\(held.stderr)")
        let script = Paths.endToEndDirectory.appendingPathComponent("mitm_client.py").path
        let client = try ChildProcess(
            Paths.which("python3"),
            [script, "wait-then-get", "\(setup.proxyPort)", "\(setup.originPort)", setup.inspectionCA])
        _ = try client.waitForLine(timeout: 20) { $0 == "READY" }
        // The client's connection holds the kept upstream connection now; the origin ends it.
        let released = try runCommand(
            Paths.which("curl"),
            ["-sS", "--max-time", "10", "--cacert", setup.pki.caCertificate,
             "https://localhost:\(setup.originPort)/release-held"])
        #expect(released.stdout == "released", "\(released.stderr)")
        _ = try setup.origin.waitForLine(timeout: 20) { $0 == "HELD closed" }
        client.signal(SIGUSR1)
        let answer = try client.waitForLine(timeout: 20) { $0.hasPrefix("HTTP/") }
        #expect(answer.hasPrefix("HTTP/1.1 200 OK connection ") && answer.hasSuffix(" request 1"), "\(answer)")
        #expect(!answer.contains("connection 1 "))
        let actions = try setup.waitForActions(2)
        #expect(actions.last?["status"] as? Int == 200 && actions.last?["upstream_reused_from"] == nil, "\(actions)")
        let metrics = try AdminTests().get(try setup.proxy.adminPort(), "/metrics").body
        #expect(AdminTests.value(metrics, "kaizen_egress_upstream_connections_reused_total") == 1, "\(metrics)")
    }

    /// A CONNECT that finds a kept connection of the agent's to its destination is answered without a dial (one
    /// round trip to the destination less); if its ClientHello then asks for another key (here another ALPN offer),
    /// the kept connection goes back and a connection is dialled after all. One event loop, as above.
    @Test func aConnectServedByAKeptConnectionNeedsNoDial() throws {
        let setup = try inspection.setUp(extra: ["NIO_SINGLETON_GROUP_LOOP_COUNT": "1"])
        // Kept: connection 1 for clients without ALPN.
        let first = try curlEachOnItsOwnConnection(setup, ["/connection"], extra: ["--no-alpn"])
        #expect(first.stdout == "connection 1 request 1", "\(first.stderr)")
        // curl's own offer (h2, http/1.1) is another key: connection 1 goes back, connection 2 is dialled.
        let second = try curlEachOnItsOwnConnection(setup, ["/connection"])
        #expect(second.stdout == "connection 2 request 1", "\(second.stderr)")
        // The origin takes no more connections: only kept ones can serve.
        let stopped = try runCommand(
            Paths.which("curl"),
            ["-sS", "--max-time", "10", "--cacert", setup.pki.caCertificate, "https://localhost:\(setup.originPort)/stop-listening"])
        #expect(stopped.stdout == "stopped", "\(stopped.stderr)")
        let kept = try curlEachOnItsOwnConnection(setup, ["/connection"])
        #expect(kept.status == 0 && kept.stdout == "connection 2 request 2", "\(kept.stdout) \(kept.stderr)")
        // The newest kept connection is curl's (2) again; a client without ALPN is given the one kept for it (1).
        let other = try curlEachOnItsOwnConnection(setup, ["/connection"], extra: ["--no-alpn"])
        #expect(other.status == 0 && other.stdout == "connection 1 request 2", "\(other.stdout) \(other.stderr)")
        // A client offering http/1.1 alone matches none: a dial after all, which fails; its connection ends, and the
        // action says why.
        let refused = try curlEachOnItsOwnConnection(setup, ["/connection"], extra: ["--http1.1"])
        #expect(refused.status != 0 && refused.stdout.isEmpty, "\(refused.stdout)")
        let actions = try setup.waitForActions(5)
        let last = try #require(actions.last)
        #expect(last["outcome"] as? String == "failed" && (last["error"] as? String)?.isEmpty == false, "\(last)")
        #expect(actions[2]["upstream_reused_from"] as? String == actions[1]["event_id"] as? String)
        #expect(actions[3]["upstream_reused_from"] as? String == actions[0]["event_id"] as? String)
    }

    /// A client that leaves between its CONNECT (answered with a kept connection in hand) and its ClientHello is
    /// reported as any, and the kept connection stays for the next one. With a reset, nothing is dialled for it; a
    /// FIN is a half-close (the server might speak first), so a connection is dialled and relayed as for any tunnel.
    @Test(arguments: [false, true])
    func aClientLeavingBeforeItsClientHelloLeavesTheKeptConnectionKept(_ reset: Bool) throws {
        let setup = try inspection.setUp(extra: ["NIO_SINGLETON_GROUP_LOOP_COUNT": "1"])
        let first = try curlEachOnItsOwnConnection(setup, ["/connection"])
        #expect(first.stdout == "connection 1 request 1", "\(first.stderr)")
        do {
            let socket = try RawSocket(host: "127.0.0.1", port: setup.proxyPort)
            try socket.send("CONNECT localhost:\(setup.originPort) HTTP/1.1\r\n\r\n")
            #expect(try socket.receive(until: "\r\n\r\n").hasPrefix("HTTP/1.1 200"))
            if reset { socket.resetOnClose() }
        }  // closed here, before any ClientHello
        let actions = try setup.waitForActions(2)
        #expect(actions[1]["inspection"] as? String == "client closed before its ClientHello", "\(actions)")
        #expect(!setup.proxy.stderr.contains("cannot set up"), "\(setup.proxy.stderr)")
        _ = try setup.proxy.waitForLines(count: 2, timeout: 20) { $0.contains("\"close\"") }
        let next = try curlEachOnItsOwnConnection(setup, ["/connection"])
        #expect(next.stdout == "connection 1 request 2", "\(next.stderr)")
    }

    /// A connection that replaces a reused one is verified as any: when the upstream now presents a certificate
    /// nothing trusts, the request waiting for it gets a 502 and nothing of that upstream reaches the client.
    @Test func aReplacementConnectionIsVerifiedAsAny() throws {
        let pki = try TestPKI.mint()
        let (origin, originPort) = try ChildProcess.swappingOrigin(pki)
        let caDirectory = try InspectionTests.makeCA(in: pki.directory)
        let (proxy, proxyPort) = try InspectionTests.startProxy([
            "KAIZEN_CA_CERT": caDirectory + "/ca.pem", "KAIZEN_CA_KEY": caDirectory + "/ca.key",
            "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate, "NIO_SINGLETON_GROUP_LOOP_COUNT": "1",
        ])
        let setup = InspectionTests.Setup(
            pki: pki, caDirectory: caDirectory, origin: origin, originPort: originPort, proxy: proxy, proxyPort: proxyPort)
        let kept = try curlEachOnItsOwnConnection(setup, ["/connection"])
        #expect(kept.stdout == "connection 1 request 1", "\(kept.stderr)")
        let swapped = try runCommand(
            Paths.which("curl"),
            ["-sS", "--max-time", "10", "--cacert", pki.caCertificate, "https://localhost:\(originPort)/swap-cert"])
        #expect(swapped.stdout == "swapped", "\(swapped.stderr)")
        // The kept connection hangs up on this request; the new one presents the untrusted certificate.
        let refused = try curlEachOnItsOwnConnection(setup, ["/connection?flaky=1"], extra: ["-w", "\n%{http_code}"])
        #expect(refused.stdout.hasSuffix("\n502"), "\(refused.stdout)")
        #expect(refused.stdout.contains("a new connection failed: upstream certificate verification failed"), "\(refused.stdout)")
        let actions = try setup.waitForActions(2)
        #expect(actions[1]["status"] as? Int == 502, "\(actions)")
        let metrics = try AdminTests().get(try setup.proxy.adminPort(), "/metrics").body
        #expect(AdminTests.value(metrics, "kaizen_egress_upstream_verification_failures_total") == 1, "\(metrics)")
    }

    /// A replacement connection must speak what the client was answered with: when the origin now chooses h2 (the
    /// client, answered HTTP/1.1 by ALPN from the kept connection, is mid-request), the request gets a 502 that says
    /// why. (Were the request sent on the new connection, this origin, which ignores ALPN, would answer it: 200.)
    @Test func aReplacementConnectionThatChoosesH2IsRefused() throws {
        let setup = try inspection.setUp(extra: ["NIO_SINGLETON_GROUP_LOOP_COUNT": "1"])
        // --http2: the proxy offers the origin h2 only when the client offers it.
        let kept = try curlEachOnItsOwnConnection(setup, ["/connection"], extra: ["--http2", "-w", "\n%{http_version}"])
        #expect(kept.stdout == "connection 1 request 1\n\n1.1", "\(kept.stderr)")  // HTTP/1.1 with the client
        let preferring = try runCommand(
            Paths.which("curl"),
            ["-sS", "--max-time", "10", "--http1.1", "--cacert", setup.pki.caCertificate,
             "https://localhost:\(setup.originPort)/prefer-h2"])
        #expect(preferring.stdout == "preferring h2", "\(preferring.stderr)")
        // The kept connection hangs up on this request; the new one chooses h2.
        let refused = try curlEachOnItsOwnConnection(
            setup, ["/connection?flaky=1"], extra: ["--http2", "-w", "\n%{http_code}"])
        #expect(refused.stdout.hasSuffix("\n502"), "\(refused.stdout)")
        #expect(refused.stdout.contains("a new connection failed: the new connection chose h2"), "\(refused.stdout)")
        _ = try setup.origin.waitForLine(timeout: 10) { $0 == "FLAKY hang-up" }
        let actions = try setup.waitForActions(2)
        #expect(actions[1]["status"] as? Int == 502 && actions[1]["path"] as? String == "/connection", "\(actions)")
    }

    /// The new connection that replaces a reused one is judged on its own: the old one's end without close_notify
    /// says nothing about the new one's. `/unframed?notify=1` ends its body with close_notify and the close.
    @Test func theReplacedConnectionsUncleanEndIsNotTheNewOnes() throws {
        let setup = try inspection.setUp()
        let result = try curlEachOnItsOwnConnection(
            setup, Array(repeating: "/connection", count: count) + Array(repeating: "/unframed?notify=1&flaky=1", count: count),
            extra: ["-w", "%{http_code}\n"])
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.components(separatedBy: "until close\n200").count == count + 1, "\(result.stdout)")
        // At least one reused connection hung up (without close_notify) and was replaced.
        #expect(setup.origin.stdoutLines.contains("FLAKY hang-up"), "\(setup.origin.stdoutLines)")
        let actions = try setup.waitForActions(2 * count)
        let unframed = actions.filter { $0["path"] as? String == "/unframed" }
        #expect(unframed.count == count && unframed.allSatisfy { $0["status"] as? Int == 200 && $0["error"] == nil }, "\(unframed)")
    }

    /// An upstream connection that closes after its response, or that was told to, goes with its client connection.
    /// (`linger=1`: the origin closes only once the proxy has, so a connection kept by mistake would be taken.)
    // (curl offers `http/1.0` by ALPN with --http1.0, which inspection passes through: no ALPN then.)
    @Test(arguments: [("/connection?close=1", [String]()), ("/connection?linger=1", ["--http1.0", "--no-alpn"])])
    func anUpstreamConnectionThatEndsWithItsResponseIsNotKept(_ path: String, _ extra: [String]) throws {
        let setup = try inspection.setUp()
        let result = try inspection.curl(
            setup, Array(repeating: "https://localhost:\(setup.originPort)\(path)", count: count), extra: extra)
        #expect(result.status == 0, "\(result.stderr)")
        let served = Self.served(result.stdout)
        #expect(served.count == count && served.allSatisfy { $0.request == 1 }, "\(result.stdout)")
        _ = try setup.waitForActions(count)
        let metrics = try AdminTests().get(try setup.proxy.adminPort(), "/metrics").body
        #expect(AdminTests.value(metrics, "kaizen_egress_upstream_connections_reused_total") == 0, "\(metrics)")
    }

    /// Two agents behind one proxy (`KAIZEN_PROXY_AUTH`) never share an upstream connection; each reuses its own.
    /// One event loop, so every kept connection is within reach of every client connection.
    @Test func agentsNeverShareAnUpstreamConnection() throws {
        let agents = try TestPKI.mint().directory + "/agents"
        #expect(FileManager.default.createFile(
            atPath: agents, contents: Data("planner:planner-token-0123456789\nresearcher:researcher-token-0123456789\n".utf8),
            attributes: [.posixPermissions: 0o600]))
        let setup = try inspection.setUp(extra: ["NIO_SINGLETON_GROUP_LOOP_COUNT": "1", "KAIZEN_PROXY_AUTH": agents])
        var served: [String: [(connection: Int, request: Int)]] = [:]
        for agent in ["planner", "researcher", "planner", "researcher", "planner"] {
            let result = try curlEachOnItsOwnConnection(
                setup, ["/connection"], extra: ["--proxy-user", "\(agent):\(agent)-token-0123456789"])
            #expect(result.status == 0, "\(result.stderr)")
            served[agent, default: []] += Self.served(result.stdout)
        }
        let planner = Set(served["planner", default: []].map(\.connection))
        let researcher = Set(served["researcher", default: []].map(\.connection))
        #expect(planner.count == 1 && researcher.count == 1 && planner.isDisjoint(with: researcher), "\(served)")
        let actions = try setup.waitForActions(5)
        #expect(actions.compactMap { $0["upstream_reused_from"] as? String }.count == 3)
    }

    @Test func zeroIdleTimeoutGivesEachClientConnectionItsOwnUpstreamConnection() throws {
        let setup = try inspection.setUp(extra: ["KAIZEN_UPSTREAM_IDLE_TIMEOUT": "0"])
        let result = try curlEachOnItsOwnConnection(setup, Array(repeating: "/connection", count: count) + ["/headers"])
        #expect(result.status == 0, "\(result.stderr)")
        let served = Self.served(result.stdout)
        #expect(served.map(\.connection) == Array(1...count), "\(result.stdout)")
        #expect(served.allSatisfy { $0.request == 1 })
        // The request went as the client sent it.
        #expect(result.stdout.lowercased().contains("connection: close"), "\(result.stdout)")
        let actions = try setup.waitForActions(count + 1)
        #expect(actions.allSatisfy { $0["upstream_reused_from"] == nil })
    }

    /// NTLM and Negotiate authenticate the connection, not the request: an upstream connection that carried either
    /// serves its own client connection only.
    @Test func anUpstreamConnectionBoundByNTLMOrNegotiateIsNeverReused() throws {
        let setup = try inspection.setUp()
        // Each NTLM challenge binds its connection: with more client connections than event loops, a reused one
        // would show as a second request on an origin connection.
        let challenged = try curlEachOnItsOwnConnection(setup, Array(repeating: "/ntlm", count: count))
        #expect(challenged.status == 0, "\(challenged.stderr)")
        let challenges = Self.served(challenged.stdout)
        #expect(challenges.count == count && challenges.allSatisfy { $0.request == 1 }, "\(challenged.stdout)")
        // Requests with Negotiate credentials: a connection that carried one serves no other request.
        let answered = try curlEachOnItsOwnConnection(
            setup, Array(repeating: "/connection", count: count), extra: ["-H", "Authorization: Negotiate YII="])
        #expect(answered.status == 0, "\(answered.stderr)")
        let bound = Set(Self.served(answered.stdout).map(\.connection))
        #expect(bound.count == count, "\(answered.stdout)")
        let after = try curlEachOnItsOwnConnection(setup, Array(repeating: "/connection", count: count))
        let later = Self.served(after.stdout)
        #expect(later.count == count && later.allSatisfy { !bound.contains($0.connection) }, "\(after.stdout)")
    }
}
