import Foundation
import TestSupport
import Testing

/// The admin listener of the proxy binary: health, readiness and the Prometheus exposition after real traffic,
/// with curl as the client (as a kubelet or Prometheus would be).
@Suite struct AdminTests {
    func get(_ port: Int, _ path: String, method: String = "GET") throws -> (status: Int, body: String) {
        let result = try runCommand(
            Paths.which("curl"),
            ["-sS", "--max-time", "10", "-X", method, "-o", "-", "-w", "\n%{http_code}", "http://127.0.0.1:\(port)\(path)"])
        let lines = result.stdout.split(separator: "\n", omittingEmptySubsequences: false)
        return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n").trimmingCharacters(in: .whitespacesAndNewlines))
    }

    /// `name{labels} value` from the exposition; nil when the series is absent.
    static func value(_ exposition: String, _ series: String) -> Double? {
        for line in exposition.split(separator: "\n") where line.hasPrefix(series + " ") {
            return Double(line.dropFirst(series.count + 1))
        }
        return nil
    }

    @Test func healthReadinessAndMetricsAfterTraffic() throws {
        let pki = try TestPKI.mint()
        let (origin, originPort) = try ChildProcess.origin(mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        let (plain, plainPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime((origin, plain)) {} }
        let proxy = try ChildProcess(
            Paths.proxyBinary, ["--local", "--port", "0"],
            environment: ProxyEnvironment.make(["KAIZEN_STATE_DIR": pki.directory + "/state"]))
        let port = try proxy.listeningPort()
        let admin = try proxy.adminPort()

        let health = try get(admin, "/healthz")
        #expect(health.status == 200 && health.body == "ok", "\(health)")
        let ready = try get(admin, "/readyz")
        #expect(ready.status == 200 && ready.body == "ready", "\(ready)")
        #expect(try get(admin, "/nothing").status == 404)
        // A health check that sends its request and then its FIN (`nc -N`, socat) is answered before the close.
        do {
            let socket = try RawSocket(host: "127.0.0.1", port: admin, timeout: 10)
            try socket.send("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            socket.shutdownWrite()
            let (bytes, ending) = socket.receiveUntilEnd()
            let answer = String(decoding: bytes, as: UTF8.self)
            #expect(answer.hasPrefix("HTTP/1.1 200") && answer.hasSuffix("\r\n\r\nok\n") && ending == "clean end", "\(answer) \(ending)")
        }
        #expect(try get(admin, "/metrics", method: "POST").status == 405)
        // Clients that close after their answer (curl, probes) leave no half-closed connection holding one of the
        // listener's 64: a hundred in a row are all answered.
        let many = try runCommand(Paths.which("python3"), ["-c", """
            import socket
            answered = 0
            for _ in range(100):
                s = socket.create_connection(("127.0.0.1", \(admin)), timeout=10)
                s.sendall(b"GET /healthz HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
                answer = s.recv(1000)
                s.close()
                answered += answer.startswith(b"HTTP/1.1 200")
            print(answered)
            """])
        #expect(many.stdout == "100", "\(many.stdout) \(many.stderr)")

        let curl = Paths.which("curl")
        let tunnel = try runCommand(curl, [
            "-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(port)", "--cacert", pki.caCertificate,
            "https://localhost:\(originPort)/hello",
        ])
        #expect(tunnel.stdout.contains("hello from origin"), "\(tunnel.stderr)")
        let refused = try runCommand(curl, ["-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(port)", "http://10.255.255.1/"])
        #expect(refused.stdout.contains("destination not allowed"), "\(refused)")
        _ = try runCommand(curl, ["-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(port)", "http://127.0.0.1:\(plainPort)/hello"])
        _ = try proxy.waitForLines(count: 3, timeout: 20) { $0.contains("\"action\"") }
        // The tunnel's close record comes once both sides are closed.
        _ = try proxy.waitForLine(timeout: 20) { $0.contains("\"close\"") && $0.contains("localhost:\(originPort)") }

        let (status, metrics) = try get(admin, "/metrics")
        #expect(status == 200)
        #expect(Self.value(metrics, #"kaizen_egress_connections_total{transport="connect",outcome="connected"}"#) == 1, "\(metrics)")
        #expect(Self.value(metrics, #"kaizen_egress_connections_total{transport="http",outcome="blocked"}"#) == 1)
        #expect(Self.value(metrics, #"kaizen_egress_connections_total{transport="http",outcome="connected"}"#) == 1)
        #expect(Self.value(metrics, #"kaizen_egress_sni_parse_total{outcome="sni"}"#) == 1)
        #expect((Self.value(metrics, #"kaizen_egress_bytes_total{direction="from_client"}"#) ?? 0) > 500, "a ClientHello at least")
        #expect((Self.value(metrics, #"kaizen_egress_bytes_total{direction="to_client"}"#) ?? 0) > 500)
        #expect(Self.value(metrics, #"kaizen_egress_active_tunnels{kind="passthrough"}"#) == 0)
        #expect(Self.value(metrics, "kaizen_egress_open_connections") != nil)
        // Every declared metric name is exported, with its type.
        for name in ["connections_total", "sni_parse_total", "leaf_mint_duration_seconds", "reporter_queue_depth", "policy_decisions_total"] {
            #expect(metrics.contains("# TYPE kaizen_egress_\(name) "), "\(name)")
        }
        // One canonical line per connection (written in batches: wait for the three).
        let logged = (try? proxy.waitForStderr(containing: "[EgressProxy] connection ", count: 3, timeout: 10)) ?? proxy.stderr
        let lines = logged.split(separator: "\n").filter { $0.contains("[EgressProxy] connection ") }
        #expect(lines.count == 3, "\(lines)")
        let tunnelLine = lines.first { $0.contains("target=localhost:\(originPort)") } ?? ""
        for field in [
            "agent=egress-agent", "client=127.0.0.1:", "transport=connect", "sni=localhost", "mode=passthrough",
            "decision=allow", "outcome=connected", "bytes_from_client=", "bytes_to_client=", "duration_ms=", "closed_by=",
            "reason=",
        ] {
            #expect(tunnelLine.contains(field), "\(field) in \(tunnelLine)")
        }
        #expect(lines.contains { $0.contains("target=10.255.255.1:80") && $0.contains("decision=block") && $0.contains("status=403") })
        #expect(lines.contains { $0.contains("mode=forwarded") && $0.contains("status=200") })
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    @Test func jsonLogsAreOneObjectPerLine() throws {
        let (plain, plainPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(plain) {} }
        let proxy = try ChildProcess(
            Paths.proxyBinary, ["--local", "--port", "0", "--log-format", "json"],
            environment: ProxyEnvironment.make(["KAIZEN_BASELINE_MAX": "0"]))
        let port = try proxy.listeningPort()
        _ = try runCommand(
            Paths.which("curl"), ["-sS", "--max-time", "10", "-x", "http://127.0.0.1:\(port)", "http://127.0.0.1:\(plainPort)/x?q=\"\\"])
        _ = try proxy.waitForStderr(containing: #""msg":"connection""#, timeout: 20)
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
        let lines = proxy.stderr.split(separator: "\n")
        #expect(lines.count >= 3)
        var connection: [String: Any]?
        for line in lines {
            let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            #expect(object != nil, "not one JSON object: \(line)")
            #expect(object?["ts"] is String && object?["level"] is String && object?["msg"] is String)
            if object?["msg"] as? String == "connection" { connection = object }
        }
        #expect(connection?["target"] as? String == "127.0.0.1:\(plainPort)")
        #expect(connection?["mode"] as? String == "forwarded")
        #expect(connection?["status"] as? String == "404", "the origin answers 404 for /x")
    }

    @Test func aTakenAdminPortRefusesToStartNamingTheVariable() throws {
        let first = try ChildProcess(Paths.proxyBinary, ["--local", "--port", "0"], environment: ProxyEnvironment.make())
        let admin = try first.adminPort()
        let second = try ChildProcess(
            Paths.proxyBinary, ["--local", "--port", "0"],
            environment: ProxyEnvironment.make(["KAIZEN_ADMIN_LISTEN": "127.0.0.1:\(admin)"]))
        #expect(try second.waitForExit(timeout: 30) == 2)
        #expect(second.stderrEventually("KAIZEN_ADMIN_LISTEN: cannot listen on 127.0.0.1 port \(admin)"), "\(second.stderr)")
        #expect(second.stderr.split(separator: "\n").count == 1)
        first.signal(SIGTERM)
        #expect(try first.waitForExit(timeout: 30) == 0)
    }
}
