import Foundation
import TestSupport
import Testing

/// Secrets never leave the place they were put: a canary API key, CA key and Proxy-Authorization token, used
/// through every mode at trace logging, appear in no log line, error page, action (local, audit, control plane)
/// or file the proxy writes; and every file it writes has its final mode from creation, even under umask 000.
@Suite struct SecretsTests {
    static let apiKey = ControlPlaneConnectionTests.key
    static let token = "tok_CANARY_proxy_SECRET_7731"

    /// Every file under `directory`, recursively, with its mode.
    func files(under directory: String) -> [(path: String, mode: Int, isDirectory: Bool)] {
        guard let enumerator = FileManager.default.enumerator(atPath: directory) else { return [] }
        var found: [(String, Int, Bool)] = []
        for case let relative as String in enumerator {
            let path = directory + "/" + relative
            let attributes = (try? FileManager.default.attributesOfItem(atPath: path)) ?? [:]
            let mode = (attributes[.posixPermissions] as? Int) ?? -1
            found.append((path, mode, attributes[.type] as? FileAttributeType == .typeDirectory))
        }
        return found
    }

    @Test func canariesAppearNowhereAndFilesAreCreatedPrivate() throws {
        let pki = try TestPKI.mint()
        let work = pki.directory + "/proxy-files"
        try FileManager.default.createDirectory(atPath: work, withIntermediateDirectories: false)
        let bodies = pki.directory + "/received-bodies"
        let (mock, mockPort) = try ControlPlaneConnectionTests().startMock(pki, bodies: bodies)
        let (origin, originPort) = try ChildProcess.origin(mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        let (plain, plainPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime((mock, origin, plain)) {} }

        let ca = try InspectionTests.makeCA(in: pki.directory)
        let keyPEM = try String(contentsOfFile: ca + "/ca.key", encoding: .utf8)
        let keyLines = keyPEM.split(separator: "\n").filter { !$0.hasPrefix("-----") }.map(String.init)
        let keyBody = keyLines.joined()
        let credentials = pki.directory + "/agents"
        #expect(FileManager.default.createFile(
            atPath: credentials, contents: Data("canary-agent:\(Self.token)\n".utf8), attributes: [.posixPermissions: 0o600]))
        let basic = Data("canary-agent:\(Self.token)".utf8).base64EncodedString()

        // umask 000: a file created without an explicit mode would come out world-writable.
        let environment = ProxyEnvironment.make([
            "KAIZEN_API_KEY": Self.apiKey, "KAIZEN_API_URL": "https://localhost:\(mockPort)",
            "KAIZEN_API_CA_FILE": pki.caCertificate, "KAIZEN_LOCAL": "1", "KAIZEN_LOG_LEVEL": "trace",
            "KAIZEN_SPOOL_DIR": work + "/spool", "KAIZEN_STATE_DIR": work + "/state", "KAIZEN_AUDIT_LOG": work + "/audit.jsonl",
            "KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": ca + "/ca.key", "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
            "KAIZEN_PROXY_AUTH": credentials, "KAIZEN_AUDIT_FSYNC": "0",
        ])
        let proxy = try ChildProcess("/bin/sh", ["-c", "umask 000; exec \"$0\" --port 0", Paths.proxyBinary], environment: environment)
        let port = try proxy.listeningPort()

