import Foundation
import TestSupport
import Testing

/// Not an open proxy: the destination guard (SSRF), the CONNECT port list, the client ranges and proxy
/// authentication, each with the real binary and curl.
@Suite struct AccessTests {
    struct Proxy {
        let child: ChildProcess
        let port: Int

        func actions(_ count: Int) throws -> [[String: Any]] {
            try child.waitForLines(count: count, timeout: 20) { $0.contains("\"action\"") }.map {
                try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] ?? [:]
            }
        }
    }

    func start(_ extra: [String: String]) throws -> Proxy {
        let (child, port) = try InspectionTests.startProxy(extra)
        return Proxy(child: child, port: port)
    }

    /// curl's view of a CONNECT through the proxy: the proxy's status for the CONNECT.
    func connectStatus(_ proxy: Proxy, _ target: String, _ more: [String] = []) throws -> String {
        let result = try runCommand(Paths.which("curl"), [
            "-s", "-o", "/dev/null", "-w", "%{http_connect}", "--max-time", "10", "-p", "-x", "127.0.0.1:\(proxy.port)",
        ] + more + ["http://\(target)/hello"])
        return result.stdout
    }

    @Test func privateDestinationsAreRefusedAndReportedAsBlocked() throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        // No exception: the default a customer runs with.
        let proxy = try start(["KAIZEN_ALLOW_PRIVATE": ""])
        let targets = [
            "127.0.0.1:\(originPort)", "localhost:\(originPort)", "[::ffff:127.0.0.1]:\(originPort)",
            "169.254.169.254:80", "10.0.0.1:443", "[::1]:\(originPort)", "[64:ff9b::a9fe:a9fe]:80", "0.0.0.0:\(originPort)",
        ]
        for target in targets {
            #expect(try connectStatus(proxy, target) == "403", "\(target)")
        }
        // Plain HTTP as well.
        let plain = try runCommand(Paths.which("curl"), [
            "-s", "-i", "--max-time", "10", "-x", "127.0.0.1:\(proxy.port)", "http://127.0.0.1:\(originPort)/hello",
        ])
        #expect(plain.stdout.hasPrefix("HTTP/1.1 403"), "\(plain.stdout)")
        #expect(plain.stdout.contains("destination not allowed: loopback address 127.0.0.1"))
        #expect(!plain.stdout.contains("hello from origin"))
        // A client that named a host is not told what it resolves to (an agent could map internal names that way);
        // the action and the log are.
        let byName = try runCommand(Paths.which("curl"), [
            "-s", "-i", "--max-time", "10", "-x", "127.0.0.1:\(proxy.port)", "http://localhost:\(originPort)/hello",
        ])
        #expect(byName.stdout.hasPrefix("HTTP/1.1 403"), "\(byName.stdout)")
        #expect(byName.stdout.contains("destination not allowed: localhost resolves to a refused address"), "\(byName.stdout)")
        #expect(!byName.stdout.contains("127.0.0.1") && !byName.stdout.contains("::1"), "\(byName.stdout)")

        let actions = try proxy.actions(targets.count + 2)
        for action in actions {
            let verdict = action["verdict"] as? [String: Any]
            #expect(verdict?["decision"] as? String == "block", "\(action)")
            #expect((verdict?["reason"] as? String)?.hasPrefix("destination not allowed: ") == true)
            let metadata = (action["action"] as? [String: Any])?["metadata"] as? [String: Any]
            #expect(metadata?["status"] as? Int == 403 && metadata?["outcome"] as? String == "failed")
        }
        let reasons = actions.compactMap { ($0["verdict"] as? [String: Any])?["reason"] as? String }
        #expect(reasons.contains("destination not allowed: link-local address 169.254.169.254"))
        #expect(reasons.contains("destination not allowed: loopback address ::ffff:127.0.0.1 (IPv4-mapped 127.0.0.1)"))
        #expect(reasons.contains { $0.contains("NAT64 169.254.169.254") })
        #expect(reasons.last.map { $0.hasPrefix("destination not allowed: loopback address") } == true, "\(reasons)")
        // Whoever runs the proxy is told, once, which setting opens such destinations.
        _ = try proxy.child.waitForStderr(containing: "list them in KAIZEN_ALLOW_PRIVATE", timeout: 10)
        #expect(proxy.child.stderr.components(separatedBy: "KAIZEN_ALLOW_PRIVATE").count == 2, "\(proxy.child.stderr)")
    }

    @Test func exceptionsOpenRangesAndNamesButNeverTheProxyItself() throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        let byName = try start(["KAIZEN_ALLOW_PRIVATE": "localhost"])
        #expect(try connectStatus(byName, "localhost:\(originPort)") == "200")
        #expect(try connectStatus(byName, "127.0.0.1:\(originPort)") == "403")  // the name was allowed, not the range

        let byRange = try start([:])  // 127.0.0.0/8 and ::1
        #expect(try connectStatus(byRange, "127.0.0.1:\(originPort)") == "200")
        #expect(try connectStatus(byRange, "127.0.0.1:\(byRange.port)") == "403")
        #expect(try connectStatus(byRange, "localhost:\(byRange.port)") == "403")
        let actions = try byRange.actions(3)
        #expect((actions[1]["verdict"] as? [String: Any])?["reason"] as? String
            == "destination not allowed: the proxy's own listener 127.0.0.1:\(byRange.port)")
    }

    @Test func deniedDestinationsAreRefusedWhateverTheExceptions() throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        // 127.0.0.0/8 is allowed (the tests' loopback origins); 127.0.0.2 is denied within it.
        let proxy = try start(["KAIZEN_DENY_DESTINATIONS": "127.0.0.2/32"])
        #expect(try connectStatus(proxy, "127.0.0.1:\(originPort)") == "200")
        #expect(try connectStatus(proxy, "127.0.0.2:\(originPort)") == "403")
        let actions = try proxy.actions(2)
        #expect((actions[1]["verdict"] as? [String: Any])?["reason"] as? String
            == "destination not allowed: address 127.0.0.2 in KAIZEN_DENY_DESTINATIONS (127.0.0.2/32)")
        // No exception opens a denied range: the log does not suggest one (its hint is kept for a refusal one would open).
        #expect(try connectStatus(proxy, "10.0.0.1:443") == "403")
        _ = try proxy.child.waitForStderr(containing: "list them in KAIZEN_ALLOW_PRIVATE", timeout: 10)
        #expect(!proxy.child.stderr.contains("KAIZEN_DENY_DESTINATIONS (127.0.0.2/32)); to let"), "\(proxy.child.stderr)")
        let refused = try ChildProcess(Paths.proxyBinary, ["--local", "--port", "0"], environment: ProxyEnvironment.make([
            "KAIZEN_DENY_DESTINATIONS": "corp.example",
        ]))
        #expect(try refused.waitForExit(timeout: 30) == 2)
        #expect(refused.stderr.hasPrefix("kaizen-egress: KAIZEN_DENY_DESTINATIONS has \"corp.example\""), "\(refused.stderr)")
    }

    @Test func connectPortsRestrictTunnels() throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        let proxy = try start(["KAIZEN_CONNECT_PORTS": "443,8443"])
        #expect(try connectStatus(proxy, "127.0.0.1:\(originPort)") == "403")
        let allowed = try start(["KAIZEN_CONNECT_PORTS": "1-65535"])
        #expect(try connectStatus(allowed, "127.0.0.1:\(originPort)") == "200")
        let action = try proxy.actions(1)[0]
        #expect((action["verdict"] as? [String: Any])?["reason"] as? String
            == "destination not allowed: CONNECT to port \(originPort) is not permitted")
    }

    @Test func clientsOutsideTheAllowedRangesAreClosedUnanswered() throws {
        let refusing = try start(["KAIZEN_ALLOW_CLIENTS": "10.0.0.0/8,fd00::/8"])
        let socket = try RawSocket(host: "127.0.0.1", port: refusing.port)
        try? socket.send("GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n\r\n")
        #expect((try? socket.receiveAll()) ?? "" == "")
        _ = try refusing.child.waitForStderr(containing: "refused a client outside KAIZEN_ALLOW_CLIENTS", timeout: 10)

        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        let admitting = try start(["KAIZEN_ALLOW_CLIENTS": "127.0.0.0/8"])
        #expect(try connectStatus(admitting, "127.0.0.1:\(originPort)") == "200")
    }

    /// A response whose body ends with the connection is the last on it: a request pipelined behind it is not
    /// answered, not even with a 407 (the client would read that answer as the end of the body).
    @Test func nothingIsAnsweredBehindABodyThatEndsWithTheConnection() throws {
        let directory = try TestPKI.mint().directory
        let file = directory + "/agents"
        let token = "tok_pipelined_behind_close_0123"
        #expect(FileManager.default.createFile(
            atPath: file, contents: Data("planner:\(token)\n".utf8), attributes: [.posixPermissions: 0o600]))
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        let proxy = try start(["KAIZEN_PROXY_AUTH": file])
        let basic = Data("planner:\(token)".utf8).base64EncodedString()
        let socket = try RawSocket(host: "127.0.0.1", port: proxy.port)
        try socket.send(
            "GET http://127.0.0.1:\(originPort)/unframed HTTP/1.1\r\nHost: x\r\nProxy-Authorization: Basic \(basic)\r\n\r\n"
                + "GET http://127.0.0.1:\(originPort)/hello HTTP/1.1\r\nHost: x\r\n\r\n")
        let answer = try socket.receiveAll()
        #expect(answer.hasPrefix("HTTP/1.1 200 OK\r\n") && answer.hasSuffix("\r\n\r\nuntil close\n"), "\(answer)")
    }

    @Test func proxyAuthenticationNamesTheAgent() throws {
        let directory = try TestPKI.mint().directory
        let file = directory + "/agents"
        let token = "tok_CANARY_proxy_auth_5150"
        #expect(FileManager.default.createFile(
            atPath: file, contents: Data("planner:\(token)\nresearcher:another-token-0123456789\n".utf8),
            attributes: [.posixPermissions: 0o600]))
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        let proxy = try start(["KAIZEN_PROXY_AUTH": file])
        let curl = Paths.which("curl")
        let url = "http://127.0.0.1:\(originPort)/hello"

        let anonymous = try runCommand(curl, ["-s", "-i", "--max-time", "10", "-x", "127.0.0.1:\(proxy.port)", url])
        #expect(anonymous.stdout.hasPrefix("HTTP/1.1 407"), "\(anonymous.stdout)")
        #expect(anonymous.stdout.contains("Proxy-Authenticate: Basic realm=\"kaizen-egress\""))
        let wrong = try runCommand(curl, ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                                          "-x", "127.0.0.1:\(proxy.port)", "-U", "planner:another-token-0123456789", url])
        #expect(wrong.stdout == "407")
        #expect(try connectStatus(proxy, "127.0.0.1:\(originPort)") == "407")
        // A token sent as the user name (an unknown agent) and a scheme other than Basic: 407, and never logged.
        let asUser = "tok_CANARY_sent_as_user_0042"
        for more in [["-U", "\(asUser):"], ["--proxy-header", "Proxy-Authorization: Bearer \(asUser)"]] {
            let refused = try runCommand(curl, ["-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                                                "-x", "127.0.0.1:\(proxy.port)"] + more + [url])
            #expect(refused.stdout == "407")
        }
        // Two Proxy-Authorization headers, even both valid, are ambiguous: 400, and the connection closes.
        let twice = try RawSocket(host: "127.0.0.1", port: proxy.port)
        let valid = "Proxy-Authorization: Basic " + Data("planner:\(token)".utf8).base64EncodedString() + "\r\n"
        try twice.send("GET \(url) HTTP/1.1\r\nHost: x\r\n\(valid)\(valid)\r\n")
        let twiceAnswer = try twice.receiveAll()
        #expect(twiceAnswer.hasPrefix("HTTP/1.1 400") && twiceAnswer.contains("two Proxy-Authorization headers"), "\(twiceAnswer)")
        _ = try proxy.child.waitForStderr(containing: "proxy authentication failed", count: 3, timeout: 10)
        let failures = proxy.child.stderr.components(separatedBy: "\n").filter { $0.contains("proxy authentication failed") }
        #expect(failures.count == 3, "\(failures)")
        #expect(failures.contains { $0.contains("reason=wrong_token") && $0.contains("agent=planner") })
        #expect(failures.contains { $0.contains("reason=unknown_agent") })
        #expect(!proxy.child.stderr.contains(asUser))
        let metrics = try AdminTests().get(try proxy.child.adminPort(), "/metrics").body
        for (reason, count) in [("missing", 2.0), ("invalid", 2), ("malformed", 1), ("duplicate", 1)] {
            #expect(AdminTests.value(metrics, "kaizen_egress_proxy_auth_failures_total{reason=\"\(reason)\"}") == count, "\(reason)")
        }

        let plain = try runCommand(curl, ["-sS", "--max-time", "10", "-x", "127.0.0.1:\(proxy.port)", "-U", "planner:\(token)", url])
        #expect(plain.stdout == "hello from origin")
        #expect(try connectStatus(proxy, "127.0.0.1:\(originPort)", ["-U", "researcher:another-token-0123456789"]) == "200")
        let actions = try proxy.actions(2)
        #expect(actions.map { $0["agent"] as? String } == ["planner", "researcher"])

        proxy.child.signal(SIGTERM)
        #expect(try proxy.child.waitForExit(timeout: 30) == 0)
        let basic = Data("planner:\(token)".utf8).base64EncodedString()
        for text in [proxy.child.stderr, proxy.child.stdoutLines.joined(separator: "\n")] {
            #expect(!text.contains(token) && !text.contains(basic))
        }
        // A credentials file others can read refuses to start, naming the variable.
        try FileManager.default.setAttributes([.posixPermissions: 0o644], ofItemAtPath: file)
        let refused = try ChildProcess(Paths.proxyBinary, ["--local"], environment: ProxyEnvironment.make(["KAIZEN_PROXY_AUTH": file]))
        #expect(try refused.waitForExit(timeout: 30) == 2)
        #expect(refused.stderr.hasPrefix("kaizen-egress: KAIZEN_PROXY_AUTH: ") && refused.stderr.contains("chmod 600"))
        #expect(!refused.stderr.contains(token))
    }

    /// The machine's own addresses are refused like loopback, also one outside every refused range (a server's
    /// public IPv4, a global IPv6 address): through it a client would reach the machine's own services. In a
    /// network namespace of the test's, whose loopback gets such an address. An address the machine gains after
    /// the proxy started is refused too: the connection's two ends have the same address.
    @Test(.enabled(if: NetworkLab.available, "needs root, ip, iptables and setpriv (CI runs as root)"))
    func theMachinesOwnAddressesAreRefused() throws {
        let lab = try NetworkLab()
        let ip = Paths.which("ip")
        func addAddress(_ address: String) throws {
            let added = try runCommand(ip, ["-n", lab.agent, "addr", "add", "\(address)/32", "dev", "lo"], timeout: 20)
            guard added.status == 0 else { throw TestFailure("ip addr add \(address): \(added.stderr)") }
        }
        // 192.88.99.0/24 (the retired 6to4 relay range) is in none of the refused ranges.
        try addAddress("192.88.99.1")
        // A service of the machine's, listening on every address.
        let service = try ChildProcess(ip, lab.inNamespace(lab.agent, Paths.which("python3"), [
            Paths.originScript, "--mode", "http", "--host", "0.0.0.0",
        ]))
        let servicePort = try #require(Int(try service.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }.dropFirst(5)))
        let proxy = try ChildProcess(
            ip, lab.inNamespace(lab.agent, Paths.proxyBinary, ["--local", "--port", "0"]),
            environment: ProxyEnvironment.make())
        let proxyPort = try proxy.listeningPort()
        func through(_ arguments: [String]) throws -> CommandResult {
            try runCommand(ip, lab.inNamespace(lab.agent, Paths.which("curl"), [
                "-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(proxyPort)", "-w", " %{http_code} %{http_connect}",
            ] + arguments), timeout: 30)
        }

        let plain = try through(["http://192.88.99.1:\(servicePort)/hello"])
        #expect(plain.stdout.contains("this machine's own address 192.88.99.1") && plain.stdout.hasSuffix(" 403 000"), "\(plain.stdout)")
        let tunnel = try through(["-p", "http://192.88.99.1:\(servicePort)/hello"])
        #expect(tunnel.stdout.hasSuffix(" 000 403"), "\(tunnel.stdout) \(tunnel.stderr)")
        let mapped = try through(["-p", "http://[::ffff:192.88.99.1]:\(servicePort)/hello"])
        #expect(mapped.stdout.hasSuffix(" 000 403"), "\(mapped.stdout) \(mapped.stderr)")

        // Gained now: the guard reads the machine's addresses again only every 10 s, so this one is caught on the
        // connection itself.
        try addAddress("192.88.99.2")
        let later = try through(["http://192.88.99.2:\(servicePort)/hello"])
        #expect(later.stdout.contains("this machine's own address 192.88.99.2") && later.stdout.hasSuffix(" 403 000"), "\(later.stdout)")
        let actions = try proxy.waitForLines(count: 4, timeout: 20) { $0.contains("\"action\"") }
        #expect(actions.allSatisfy { $0.contains("\"decision\":\"block\"") }, "\(actions)")
        #expect(!actions.joined().contains("hello from origin"))
    }
}
