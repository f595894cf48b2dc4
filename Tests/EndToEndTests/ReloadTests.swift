import Foundation
import TestSupport
import Testing

/// SIGHUP against the proxy binary: a rotated inspection CA, a changed passthrough list, a changed credentials
/// file and changed client ranges apply to new connections; an open connection carries on; a bad file keeps
/// everything as it was, with one line saying why.
@Suite struct ReloadTests {
    static let tokenA = "token-for-agent-a-0001"
    static let tokenB = "token-for-agent-b-0002"

    func write(_ text: String, to path: String, mode: Int = 0o600) throws {
        let temporary = path + ".new"
        #expect(FileManager.default.createFile(atPath: temporary, contents: Data(text.utf8), attributes: [.posixPermissions: mode]))
        _ = rename(temporary, path)
    }

    func replace(_ path: String, with source: String) throws {
        try write(try String(contentsOfFile: source, encoding: .utf8), to: path)
    }

    /// curl through the proxy; its output and error text.
    func curl(_ port: Int, _ arguments: [String]) throws -> String {
        let result = try runCommand(
            Paths.which("curl"), ["-sS", "-i", "--max-time", "10", "-x", "http://127.0.0.1:\(port)"] + arguments)
        return result.stdout + result.stderr
    }

    func reload(_ proxy: ChildProcess, count: Int, containing text: String) throws {
        proxy.signal(SIGHUP)
        try proxy.waitForStderr(containing: text, count: count, timeout: 20)
    }

