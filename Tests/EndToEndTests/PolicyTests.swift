import Foundation
import TestSupport
import Testing

/// The control plane's policies applied by the proxy binary, against the mock control plane serving them:
/// enforce and observe, CONNECT, plain HTTP and requests inside inspection, ETag 304s, a policy that changes,
/// a malformed policy, an outage before any policy was loaded (KAIZEN_POLICY_FAIL), and a restart with the
/// control plane down (the cached policy).
@Suite struct PolicyTests {
    static let agent = "egress-agent"

    struct Setup {
        var pki: TestPKI
        var policies: String
        var modeFile: String
        var mock: ChildProcess
        var mockPort: Int
        var plain: ChildProcess
        var plainPort: Int
        var https: ChildProcess
        var httpsPort: Int

        func writePolicy(_ json: String) throws {
            try json.write(toFile: policies + "/\(PolicyTests.agent).json", atomically: true, encoding: .utf8)
        }

        func environment(_ extra: [String: String]) -> [String: String] {
            ProxyEnvironment.make(
                [
                    "KAIZEN_API_KEY": ControlPlaneConnectionTests.key, "KAIZEN_API_URL": "https://localhost:\(mockPort)",
                    "KAIZEN_API_CA_FILE": pki.caCertificate, "KAIZEN_LOCAL": "1",
                    "KAIZEN_SPOOL_DIR": pki.directory + "/spool", "KAIZEN_STATE_DIR": pki.directory + "/state",
                    "KAIZEN_POLICY_REFRESH": "1s", "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
                ].merging(extra) { $1 })
        }
    }

    func setUp() throws -> Setup {
        let pki = try TestPKI.mint()
        let policies = pki.directory + "/policies"
        try FileManager.default.createDirectory(atPath: policies, withIntermediateDirectories: false)
        let modeFile = pki.directory + "/mode"
        try "ok".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, mockPort) = try ControlPlaneConnectionTests().startMock(pki, modeFile: modeFile, policyDirectory: policies)
        let (plain, plainPort) = try ChildProcess.origin(mode: "http")
        let (https, httpsPort) = try ChildProcess.origin(mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        return Setup(
            pki: pki, policies: policies, modeFile: modeFile, mock: mock, mockPort: mockPort, plain: plain,
            plainPort: plainPort, https: https, httpsPort: httpsPort)
    }

    func startProxy(_ setup: Setup, _ extra: [String: String]) throws -> (ChildProcess, Int) {
        let proxy = try ChildProcess(Paths.proxyBinary, ["--port", "0"], environment: setup.environment(extra))
        return (proxy, try proxy.listeningPort())
    }