        let curl = Paths.which("curl")
        var pages: [String] = []
        func run(_ arguments: [String]) throws {
            let result = try runCommand(curl, ["-sS", "-i", "--max-time", "10", "-x", "127.0.0.1:\(port)"] + arguments)
            pages.append(result.stdout + result.stderr)
        }
        try run(["-U", "canary-agent:\(Self.token)", "--cacert", ca + "/ca.pem", "https://localhost:\(originPort)/hello"])  // inspected
        try run(["-U", "canary-agent:\(Self.token)", "http://127.0.0.1:\(plainPort)/hello"])  // plain HTTP
        try run(["-U", "canary-agent:\(Self.token)", "http://10.0.0.1/"])  // refused by the guard
        try run(["http://127.0.0.1:\(plainPort)/hello"])  // 407
        try run(["-U", "canary-agent:wrong-\(Self.token)", "http://127.0.0.1:\(plainPort)/hello"])  // 407, a near miss
        #expect(pages[0].contains("hello from origin") && pages[1].contains("hello from origin"), "\(pages) \(proxy.stderr.suffix(3000))")
        #expect(pages[3].contains("407") && pages[4].contains("407"))
        _ = try proxy.waitForLines(count: 3, timeout: 20) { $0.contains("\"action\"") }
        do {
            _ = try mock.waitForLines(count: 3, timeout: 20) { $0.hasPrefix("RECEIVED") }
        } catch {
            Issue.record("\(error) \(proxy.stderr.split(separator: "\n").filter { $0.contains("control") || $0.contains("report") || $0.contains("error") }.suffix(10))")
        }
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)

        // Everything the proxy said or wrote, and everything the control plane received.
        var haystacks: [(String, String)] = [("stderr", proxy.stderr), ("stdout", proxy.stdoutLines.joined(separator: "\n"))]
        haystacks += pages.enumerated().map { ("response \($0.offset)", $0.element) }
        haystacks.append(("control plane", (try? String(contentsOfFile: bodies, encoding: .utf8)) ?? ""))
        let written = files(under: work)
        for file in written where !file.isDirectory {
            haystacks.append((file.path, String(decoding: (try? Data(contentsOf: URL(fileURLWithPath: file.path))) ?? Data(), as: UTF8.self)))
        }
        #expect(haystacks.count > 8 && !(haystacks.last(where: { $0.0 == "control plane" })?.1.isEmpty ?? true))
        let canaries = [Self.apiKey, Self.token, basic, keyBody] + keyLines
        for (name, text) in haystacks {
            for canary in canaries {
                #expect(!text.contains(canary), "a secret appears in \(name)")
            }
        }
        // Created private, whatever the umask.
        #expect(written.contains { $0.path.hasSuffix("/state/baseline.json") })
        #expect(written.contains { $0.path.hasSuffix("/audit.jsonl.head") })
        for file in written {
            #expect(file.mode == (file.isDirectory ? 0o700 : 0o600), "\(file.path) has mode \(String(file.mode, radix: 8))")
        }
    }

    /// A secret pasted where the path of its file belongs (a Kubernetes secretKeyRef gives the value, not a path) is
    /// refused with one line naming the variable, and the value is not in it: the CA key itself, an agent:token line,
    /// an API key, and a control-plane URL carrying the key in its user information.
    @Test func aSecretGivenWhereItsFileBelongsIsNeverEchoed() throws {
        let pki = try TestPKI.mint()
        let ca = try InspectionTests.makeCA(in: pki.directory)
        let key = try String(contentsOfFile: ca + "/ca.key", encoding: .utf8)
        let keyBody = try #require(key.split(separator: "\n").dropFirst().first.map(String.init))
        func refusal(_ arguments: [String], _ environment: [String: String]) throws -> String {
            let child = try ChildProcess(Paths.proxyBinary, arguments, environment: ProxyEnvironment.make(environment))
            #expect(try child.waitForExit(timeout: 30) == 2)
            return child.stderr
        }
        let caKey = try refusal(["--local", "--port", "0"], ["KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": key])
        #expect(caKey.hasPrefix("kaizen-egress: KAIZEN_CA_KEY names no readable file"), "\(caKey)")
        #expect(!caKey.contains(keyBody) && !caKey.contains("PRIVATE KEY"), "\(caKey)")
        let doctor = try refusal(["ca", "doctor"], ["KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": key])
        #expect(!doctor.contains(keyBody) && doctor.contains("KAIZEN_CA_KEY"), "\(doctor)")

        let auth = try refusal(["--local", "--port", "0"], ["KAIZEN_PROXY_AUTH": "agent1:\(Self.token)"])
        #expect(auth.hasPrefix("kaizen-egress: KAIZEN_PROXY_AUTH: ") && !auth.contains(Self.token), "\(auth)")
        let apiKeyFile = try refusal(["--local", "--port", "0", "--api-key-file", Self.apiKey], [:])
        #expect(apiKeyFile.hasPrefix("kaizen-egress: --api-key-file") && !apiKeyFile.contains(Self.apiKey), "\(apiKeyFile)")
        for url in ["https://kaizen:\(Self.apiKey)@api.getkaizen.io:44x", "https//kaizen:\(Self.apiKey)@api.getkaizen.io"] {
            let apiURL = try refusal(["--local", "--port", "0"], ["KAIZEN_API_URL": url])
            #expect(apiURL.hasPrefix("kaizen-egress: KAIZEN_API_URL=") && !apiURL.contains(Self.apiKey), "\(apiURL)")
        }
    }
}
