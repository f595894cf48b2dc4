import Foundation
import TestSupport
import Testing

/// Bounded under abuse: each request-head limit answers its status, a slow head runs out of time, and past the
/// connection limits new clients get 503; each is logged. Raw sockets, so the bytes are exactly the test's.
@Suite struct LimitsTests {
    func start(_ extra: [String: String]) throws -> (ChildProcess, Int) {
        try InspectionTests.startProxy(extra)
    }

    func exchange(_ port: Int, _ request: String) throws -> String {
        let socket = try RawSocket(host: "127.0.0.1", port: port)
        try? socket.send(request)
        return (try? socket.receiveAll()) ?? ""
    }

    @Test func requestHeadLimitsAnswerTheirStatus() throws {
        let (proxy, port) = try start([:])
        let longLine = "GET http://example.org/" + String(repeating: "a", count: 8200) + " HTTP/1.1\r\nHost: example.org\r\n\r\n"
        #expect(try exchange(port, longLine).hasPrefix("HTTP/1.1 414 URI Too Long"))
        let manyFields = "GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n"
            + (0..<201).map { "X-Field-\($0): v\r\n" }.joined() + "\r\n"
        let answer = try exchange(port, manyFields)
        #expect(answer.hasPrefix("HTTP/1.1 431"), "\(answer.prefix(200))")
        #expect(answer.contains("more than 200 header fields"))
        let bigBlock = "GET http://example.org/ HTTP/1.1\r\nHost: example.org\r\n"
            + (0..<10).map { "X-Big-\($0): " + String(repeating: "b", count: 7000) + "\r\n" }.joined() + "\r\n"
        let big = try exchange(port, bigBlock)
        #expect(big.hasPrefix("HTTP/1.1 431") && big.contains("header block larger than 65536 bytes"), "\(big.prefix(200))")
        // Under the limits, a request goes through to the guard (which refuses example.org's test address only
        // if it resolves privately; either way not a limit status).
        let fine = try exchange(port, "GET http://127.0.0.1:9/ HTTP/1.1\r\nHost: 127.0.0.1:9\r\n" + (0..<150).map { "X-F-\($0): v\r\n" }.joined() + "\r\n")
        #expect(!fine.hasPrefix("HTTP/1.1 414") && !fine.hasPrefix("HTTP/1.1 431") && fine.hasPrefix("HTTP/1.1 "), "\(fine.prefix(100))")
        _ = try proxy.waitForStderr(containing: "status=414", timeout: 10)
        _ = try proxy.waitForStderr(containing: "status=431", timeout: 10)
    }

    @Test func configuredLimitsApply() throws {
        let (proxy, port) = try start(["KAIZEN_MAX_REQUEST_LINE": "512", "KAIZEN_MAX_HEADER_FIELDS": "10"])
        defer { withExtendedLifetime(proxy) {} }
        let line = "GET http://example.org/" + String(repeating: "a", count: 600) + " HTTP/1.1\r\n\r\n"
        #expect(try exchange(port, line).hasPrefix("HTTP/1.1 414"))
        let fields = "GET http://example.org/ HTTP/1.1\r\n" + (0..<11).map { "X-\($0): v\r\n" }.joined() + "\r\n"
        #expect(try exchange(port, fields).hasPrefix("HTTP/1.1 431"))
    }

    @Test func aSlowHeadRunsOutOfTime() throws {
        let (proxy, port) = try start(["KAIZEN_HEADER_TIMEOUT": "1s"])
        let started = Date()
        let socket = try RawSocket(host: "127.0.0.1", port: port, timeout: 20)
        try socket.send("GET http://example.org/ HTTP/1.1\r\nHost: exa")
        let answer = try socket.receiveAll()
        #expect(answer.hasPrefix("HTTP/1.1 408 Request Timeout"), "\(answer)")
        #expect(Date().timeIntervalSince(started) < 10)
        // A client that connects and sends nothing is closed too.
        let silent = try RawSocket(host: "127.0.0.1", port: port, timeout: 20)
        #expect(try silent.receiveAll().hasPrefix("HTTP/1.1 408"))
        _ = try proxy.waitForStderr(containing: "status=408", timeout: 10)
    }

    /// A keep-alive connection that has had one exchange answered: the proxy has certainly counted it.
    func heldConnection(_ port: Int, originPort: Int) throws -> RawSocket {
        let socket = try RawSocket(host: "127.0.0.1", port: port, timeout: 20)
        try socket.send("GET http://127.0.0.1:\(originPort)/hello HTTP/1.1\r\nHost: 127.0.0.1:\(originPort)\r\n\r\n")
        _ = try socket.receive(until: "hello from origin\n")
        return socket
    }