    /// A CONNECT on a client connection accepted before a reload is decided by the reloaded settings (here the
    /// passthrough list), as on a new connection: a keep-alive client cannot go on with settings the operator
    /// replaced.
    @Test func aConnectOnAConnectionFromBeforeTheReloadFollowsTheReloadedSettings() throws {
        let pki = try TestPKI.mint()
        let (origin, originPort) = try ChildProcess.origin(mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        let (plain, plainPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime((origin, plain)) {} }
        let ca = try InspectionTests.makeCA(in: pki.directory)
        let agents = pki.directory + "/agents"
        try write("agent-a:\(Self.tokenA)\n", to: agents)
        let passthrough = pki.directory + "/passthrough"
        try write("# none yet\n", to: passthrough, mode: 0o644)
        let proxy = try ChildProcess(
            Paths.proxyBinary, ["--local", "--port", "0"],
            environment: ProxyEnvironment.make([
                "KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": ca + "/ca.key", "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
                "KAIZEN_PROXY_AUTH": agents, "KAIZEN_PASSTHROUGH_HOSTS": "@" + passthrough,
            ]))
        let port = try proxy.listeningPort()
        let basic = "Basic " + Data("agent-a:\(Self.tokenA)".utf8).base64EncodedString()
        let client = try ChildProcess(Paths.which("python3"), [
            Paths.endToEndDirectory.appendingPathComponent("connect_after_signal.py").path, "\(port)", "\(plainPort)",
            "\(originPort)", pki.caCertificate, basic,
        ])
        _ = try client.waitForLine(timeout: 20) { $0 == "READY" }
        try write("localhost\n", to: passthrough, mode: 0o644)
        try reload(proxy, count: 1, containing: "SIGHUP: settings reloaded")
        client.signal(SIGUSR1)
        #expect(try client.waitForExit(timeout: 30) == 0, "\(client.stderr)")
        #expect(client.stdoutLines.last == "PASSED THROUGH", "\(client.stdoutLines)")
    }

    /// A reload that changes only the certificates after the signing CA in KAIZEN_CA_CERT (an intermediate added)
    /// reaches the chains minted leaves are sent in: the leaves are minted again, not kept with the old chain.
    @Test func aReloadThatAddsAnIntermediateSendsIt() throws {
        let pki = try TestPKI.mint()
        let (origin, originPort) = try ChildProcess.origin(mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        defer { withExtendedLifetime(origin) {} }
        let directory = pki.directory
        func openssl(_ arguments: [String]) throws {
            let made = try runCommand(Paths.which("openssl"), arguments, directory: directory, timeout: 30)
            try #require(made.status == 0, "\(made.stderr)")
        }
        // A root, and the inspection CA it signed (the one that signs leaves).
        try openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "30",
                     "-subj", "/CN=inspection root", "-keyout", "root.key", "-out", "root.pem",
                     "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign"])
        try write("basicConstraints=critical,CA:TRUE\nkeyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
                  to: directory + "/signing.ext", mode: 0o644)
        try openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=inspection CA",
                     "-keyout", "signing.key", "-out", "signing.csr"])
        try openssl(["x509", "-req", "-in", "signing.csr", "-CA", "root.pem", "-CAkey", "root.key", "-CAcreateserial",
                     "-days", "30", "-extfile", "signing.ext", "-out", "signing.pem"])
        chmod(directory + "/signing.key", 0o600)
        let caCert = directory + "/inspection.pem"
        try replace(caCert, with: directory + "/signing.pem")
        let proxy = try ChildProcess(
            Paths.proxyBinary, ["--local", "--port", "0"],
            environment: ProxyEnvironment.make([
                "KAIZEN_CA_CERT": caCert, "KAIZEN_CA_KEY": directory + "/signing.key", "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
            ]))
        let port = try proxy.listeningPort()
        func chainLength() throws -> Int {
            let result = try runCommand("/bin/sh", ["-c", """
                \(Paths.which("openssl")) s_client -proxy 127.0.0.1:\(port) -connect localhost:\(originPort) \
                -servername localhost -showcerts </dev/null 2>/dev/null
                """], timeout: 30)
            return result.stdout.components(separatedBy: "-----BEGIN CERTIFICATE-----").count - 1
        }
        #expect(try chainLength() == 2)  // the leaf and the signing CA
        try write(try String(contentsOfFile: directory + "/signing.pem", encoding: .utf8)
            + String(contentsOfFile: directory + "/root.pem", encoding: .utf8), to: caCert)
        try reload(proxy, count: 1, containing: "SIGHUP: settings reloaded")
        #expect(try chainLength() == 3, "the root added after the signing CA is sent")
    }

    @Test func sighupReloadsFilesWithoutDroppingConnections() throws {
        let pki = try TestPKI.mint()
        let (origin, originPort) = try ChildProcess.origin(mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        let (plain, plainPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime((origin, plain)) {} }
        for name in ["first", "second"] {
            try FileManager.default.createDirectory(atPath: pki.directory + "/" + name, withIntermediateDirectories: false)
        }
        let firstCA = try InspectionTests.makeCA(in: pki.directory + "/first")
        let secondCA = try InspectionTests.makeCA(in: pki.directory + "/second")
        let caCert = pki.directory + "/inspection.pem"
        let caKey = pki.directory + "/inspection.key"
        try replace(caCert, with: firstCA + "/ca.pem")
        try replace(caKey, with: firstCA + "/ca.key")
        let agents = pki.directory + "/agents"
        try write("agent-a:\(Self.tokenA)\n", to: agents)
        let passthrough = pki.directory + "/passthrough"
        try write("# names never inspected\n", to: passthrough, mode: 0o644)
        let clients = pki.directory + "/clients"
        try write("127.0.0.0/8  # this machine\n", to: clients, mode: 0o644)

        let proxy = try ChildProcess(
            Paths.proxyBinary, ["--local", "--port", "0"],
            environment: ProxyEnvironment.make([
                "KAIZEN_CA_CERT": caCert, "KAIZEN_CA_KEY": caKey, "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
                "KAIZEN_PROXY_AUTH": agents, "KAIZEN_PASSTHROUGH_HOSTS": "@" + passthrough,
                "KAIZEN_ALLOW_CLIENTS": "@" + clients, "KAIZEN_STATE_DIR": pki.directory + "/state",
                "KAIZEN_AUDIT_LOG": pki.directory + "/audit.jsonl",
            ]))
        let port = try proxy.listeningPort()

        // An open connection: a tunnel to the plain origin, used before and after the reloads.
        let open = try RawSocket(host: "127.0.0.1", port: port)
        let basicA = Data("agent-a:\(Self.tokenA)".utf8).base64EncodedString()
        try open.send("CONNECT 127.0.0.1:\(plainPort) HTTP/1.1\r\nHost: 127.0.0.1:\(plainPort)\r\nProxy-Authorization: Basic \(basicA)\r\n\r\n")
        #expect(try open.receive(until: "\r\n\r\n").hasPrefix("HTTP/1.1 200"))
        try open.send("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        #expect(try open.receive(until: "hello from origin").contains("200"))

        // Before: agent-a is inspected with the first CA.
        let before = try curl(port, ["-U", "agent-a:\(Self.tokenA)", "--cacert", firstCA + "/ca.pem", "https://localhost:\(originPort)/hello"])
        #expect(before.contains("hello from origin"), "\(before) \(proxy.stderr)")

        // Rotate the CA, pass localhost through, replace agent-a by agent-b.
        try replace(caCert, with: secondCA + "/ca.pem")
        try replace(caKey, with: secondCA + "/ca.key")
        try write("localhost\n", to: passthrough, mode: 0o644)
        try write("agent-b:\(Self.tokenB)\n", to: agents)
        try reload(proxy, count: 1, containing: "SIGHUP: settings reloaded")
        let reloaded = proxy.stderr.components(separatedBy: "SIGHUP: settings reloaded").last ?? ""
        #expect(reloaded.contains("passthrough hosts localhost") && reloaded.contains("proxy credentials 1 agents"), "\(reloaded)")

        let oldAgent = try curl(port, ["-U", "agent-a:\(Self.tokenA)", "http://127.0.0.1:\(plainPort)/hello"])
        #expect(oldAgent.contains("407"), "\(oldAgent)")
        // localhost now passes through: the origin's own certificate reaches the client.
        let passed = try curl(port, ["-U", "agent-b:\(Self.tokenB)", "--cacert", pki.caCertificate, "https://localhost:\(originPort)/hello"])
        #expect(passed.contains("hello from origin"), "\(passed)")
        // 127.0.0.1 is still inspected, with the second CA; the first is no longer what signs.
        let inspected = try curl(port, ["-U", "agent-b:\(Self.tokenB)", "--cacert", secondCA + "/ca.pem", "https://127.0.0.1:\(originPort)/hello"])
        #expect(inspected.contains("hello from origin"), "\(inspected)")
        let oldCA = try curl(port, ["-U", "agent-b:\(Self.tokenB)", "--cacert", firstCA + "/ca.pem", "https://127.0.0.1:\(originPort)/hello"])
        #expect(!oldCA.contains("hello from origin"), "\(oldCA)")

        // The open connection carries on.
        try open.send("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        #expect(try open.receive(until: "hello from origin").contains("200"))

        // A bad credentials file: everything stays as it was, one line says why.
        try write("agent-c:short\n", to: agents)
        try reload(proxy, count: 1, containing: "the current settings are kept")
        #expect(proxy.stderrEventually("SIGHUP: KAIZEN_PROXY_AUTH:"), "\(proxy.stderr.suffix(2000))")
        let kept = try curl(port, ["-U", "agent-b:\(Self.tokenB)", "http://127.0.0.1:\(plainPort)/hello"])
        #expect(kept.contains("hello from origin"), "\(kept)")

        // Client ranges that exclude this machine: new connections are closed unanswered; the open one is not.
        try write("agent-b:\(Self.tokenB)\n", to: agents)
        try write("10.0.0.0/8\n", to: clients, mode: 0o644)
        try reload(proxy, count: 2, containing: "SIGHUP: settings reloaded")
        let refused = try curl(port, ["-U", "agent-b:\(Self.tokenB)", "http://127.0.0.1:\(plainPort)/hello"])
        #expect(!refused.contains("hello from origin"), "\(refused)")
        try open.send("GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        #expect(try open.receive(until: "hello from origin").contains("200"))

        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)

        // The audit log records each reload with the settings it brought, inside an unbroken chain.
        let audit = try String(contentsOfFile: pki.directory + "/audit.jsonl", encoding: .utf8)
        let reloads = audit.split(separator: "\n").filter { $0.contains(#""event":"reload""#) }
        #expect(reloads.count == 2, "\(reloads)")
        #expect(reloads.first?.contains(#""passthrough_hosts":"localhost""#) == true, "\(reloads)")
        // Who could use the proxy, in every start and reload record: the clients' ranges and the agents (never a token).
        func settings(_ line: Substring?) throws -> [String: Any] {
            let object = try JSONSerialization.jsonObject(with: Data((line ?? "").utf8)) as? [String: Any]
            return (object?["audit"] as? [String: Any])?["settings"] as? [String: Any] ?? [:]
        }
        let start = try settings(audit.split(separator: "\n").first { $0.contains(#""event":"start""#) })
        #expect(start["allow_clients"] as? [String] == ["127.0.0.0/8"] && start["proxy_auth_agents"] as? [String] == ["agent-a"], "\(start)")
        let first = try settings(reloads.first), second = try settings(reloads.last)
        #expect(first["allow_clients"] as? [String] == ["127.0.0.0/8"] && first["proxy_auth_agents"] as? [String] == ["agent-b"], "\(first)")
        #expect(second["allow_clients"] as? [String] == ["10.0.0.0/8"] && second["proxy_auth_agents"] as? [String] == ["agent-b"], "\(second)")
        #expect(!audit.contains(Self.tokenA) && !audit.contains(Self.tokenB))
        let verify = try runCommand(Paths.proxyBinary, ["audit", "verify", pki.directory + "/audit.jsonl"])
        #expect(verify.status == 0 && verify.stdout.hasPrefix("OK"), "\(verify)")
        let report = try runCommand(Paths.proxyBinary, ["report", "--format", "json", pki.directory + "/audit.jsonl"])
        #expect(report.status == 0 && report.stdout.contains("agent-b"), "\(report.stderr)")
    }
}