    /// curl through the proxy: the status line and body (`-i`), or curl's error.
    func curl(_ proxyPort: Int, _ arguments: [String]) throws -> String {
        let result = try runCommand(
            Paths.which("curl"), ["-sS", "-i", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)"] + arguments)
        return result.stdout + result.stderr
    }

    /// The actions the proxy wrote to standard output (local mode), parsed.
    func actions(_ proxy: ChildProcess) -> [[String: Any]] {
        proxy.stdoutLines.compactMap { line in
            guard line.contains("\"action\"") else { return nil }
            return (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
        }
    }

    func waitForAction(_ proxy: ChildProcess, _ predicate: @escaping ([String: Any]) -> Bool) throws -> [String: Any] {
        let line = try proxy.waitForLine(timeout: 20) { line in
            guard line.contains("\"action\""),
                let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any]
            else { return false }
            return predicate(object)
        }
        return try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
    }

    static func metadata(_ action: [String: Any]) -> [String: Any] {
        (action["action"] as? [String: Any])?["metadata"] as? [String: Any] ?? [:]
    }

    static func verdict(_ action: [String: Any]) -> (String, String) {
        let verdict = action["verdict"] as? [String: Any] ?? [:]
        return (verdict["decision"] as? String ?? "", verdict["reason"] as? String ?? "")
    }

    static func target(_ action: [String: Any]) -> String {
        (action["action"] as? [String: Any])?["target"] as? String ?? ""
    }

    @Test func enforceModeRefusesWhatThePolicyBlocksAndFollowsItsChanges() throws {
        let setup = try setUp()
        defer { withExtendedLifetime(setup) {} }
        try setup.writePolicy(
            #"""
            {"policies":[
              {"name":"no-localhost","mode":"blocklist","enabled":true,"rules":{"domains":["localhost","blocked.test"],"tools":["x"]}},
              {"name":"loopback-v4","mode":"allowlist","enabled":true,"rules":{"ips":["127.0.0.0/8"]}},
              {"name":"off","mode":"blocklist","enabled":false,"rules":{"ips":["127.0.0.1"]}}
            ]}
            """#)
        let ca = try InspectionTests.makeCA(in: setup.pki.directory)
        let (proxy, port) = try startProxy(
            setup, ["KAIZEN_MODE": "enforce", "KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": ca + "/ca.key"])
        _ = try setup.mock.waitForLine(timeout: 20) { $0 == "POLICY \(Self.agent) 200" }

        // Allowed: plain HTTP to an address the allowlist names.
        let allowed = try curl(port, ["http://127.0.0.1:\(setup.plainPort)/hello"])
        #expect(allowed.contains("hello from origin"), "\(allowed)")
        let allowedAction = try waitForAction(proxy) { Self.target($0) == "127.0.0.1:\(setup.plainPort)" }
        #expect(Self.verdict(allowedAction) == ("allow", "allowed by policy"))
        #expect(Self.metadata(allowedAction)["would_block"] == nil, "enforce mode says it in the verdict")

        // Blocked by name: plain HTTP and CONNECT get 403 before anything is dialled.
        let plainBlocked = try curl(port, ["http://localhost:\(setup.plainPort)/hello"])
        #expect(plainBlocked.contains("403") && plainBlocked.contains("destination blocked by policy no-localhost"), "\(plainBlocked)")
        let connectBlocked = try curl(port, ["--cacert", ca + "/ca.pem", "https://localhost:\(setup.httpsPort)/hello"])
        #expect(connectBlocked.contains("403"), "\(connectBlocked)")
        // Blocked by the allowlist: an IPv6 literal outside its ranges.
        let v6Blocked = try curl(port, ["http://[::1]:\(setup.plainPort)/hello"])
        #expect(v6Blocked.contains("403") && v6Blocked.contains("loopback-v4"), "\(v6Blocked)")
        for (target, policy) in [
            ("localhost:\(setup.plainPort)", "no-localhost"), ("localhost:\(setup.httpsPort)", "no-localhost"),
            ("[::1]:\(setup.plainPort)", "loopback-v4"),
        ] {
            let action = try waitForAction(proxy) { Self.target($0) == target }
            #expect(Self.verdict(action) == ("block", policy), "\(action)")
            #expect(Self.metadata(action)["policy"] as? String == policy)
            #expect(Self.metadata(action)["status"] as? Int == 403)
        }

        // Inside inspection: the CONNECT is allowed, the request's Host is blocked.
        let inner = try curl(
            port, ["--cacert", ca + "/ca.pem", "-H", "Host: blocked.test", "https://127.0.0.1:\(setup.httpsPort)/secret"])
        #expect(inner.contains("403") && inner.contains("blocked by policy no-localhost"), "\(inner)")
        let innerAction = try waitForAction(proxy) { Self.metadata($0)["path"] as? String == "/secret" }
        #expect(Self.verdict(innerAction) == ("block", "no-localhost"))
        #expect(proxy.stderrEventually("mode=inspected decision=allow outcome=connected requests=1 blocked_requests=1"), "\(proxy.stderr)")
        #expect(Self.metadata(innerAction)["method"] as? String == "GET")
        #expect(Self.metadata(innerAction)["intercepted"] as? Bool == true)
        #expect(Self.metadata(innerAction)["request_host"] as? String == "blocked.test", "\(innerAction)")
        // curl sends no SNI to an address: a null sni comes with why, as for a tunnel passed through.
        #expect((Self.metadata(innerAction)["sni"] ?? NSNull()) is NSNull && Self.metadata(innerAction)["sni_error"] as? String == "client sent no server name", "\(innerAction)")

        // Inside inspection, every name a request gives must pass: an absolute-form URI's authority, the SNI
        // (refused before the ClientHello goes anywhere); two Host headers are refused outright.
        func raw(_ sni: String, _ request: String) throws -> String {
            let script = Paths.endToEndDirectory.appendingPathComponent("raw_mitm_request.py").path
            return try runCommand(
                Paths.which("python3"), [script, "\(port)", "\(setup.httpsPort)", ca + "/ca.pem", sni, request]
            ).stdout
        }
        #expect(try raw("-", #"GET https://blocked.test/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"#).hasPrefix("HTTP/1.1 403"))
        #expect(try raw("-", #"GET /x HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: blocked.test\r\n\r\n"#).hasPrefix("HTTP/1.1 400"))
        #expect(try raw("blocked.test", #"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"#).hasPrefix("CLOSED"))
        #expect(try raw("-", #"GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"#).hasPrefix("HTTP/1.1 200"))
        let sniAction = try waitForAction(proxy) { Self.metadata($0)["sni"] as? String == "blocked.test" }
        #expect(Self.verdict(sniAction) == ("block", "no-localhost"), "\(sniAction)")
        // Refused before anything reached the destination: not a connection that was made.
        #expect(Self.metadata(sniAction)["outcome"] as? String == "failed", "\(sniAction)")

        // Nothing changed: the refreshes are answered 304.
        _ = try setup.mock.waitForLine(timeout: 20) { $0 == "POLICY \(Self.agent) 304" }
        #expect(proxy.stderrEventually("rule kinds tools do not name destinations"), "the ignored rule kind is logged")
        #expect(proxy.stderr.components(separatedBy: "rule kinds tools").count == 2, "once")

        // The policy changes: the next refresh applies it.
        try setup.writePolicy(#"{"policies":[{"name":"no-v4","mode":"blocklist","rules":{"ips":["127.0.0.1/32"]}}]}"#)
        _ = try setup.mock.waitForLines(count: 2, timeout: 20) { $0 == "POLICY \(Self.agent) 200" }
        _ = try proxy.waitForStderr(containing: "updated: no-v4 (blocklist)", timeout: 20)
        let nowBlocked = try curl(port, ["http://127.0.0.1:\(setup.plainPort)/hello"])
        #expect(nowBlocked.contains("403") && nowBlocked.contains("no-v4"), "\(nowBlocked)")
        // A name the rules do not list, blocked by the address it reached (checked once connected, before the
        // request is sent; the origin listens on 127.0.0.1 only, so that is the address).
        let byAddress = try curl(port, ["http://localhost:\(setup.plainPort)/by-address"])
        #expect(byAddress.contains("403") && byAddress.contains("no-v4"), "\(byAddress)")

        // A malformed policy: the last good one stays, and one error line says so however often it is fetched.
        try setup.writePolicy(#"{"policies":[{"name":"broken""#)
        _ = try setup.mock.waitForLines(count: 5, timeout: 30) { $0 == "POLICY \(Self.agent) 200" }
        let stillBlocked = try curl(port, ["http://127.0.0.1:\(setup.plainPort)/hello"])
        #expect(stillBlocked.contains("403") && stillBlocked.contains("no-v4"), "\(stillBlocked)")
        let errors = proxy.stderr.split(separator: "\n").filter { $0.contains("a policy the proxy cannot use") }
        #expect(errors.count == 1, "\(errors)")
        #expect(errors.first?.contains("the policy is not JSON") == true)

        // The same story in the metrics.
        let metrics = try AdminTests().get(try proxy.adminPort(), "/metrics").body
        func value(_ series: String) -> Double { AdminTests.value(metrics, series) ?? -1 }
        #expect(value(#"kaizen_egress_policy_decisions_total{decision="block"}"#) >= 6, "\(metrics)")
        #expect(value(#"kaizen_egress_policy_decisions_total{decision="allow"}"#) >= 1)
        #expect(value(#"kaizen_egress_policy_decisions_total{decision="would_block"}"#) == 0)
        #expect(value(#"kaizen_egress_policy_fetches_total{outcome="updated"}"#) == 2)
        #expect(value(#"kaizen_egress_policy_fetches_total{outcome="not_modified"}"#) >= 1)
        #expect(value(#"kaizen_egress_policy_fetches_total{outcome="invalid"}"#) >= 3)
        #expect(value(#"kaizen_egress_inspected_requests_total{outcome="blocked"}"#) == 2)
        #expect(value(#"kaizen_egress_leaf_cache_total{result="miss"}"#) >= 1)
        #expect(value(#"kaizen_egress_connections_total{transport="connect",outcome="blocked"}"#) == 2, "the CONNECT and the SNI")

        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    /// `odd_hello.py MODE`: a handshake the proxy cannot read, sent through a CONNECT to the TLS origin.
    func oddHello(_ port: Int, _ setup: Setup, _ mode: String) throws -> [String] {
        let script = Paths.endToEndDirectory.appendingPathComponent("odd_hello.py").path
        let result = try runCommand(Paths.which("python3"), [script, "\(port)", "\(setup.httpsPort)", "blocked.test", mode])
        return result.stdout.split(separator: "\n").map(String.init)
    }

    /// A ClientHello the proxy cannot read (an empty handshake record first, which OpenSSL servers skip; one past the
    /// size limit) may still name a blocked host to a server that reads it: when the agent's policies judge names, the
    /// tunnel is refused before a byte reaches the server. Policies without a name rule do not care.
    @Test func aServerNameThatCannotBeReadIsNotWaivedThrough() throws {
        let setup = try setUp()
        defer { withExtendedLifetime(setup) {} }
        try setup.writePolicy(#"{"policies":[{"name":"no-blocked","mode":"blocklist","rules":{"domains":["blocked.test"]}}]}"#)
        let (proxy, port) = try startProxy(setup, ["KAIZEN_MODE": "enforce"])
        _ = try setup.mock.waitForLine(timeout: 20) { $0 == "POLICY \(Self.agent) 200" }
        for mode in ["empty-record", "too-large"] {
            let lines = try oddHello(port, setup, mode)
            // Closed unanswered (reset, when the proxy closes while the client is still sending).
            #expect(lines.first == "HTTP/1.1 200 Connection established" && lines.last?.hasPrefix("CLOSED") == true, "\(mode): \(lines)")
        }
        let refused = try proxy.waitForLines(count: 2, timeout: 20) { $0.contains("\"action\"") }.map {
            try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] ?? [:]
        }
        for (action, why) in zip(refused, ["malformed ClientHello: empty handshake record", "ClientHello larger than"]) {
            #expect(Self.verdict(action) == ("block", "server name not judged: the ClientHello could not be read"), "\(action)")
            #expect((Self.metadata(action)["sni_error"] as? String)?.hasPrefix(why) == true, "\(action)")
            #expect(Self.metadata(action)["outcome"] as? String == "failed", "\(action)")
        }
        let metrics = try AdminTests().get(try proxy.adminPort(), "/metrics").body
        #expect(AdminTests.value(metrics, #"kaizen_egress_sni_parse_total{outcome="none"}"#) == 2, "\(metrics)")
        #expect(AdminTests.value(metrics, #"kaizen_egress_sni_parse_total{outcome="no_sni"}"#) == 0)

        // Plain HTTP inside a tunnel naming a blocked host is judged as an SNI would be: in its Host, its absolute-form
        // target or a second Host, with lines ended by a bare LF too, in a head sent in pieces (`|`: the client pauses
        // there), in the forms lenient servers read (doubled whitespace, a leading empty line, `Host :`); a Host that
        // is no host name is not judged but refused.
        for (request, answered) in [
            ("GET /hello HTTP/1.1\r\nHost: blocked.test\r\n", false),
            ("GET /hello HTTP/1.1\r\n|Host: blocked.test\r\n", false),
            ("G|ET /hello HTTP/1.1\r\nUser-Agent: x\r\n|Host: blocked.test\r\n", false),
            ("GET  /hello HTTP/1.1\r\nHost: blocked.test\r\n", false),
            ("\r\nGET /hello HTTP/1.1\r\nHost: blocked.test\r\n", false),
            ("GET /hello HTTP/1.1\r\nHost : blocked.test\r\n", false),
            ("GET /hello HTTP/1.1\r\n|Host: 127.0.0.1\r\n", true),
            ("GET http://blocked.test/hello HTTP/1.1\r\nHost: 127.0.0.1\r\n", false),
            ("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\nHost: blocked.test\r\n", false),
            ("GET /hello HTTP/1.1\nHost: blocked.test\n", false),
            ("GET /hello HTTP/1.1\r\nHost: blocked%2etest\r\n", false),
            ("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n", true),
        ] {
            let socket = try RawSocket(host: "127.0.0.1", port: port, timeout: 10)
            try socket.send("CONNECT 127.0.0.1:\(setup.plainPort) HTTP/1.1\r\nHost: x\r\n\r\n")
            _ = try socket.receive(until: "\r\n\r\n")
            let end = request.hasSuffix("\r\n") ? "\r\n" : "\n"
            let pieces = (request + "Connection: close" + end + end).split(separator: "|")
            for (index, piece) in pieces.enumerated() {
                if index > 0 { Thread.sleep(forTimeInterval: 0.2) }  // the client's pause: what is under test
                try socket.send(String(piece))
            }
            let reply = String(decoding: socket.receiveUntilEnd().bytes, as: UTF8.self)
            #expect(reply.hasPrefix("HTTP/1.1 200") == answered, "\(request.debugDescription): \(reply)")
        }
        // A later request on the same tunnel is judged too, before its head goes on whole: kept alive after an answer,
        // or pipelined behind an allowed request (which is answered); the tunnel then closes.
        for pipelined in [false, true] {
            let socket = try RawSocket(host: "127.0.0.1", port: port, timeout: 10)
            try socket.send("CONNECT 127.0.0.1:\(setup.plainPort) HTTP/1.1\r\nHost: x\r\n\r\n")
            _ = try socket.receive(until: "\r\n\r\n")
            let allowed = "GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
            let blocked = "GET /hello?later HTTP/1.1\r\nHost: blocked.test\r\nConnection: close\r\n\r\n"
            if pipelined {
                try socket.send(allowed + blocked)
            } else {
                try socket.send(allowed)
                _ = try socket.receive(until: "hello from origin")
                try socket.send(blocked)
            }
            let rest = String(decoding: socket.receiveUntilEnd().bytes, as: UTF8.self)
            #expect(rest.components(separatedBy: "HTTP/1.1 200").count - 1 == (pipelined ? 1 : 0), "pipelined \(pipelined): \(rest)")
        }
        func isLater(_ action: [String: Any]) -> Bool {
            Self.metadata(action)["connection_id"] != nil && Self.metadata(action)["request_host"] as? String == "blocked.test"
        }
        try proxy.waitUntil(timeout: 20) { lines in
            lines.filter { $0.contains("\"connection_id\"") && $0.contains("\"request_host\":\"blocked.test\"") }.count >= 2
        }
        #expect(actions(proxy).filter(isLater).count >= 2, "the refused later requests, as actions")
        for later in actions(proxy).filter(isLater) {
            #expect(Self.verdict(later) == ("block", "no-blocked") && Self.metadata(later)["outcome"] as? String == "failed", "\(later)")
        }

        let unjudged = try waitForAction(proxy) { Self.metadata($0)["policy"] as? String == "host not judged: the request names no valid host" }
        #expect(Self.verdict(unjudged).0 == "block", "\(unjudged)")
        let fronted = try waitForAction(proxy) { Self.metadata($0)["request_host"] as? String == "blocked.test" }
        #expect(Self.verdict(fronted) == ("block", "no-blocked"), "\(fronted)")

        // Only addresses judged: the name does not matter, and the same handshake goes through.
        try setup.writePolicy(#"{"policies":[{"name":"no-v6","mode":"blocklist","rules":{"ips":["::1"]}}]}"#)
        _ = try proxy.waitForStderr(containing: "updated: no-v6 (blocklist)", timeout: 20)
        let through = try oddHello(port, setup, "empty-record")
        #expect(through.first == "HTTP/1.1 200 Connection established" && through.last?.hasPrefix("ANSWERED") == true, "\(through)")
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    @Test func observeModeReportsWhatWouldBeBlockedAndLetsItThrough() throws {
        let setup = try setUp()
        defer { withExtendedLifetime(setup) {} }
        try setup.writePolicy(#"{"policies":[{"name":"no-blocked","mode":"blocklist","rules":{"domains":["blocked.test","localhost"]}}]}"#)
        let ca = try InspectionTests.makeCA(in: setup.pki.directory)
        let (proxy, port) = try startProxy(setup, ["KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": ca + "/ca.key"])
        _ = try setup.mock.waitForLine(timeout: 20) { $0 == "POLICY \(Self.agent) 200" }

        let plain = try curl(port, ["http://localhost:\(setup.plainPort)/hello"])
        #expect(plain.contains("hello from origin"), "\(plain)")
        let inner = try curl(
            port, ["--cacert", ca + "/ca.pem", "-H", "Host: blocked.test", "https://127.0.0.1:\(setup.httpsPort)/hello"])
        #expect(inner.contains("hello from origin"), "\(inner)")
        let fine = try curl(port, ["http://127.0.0.1:\(setup.plainPort)/hello"])
        #expect(fine.contains("hello from origin"), "\(fine)")
        let unread = try oddHello(port, setup, "empty-record")
        #expect(unread.last?.hasPrefix("ANSWERED") == true, "\(unread)")
        let unreadAction = try waitForAction(proxy) { (Self.metadata($0)["sni_error"] as? String)?.contains("empty handshake") == true }
        #expect(Self.verdict(unreadAction) == ("allow", "observed"))
        #expect(Self.metadata(unreadAction)["would_block"] as? Bool == true)
        #expect(Self.metadata(unreadAction)["policy"] as? String == "server name not judged: the ClientHello could not be read")

        let plainAction = try waitForAction(proxy) { Self.target($0) == "localhost:\(setup.plainPort)" }
        #expect(Self.verdict(plainAction) == ("allow", "observed"))
        #expect(Self.metadata(plainAction)["would_block"] as? Bool == true)
        #expect(Self.metadata(plainAction)["policy"] as? String == "no-blocked")
        let innerAction = try waitForAction(proxy) { Self.metadata($0)["intercepted"] as? Bool == true }
        #expect(Self.verdict(innerAction) == ("allow", "observed"))
        #expect(Self.metadata(innerAction)["would_block"] as? Bool == true)
        let fineAction = try waitForAction(proxy) { Self.target($0) == "127.0.0.1:\(setup.plainPort)" }
        #expect(Self.metadata(fineAction)["would_block"] as? Bool == false)
        #expect(Self.metadata(fineAction)["policy"] == nil)
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    /// With several agents (KAIZEN_PROXY_AUTH) and fail-closed, one agent whose policy never loaded makes the proxy
    /// unready, and the reason says how many of them, not who (the admin port does not tell who the agents are).
    @Test func readinessCountsTheAgentsWithoutAPolicy() throws {
        let setup = try setUp()
        defer { withExtendedLifetime(setup) {} }
        try setup.writePolicy(#"{"policies":[{"name":"no-localhost","mode":"blocklist","rules":{"domains":["localhost"]}}]}"#)
        let file = setup.pki.directory + "/agents"
        #expect(FileManager.default.createFile(
            atPath: file, contents: Data("\(Self.agent):tok_readiness_0123456789\nnopolicy-agent:tok_readiness_9876543210\n".utf8),
            attributes: [.posixPermissions: 0o600]))
        let (proxy, _) = try startProxy(setup, ["KAIZEN_MODE": "enforce", "KAIZEN_POLICY_FAIL": "closed", "KAIZEN_PROXY_AUTH": file])
        _ = try setup.mock.waitForLine(timeout: 20) { $0 == "POLICY nopolicy-agent 404" }
        _ = try setup.mock.waitForLine(timeout: 20) { $0 == "POLICY \(Self.agent) 200" }
        let ready = try AdminTests().get(try proxy.adminPort(), "/readyz")
        #expect(ready.status == 503, "\(ready)")
        #expect(ready.body.contains("no policy loaded yet for 1 of 2 agents"), "\(ready.body)")
        #expect(!ready.body.contains("nopolicy-agent"), "\(ready.body)")
    }

    @Test func withoutAnyPolicyFailClosedBlocksAndARestartUsesTheCachedPolicy() throws {
        let setup = try setUp()
        defer { withExtendedLifetime(setup) {} }
        try setup.writePolicy(#"{"policies":[{"name":"no-localhost","mode":"blocklist","rules":{"domains":["localhost"]}}]}"#)
        try "unavailable 1".write(toFile: setup.modeFile, atomically: true, encoding: .utf8)
        let settings = ["KAIZEN_MODE": "enforce", "KAIZEN_POLICY_FAIL": "closed"]

        // The control plane is down and no policy was ever loaded: closed blocks everything.
        let (first, firstPort) = try startProxy(setup, settings)
        _ = try setup.mock.waitForLine(timeout: 20) { $0 == "POLICY \(Self.agent) 503" }
        let refused = try curl(firstPort, ["http://127.0.0.1:\(setup.plainPort)/hello"])
        #expect(refused.contains("403") && refused.contains("destination blocked: no policy loaded"), "\(refused)")
        #expect(first.stderrEventually("none was ever loaded: KAIZEN_POLICY_FAIL decides"), "\(first.stderr)")

        // It comes back: the policy applies.
        try "ok".write(toFile: setup.modeFile, atomically: true, encoding: .utf8)
        _ = try setup.mock.waitForLine(timeout: 20) { $0 == "POLICY \(Self.agent) 200" }
        _ = try first.waitForStderr(containing: "fetched from the control plane again", timeout: 20)
        let allowed = try curl(firstPort, ["http://127.0.0.1:\(setup.plainPort)/hello"])
        #expect(allowed.contains("hello from origin"), "\(allowed)")
        first.signal(SIGTERM)
        #expect(try first.waitForExit(timeout: 30) == 0)

        // A restart while the control plane is down again: the policy kept on disk applies at once.
        try "unavailable 1".write(toFile: setup.modeFile, atomically: true, encoding: .utf8)
        let (second, secondPort) = try startProxy(setup, settings)
        #expect(second.stderrEventually("loaded from the cache"), "\(second.stderr)")
        let blocked = try curl(secondPort, ["http://localhost:\(setup.plainPort)/hello"])
        #expect(blocked.contains("403") && blocked.contains("no-localhost"), "\(blocked)")
        let stillAllowed = try curl(secondPort, ["http://127.0.0.1:\(setup.plainPort)/hello"])
        #expect(stillAllowed.contains("hello from origin"), "\(stillAllowed)")
        // Back again: the cached policy is fetched whole (200), never merely confirmed by its ETag (304).
        func answered(_ line: String) -> Bool { line.hasPrefix("POLICY") && !line.hasSuffix(" 503") }
        let before = setup.mock.stdoutLines.filter(answered).count
        try "ok".write(toFile: setup.modeFile, atomically: true, encoding: .utf8)
        let answers = try setup.mock.waitForLines(count: before + 1, timeout: 20, where: answered)
        #expect(answers[before] == "POLICY \(Self.agent) 200", "\(answers)")
        second.signal(SIGTERM)
        #expect(try second.waitForExit(timeout: 30) == 0)
    }

    @Test func enforceWithoutAnAPIKeyRefusesToStart() throws {
        let proxy = try ChildProcess(
            Paths.proxyBinary, ["--local", "--port", "0"], environment: ProxyEnvironment.make(["KAIZEN_MODE": "enforce"]))
        #expect(try proxy.waitForExit(timeout: 30) == 2)
        #expect(proxy.stderrEventually("KAIZEN_MODE=enforce needs the control plane's policies: set KAIZEN_API_KEY"), "\(proxy.stderr)")
    }
}