    @Test func pastTheConnectionLimitsNewClientsGet503() throws {
        let (origin, originPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(origin) {} }
        let (proxy, port) = try start(["KAIZEN_MAX_CONNECTIONS": "3"])
        let held = try (0..<3).map { _ in try heldConnection(port, originPort: originPort) }
        let refused = try exchange(port, "")
        #expect(refused.hasPrefix("HTTP/1.1 503 Service Unavailable"), "\(refused)")
        _ = try proxy.waitForStderr(containing: "refused a connection: too many open", timeout: 10)
        // Once one closes, a new client is served again.
        withExtendedLifetime(held[0]) {}
        let (perClient, perClientPort) = try start(["KAIZEN_MAX_CONNECTIONS_PER_CLIENT": "1"])
        let first = try heldConnection(perClientPort, originPort: originPort)
        #expect(try exchange(perClientPort, "").hasPrefix("HTTP/1.1 503"))
        _ = try perClient.waitForStderr(containing: "perClient(1)", timeout: 10)
        // Each refusal is counted by its reason, though the log says it once a minute.
        #expect(try exchange(perClientPort, "").hasPrefix("HTTP/1.1 503"))
        let counted = try AdminTests().get(try perClient.adminPort(), "/metrics").body
        #expect(AdminTests.value(counted, #"kaizen_egress_connections_refused_total{reason="max_connections_per_client"}"#) == 2, "\(counted)")
        #expect(AdminTests.value(counted, #"kaizen_egress_connections_refused_total{reason="max_connections"}"#) == 0, "\(counted)")
        let total = try AdminTests().get(try proxy.adminPort(), "/metrics").body
        #expect(AdminTests.value(total, #"kaizen_egress_connections_refused_total{reason="max_connections"}"#) == 1, "\(total)")
        withExtendedLifetime((held, first)) {}
    }

    @Test func theSameLimitsApplyInsideInspection() throws {
        let pki = try TestPKI.mint()
        let (origin, originPort) = try ChildProcess.origin(mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        defer { withExtendedLifetime(origin) {} }
        let ca = try InspectionTests.makeCA(in: pki.directory)
        let (proxy, port) = try start([
            "KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": ca + "/ca.key", "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
            "KAIZEN_HEADER_TIMEOUT": "1s", "KAIZEN_MAX_HEADER_FIELDS": "10",
        ])
        defer { withExtendedLifetime(proxy) {} }
        // Each through an inspected connection: one fine request and then the head that breaks a limit, on one
        // connection; the answer's status line.
        let script = """
            import socket, ssl, sys
            port, target, ca = int(sys.argv[1]), sys.argv[2], sys.argv[3]
            def connection():
                s = socket.create_connection(("127.0.0.1", port), timeout=20)
                s.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
                head = b""
                for _ in range(100):
                    if b"\\r\\n\\r\\n" in head:
                        break
                    head += s.recv(4096)
                return ssl.create_default_context(cafile=ca).wrap_socket(s, server_hostname="localhost")
            def answer(t):
                data = b""
                for _ in range(100):
                    more = t.recv(65536)
                    if not more:
                        break
                    data += more
                return data.split(b"\\r\\n")[0].decode()
            results = []
            for breaking in [
                b"GET /" + b"a" * 9000 + b" HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n",
                b"GET / HTTP/1.1\\r\\n" + b"".join(b"X-%d: v\\r\\n" % i for i in range(11)) + b"\\r\\n",
                b"GET /hello HTTP/1.1\\r\\nHost: loc",
            ]:
                t = connection()
                t.sendall(b"GET /hello HTTP/1.1\\r\\nHost: localhost\\r\\n\\r\\n")
                first = b""
                for _ in range(100):
                    if b"hello from origin" in first:
                        break
                    first += t.recv(65536)
                t.sendall(breaking)
                results.append(first.split(b"\\r\\n")[0].decode() + " | " + answer(t))
            print("\\n".join(results))
            """
        let result = try runCommand(Paths.which("python3"), ["-c", script, "\(port)", "localhost:\(originPort)", ca + "/ca.pem"])
        #expect(result.stdout == """
            HTTP/1.1 200 OK | HTTP/1.1 414 URI Too Long
            HTTP/1.1 200 OK | HTTP/1.1 431 Request Header Fields Too Large
            HTTP/1.1 200 OK | HTTP/1.1 408 Request Timeout
            """, "\(result.stdout) \(result.stderr)")
    }
}
