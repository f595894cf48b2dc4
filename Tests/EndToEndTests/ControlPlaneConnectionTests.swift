import ControlPlane
import Foundation
import TestSupport
import OpenSSLTLS
import Testing

/// The control-plane client against a mock control plane over verified TLS on loopback.
@Suite struct ControlPlaneConnectionTests {
    static let key = "kz_test_CANARY_0042"

    func startMock(
        _ pki: TestPKI, port: Int = 0, modeFile: String? = nil, bodies: String? = nil, policyDirectory: String? = nil
    ) throws -> (ChildProcess, Int) {
        var environment = ProcessInfo.processInfo.environment
        environment["MOCK_API_KEY"] = Self.key
        let script = Paths.endToEndDirectory.appendingPathComponent("control_plane.py").path
        let mock = try ChildProcess(
            Paths.which("python3"),
            [script, "--cert", pki.serverCertificate, "--key", pki.serverKey, "--port", "\(port)"]
                + (modeFile.map { ["--mode-file", $0] } ?? []) + (bodies.map { ["--bodies", $0] } ?? [])
                + (policyDirectory.map { ["--policy-dir", $0] } ?? []),
            environment: environment
        )
        let line = try mock.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }
        return (mock, Int(line.dropFirst(5))!)
    }

    func tls(trusting file: String) throws -> OpenSSLContext {
        var configuration = OpenSSLContext.Configuration(role: .client)
        configuration.trustSystemStore = false
        configuration.additionalTrustFile = file
        return try OpenSSLContext(configuration: configuration)
    }

    func action() -> (EventID, [UInt8]) {
        let id = EventID.generate()
        let metadata = ConnectMetadata(
            eventID: id, transport: .connect, host: "example.org", port: 443, client: "127.0.0.1:1",
            startedAt: WallClock.rfc3339(unixMillis: WallClock.nowMillis()), outcome: .connected)
        var line = ActionRecord.action(ConnectAction(agent: "egress-agent", target: "example.org:443", metadata: metadata))
            .jsonLine()
        line.removeLast()  // the newline
        return (id, line)
    }

    @Test func postsActionsOverOneVerifiedKeepAliveConnection() async throws {
        let pki = try TestPKI.mint()
        let (mock, port) = try startMock(pki)
        defer { withExtendedLifetime(mock) {} }
        let endpoint = try ControlPlaneEndpoint(url: "https://localhost:\(port)")
        let connection = try await ControlPlaneConnection.connect(to: endpoint, tls: try tls(trusting: pki.caCertificate))
        var ids: [EventID] = []
        for _ in 0..<3 {
            let (id, json) = action()
            ids.append(id)
            let response = try await connection.post(path: "/v1/verdicts", json: json, apiKey: Self.key)
            #expect(response.status == 200, "\(response.body)")
        }
        var ports = Set<String>()
        for id in ids {
            let line = try mock.waitForLine(timeout: 10) { $0.hasSuffix(id.description) }
            ports.insert(String(line.split(separator: " ")[1]))
        }
        #expect(ports.count == 1)  // all three on one connection
        #expect(!mock.stdoutLines.joined().contains(Self.key))
        await connection.close()
    }

    @Test func aWrongKeyIs401AndABadBodyIs400() async throws {
        let pki = try TestPKI.mint()
        let (mock, port) = try startMock(pki)
        defer { withExtendedLifetime(mock) {} }
        let connection = try await ControlPlaneConnection.connect(
            to: try ControlPlaneEndpoint(url: "https://127.0.0.1:\(port)/"), tls: try tls(trusting: pki.caCertificate))
        let (_, json) = action()
        let unauthorized = try await connection.post(path: "/v1/verdicts", json: json, apiKey: "wrong")
        #expect(unauthorized.status == 401)
        #expect(unauthorized.body.contains("invalid API key"))
        let bad = try await connection.post(path: "/v1/verdicts", json: Array("{}".utf8), apiKey: Self.key)
        #expect(bad.status == 400)
        await connection.close()
    }

    @Test func aControlPlaneThatDoesNotAnswerTimesOutAndClosesTheConnection() async throws {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        try "slow".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, port) = try startMock(pki, modeFile: modeFile)
        defer { withExtendedLifetime(mock) {} }
        let connection = try await ControlPlaneConnection.connect(
            to: try ControlPlaneEndpoint(url: "https://localhost:\(port)"),
            tls: try tls(trusting: pki.caCertificate),
            responseTimeout: .milliseconds(500)
        )
        let (id, json) = action()
        await #expect(throws: ControlPlaneTimeout.self) {
            _ = try await connection.post(path: "/v1/verdicts", json: json, apiKey: Self.key)
        }
        _ = try mock.waitForLine(timeout: 10) { $0 == "HOLDING \(id)" }  // it was sent, just never answered
        #expect(!connection.isOpen)
        try "ok".write(toFile: modeFile, atomically: true, encoding: .utf8)
    }

    /// The answer timeout counts from a request's turn, not from when it was sent: a control plane that answers a
    /// connection's pipelined requests one after the other, each well within the timeout, answers all of them
    /// although the last comes long after the timeout from its sending.
    @Test func pipelinedRequestsAreTimedFromTheirTurnNotFromTheirSending() async throws {
        let pki = try TestPKI.mint()
        let modeFile = pki.directory + "/mode"
        // 12 answers 0.3 s apart: the last about 3.6 s after it was sent, each 0.3 s after the one before.
        try "slow 0.3".write(toFile: modeFile, atomically: true, encoding: .utf8)
        let (mock, port) = try startMock(pki, modeFile: modeFile)
        defer { withExtendedLifetime(mock) {} }
        let connection = try await ControlPlaneConnection.connect(
            to: try ControlPlaneEndpoint(url: "https://localhost:\(port)"),
            tls: try tls(trusting: pki.caCertificate),
            responseTimeout: .seconds(2)
        )
        let actions = (0..<12).map { _ in action() }
        let statuses = await withTaskGroup(of: (Int, Result<Int, any Error>).self) { group in
            for (index, (_, json)) in actions.enumerated() {
                group.addTask {
                    do {
                        return (index, .success(try await connection.post(path: "/v1/verdicts", json: json, apiKey: Self.key).status))
                    } catch {
                        return (index, .failure(error))
                    }
                }
            }
            var statuses = [String](repeating: "none", count: actions.count)
            for await (index, result) in group {
                statuses[index] = switch result {
                case .success(let status): "\(status)"
                case .failure(let error): "\(error)"
                }
            }
            return statuses
        }
        #expect(statuses == [String](repeating: "200", count: actions.count))
        // All on the one connection, in order, each answered.
        var ports = Set<String>()
        for (id, _) in actions {
            let line = try mock.waitForLine(timeout: 10) { $0.hasPrefix("RECEIVED ") && $0.hasSuffix(id.description) }
            ports.insert(String(line.split(separator: " ")[1]))
        }
        #expect(ports.count == 1)
        #expect(connection.isOpen)
        await connection.close()
    }

    @Test func aServerThatNeverFinishesTheHandshakeTimesOut() async throws {
        // A TCP listener that accepts and says nothing (Python's backlog accepts for it).
        let listener = try ChildProcess(
            Paths.which("python3"),
            ["-c", "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',0))\ns.listen(8)\nprint('PORT',s.getsockname()[1],flush=True)\ntime.sleep(60)"]
        )
        let line = try listener.waitForLine(timeout: 20) { $0.hasPrefix("PORT ") }
        let port = Int(line.dropFirst(5))!
        let pki = try TestPKI.mint()
        await #expect(throws: ControlPlaneTimeout.self) {
            _ = try await ControlPlaneConnection.connect(
                to: try ControlPlaneEndpoint(url: "https://localhost:\(port)"),
                tls: try tls(trusting: pki.caCertificate),
                connectTimeout: .milliseconds(500)
            )
        }
    }

    @Test func anUntrustedControlPlaneIsRefusedWithTheReason() async throws {
        let pki = try TestPKI.mint()
        let other = try TestPKI.mint()
        let (mock, port) = try startMock(pki)
        defer { withExtendedLifetime(mock) {} }
        do {
            let connection = try await ControlPlaneConnection.connect(
                to: try ControlPlaneEndpoint(url: "https://localhost:\(port)"), tls: try tls(trusting: other.caCertificate))
            await connection.close()
            Issue.record("an untrusted certificate was accepted")
        } catch let error as OpenSSLError {
            #expect(error.verifyResult == "unable to get local issuer certificate")
        }
        #expect(!mock.stdoutLines.contains { $0.hasPrefix("RECEIVED") })
    }

    /// The proxy never trusts its inspection CA for the control plane either: a control plane whose certificate that
    /// CA issued (what anyone holding its key can make) is refused, even when KAIZEN_API_CA_FILE or SSL_CERT_FILE in
    /// the proxy's environment holds the CA, so the API key is never sent to it. The log says why.
    @Test(arguments: ["KAIZEN_API_CA_FILE", "SSL_CERT_FILE"])
    func aControlPlaneWithALeafFromTheInspectionCAIsRefused(_ trustVariable: String) throws {
        // The test PKI's CA as the inspection CA: the mock's certificate is one of its leaves.
        let pki = try TestPKI.mint()
        let (mock, mockPort) = try startMock(pki)
        defer { withExtendedLifetime(mock) {} }
        let proxy = try ChildProcess(
            Paths.proxyBinary, ["--port", "0"],
            environment: ProxyEnvironment.make([
                "KAIZEN_API_KEY": Self.key, "KAIZEN_API_URL": "https://localhost:\(mockPort)",
                trustVariable: pki.caCertificate, "KAIZEN_SPOOL_DIR": pki.directory + "/spool", "KAIZEN_LOCAL": "1",
                "KAIZEN_CA_CERT": pki.caCertificate, "KAIZEN_CA_KEY": pki.directory + "/ca.key",
            ]))
        let port = try proxy.listeningPort()
        let closed = try FreePort.refusing()
        _ = try runCommand(
            Paths.which("curl"), ["-s", "--max-time", "10", "-x", "http://127.0.0.1:\(port)", "http://127.0.0.1:\(closed)/"])
        _ = try proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
        let refused = try proxy.waitForStderr(containing: "control plane unreachable", timeout: 30)
        #expect(
            refused.contains(
                "certificate verification: unable to get local issuer certificate: its issuer is the inspection CA (KAIZEN_CA_CERT), which the proxy never trusts for its own connections"
            ), "\(refused)")
        let warning = trustVariable == "SSL_CERT_FILE"
            ? "SSL_CERT_FILE=\(pki.caCertificate) in the proxy's own environment holds the inspection CA"
            : "KAIZEN_API_CA_FILE=\(pki.caCertificate) holds the inspection CA (KAIZEN_CA_CERT, "
        #expect(proxy.stderr.contains(warning), "\(proxy.stderr)")
        #expect(proxy.stderr.contains("never trusted for the control plane") || trustVariable == "SSL_CERT_FILE")
        // Never past the handshake: no action, no policy request, no API key.
        #expect(!mock.stdoutLines.contains { $0.contains("RECEIVED") || $0.hasPrefix("POLICY") }, "\(mock.stdoutLines)")
        #expect(!proxy.stderr.contains(Self.key))
        proxy.signal(SIGTERM)
        _ = try? proxy.waitForExit(timeout: 30)
    }

    @Test(arguments: [
        ("https://api.getkaizen.io", true, "api.getkaizen.io", 443, ""),
        ("http://127.0.0.1:9999/", false, "127.0.0.1", 9999, ""),
        ("https://[::1]:8443/kaizen/", true, "::1", 8443, "/kaizen"),
    ])
    func endpointsParse(_ url: String, _ tls: Bool, _ host: String, _ port: Int, _ base: String) throws {
        let endpoint = try ControlPlaneEndpoint(url: url)
        #expect(endpoint.useTLS == tls)
        #expect(endpoint.host == host)
        #expect(endpoint.port == port)
        #expect(endpoint.basePath == base)
    }
}
