import Foundation
import TestSupport
import Testing

/// Compliance evidence from the real binary: known traffic through the proxy, across a restart, then
/// `audit verify` and `report` on what it wrote. The report's figures must be exactly the traffic's.
@Suite(.serialized) struct ComplianceTests {
    func environment(_ extra: [String: String]) -> [String: String] {
        ProxyEnvironment.make(extra)
    }

    /// A CONNECT tunnel that sends `count` bytes and reads the echo back; prints how many came back.
    static let echoClient = """
        import socket, sys
        port, target, count = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
        s = socket.create_connection(("127.0.0.1", port), timeout=20)
        s.sendall(f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n".encode())
        head = b""
        for _ in range(100):
            if b"\\r\\n\\r\\n" in head:
                break
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200"), head
        got = len(head.split(b"\\r\\n\\r\\n", 1)[1])
        s.sendall(b"x" * count)
        for _ in range(10000):
            if got >= count:
                break
            data = s.recv(65536)
            if not data:
                break
            got += len(data)
        s.close()
        print(got)
        """

    struct Proxy {
        let child: ChildProcess
        let port: Int
    }

    func startProxy(directory: String, extra: [String: String] = [:]) throws -> Proxy {
        let child = try ChildProcess(
            Paths.proxyBinary, ["--port", "0", "--agent", "review-agent"],
            environment: environment([
                "KAIZEN_LOCAL": "1", "KAIZEN_AUDIT_LOG": directory + "/audit.jsonl",
                "KAIZEN_STATE_DIR": directory + "/state", "KAIZEN_AUDIT_MAX_BYTES": "64K",
            ].merging(extra) { $1 })
        )
        let port = try child.listeningPort()
        return Proxy(child: child, port: port)
    }

    func stop(_ proxy: Proxy, actions: Int) throws {
        _ = try proxy.child.waitForLines(count: actions, timeout: 30) { $0.contains("\"action\"") }
        proxy.child.signal(SIGTERM)
        #expect(try proxy.child.waitForExit(timeout: 30) == 0)
    }

    @Test func reportFiguresMatchTheTrafficAndTheChainHoldsAcrossARestart() throws {
        let directory = try TestPKI.mint().directory
        let (http, httpPort) = try ChildProcess.origin(mode: "http")
        let (echo, echoPort) = try ChildProcess.origin(mode: "echo")
        defer { withExtendedLifetime((http, echo)) {} }
        let closed = try FreePort.refusing()
        let curl = Paths.which("curl")
        let python = Paths.which("python3")
        let body = directory + "/body"
        try Data(repeating: 0x61, count: 1000).write(to: URL(fileURLWithPath: body))

        // First run: 3 GETs and a 1000-byte POST over plain HTTP, two tunnels of 5000 and 7000 bytes, one refusal.
        var proxy = try startProxy(directory: directory)
        for _ in 0..<3 {
            let got = try runCommand(curl, ["-sS", "--max-time", "20", "-x", "127.0.0.1:\(proxy.port)", "http://127.0.0.1:\(httpPort)/hello"])
            #expect(got.stdout == "hello from origin")
        }
        let posted = try runCommand(curl, [
            "-sS", "--max-time", "20", "-x", "127.0.0.1:\(proxy.port)", "--data-binary", "@" + body,
            "http://127.0.0.1:\(httpPort)/upload",
        ])
        #expect(posted.stdout.hasPrefix("1000 "))
        for count in [5000, 7000] {
            let tunnel = try runCommand(python, ["-c", Self.echoClient, "\(proxy.port)", "127.0.0.1:\(echoPort)", "\(count)"])
            #expect(tunnel.stdout == "\(count)", "\(tunnel.stderr)")
        }
        _ = try runCommand(curl, ["-s", "--max-time", "20", "-x", "127.0.0.1:\(proxy.port)", "http://127.0.0.1:\(closed)/"])
        try stop(proxy, actions: 7)
        // The first connection to each destination was flagged, once, and logged.
        let firstRunLines = proxy.child.stdoutLines.filter { $0.contains(#""first_seen":true"#) }
        #expect(firstRunLines.count == 2)
        #expect(proxy.child.stderrEventually("agent review-agent connected to a destination it has never connected to (127.0.0.1:\(httpPort))"))
        #expect(proxy.child.stderrEventually("agent review-agent connected to a destination it has never connected to (127.0.0.1:\(echoPort))"))

        // Second run, same state: the baseline remembers, so nothing is new; the chain continues.
        proxy = try startProxy(directory: directory)
        let again = try runCommand(curl, ["-sS", "--max-time", "20", "-x", "127.0.0.1:\(proxy.port)", "http://127.0.0.1:\(httpPort)/hello"])
        #expect(again.stdout == "hello from origin")
        try stop(proxy, actions: 1)
        #expect(!proxy.child.stdoutLines.joined().contains("first_seen"))
        #expect(!proxy.child.stderr.contains("never connected"))

        let audit = directory + "/audit.jsonl"
        // As a shell glob (audit.jsonl*) gives them: the log, its head file and its lock file.
        #expect(FileManager.default.fileExists(atPath: audit + ".lock"))
        let verify = try runCommand(Paths.proxyBinary, ["audit", "verify", audit, audit + ".head", audit + ".lock"])
        #expect(verify.status == 0, "\(verify.stdout)")
        #expect(verify.stdout.hasPrefix("OK 19 lines, seq 1–19"), "\(verify.stdout)")  // 2 starts, 2 stops, 8 actions, 7 closes (a refusal has none)

        let json = try runCommand(Paths.proxyBinary, ["report", "--format", "json", "--since", "1h", audit])
        #expect(json.status == 0, "\(json.stderr)")
        let report = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let chain = try #require(report["chain"] as? [String: Any])
        #expect(chain["intact"] as? Bool == true && chain["lines"] as? Int == 19)
        let agents = try #require(report["agents"] as? [[String: Any]])
        try #require(agents.count == 1)
        let agent = agents[0]
        #expect(agent["agent"] as? String == "review-agent")
        #expect(agent["connections"] as? Int == 7)
        #expect(agent["failed_connections"] as? Int == 1)
        let destinations = try #require(agent["destinations"] as? [[String: Any]])
        let byTarget = Dictionary(destinations.map { ($0["target"] as? String ?? "", $0) }, uniquingKeysWith: { a, _ in a })
        let web = try #require(byTarget["127.0.0.1:\(httpPort)"])
        #expect(web["connections"] as? Int == 5)
        #expect(web["bytes_from_client"] as? Int == 1000)
        #expect(web["bytes_to_client"] as? Int == 4 * 18 + 70)  // "hello from origin\n" ×4, "1000 <sha256>\n"
        #expect(web["inspected"] as? Bool == false && web["new"] as? Bool == true)
        let tunnel = try #require(byTarget["127.0.0.1:\(echoPort)"])
        #expect(tunnel["connections"] as? Int == 2)
        #expect(tunnel["bytes_from_client"] as? Int == 12000 && tunnel["bytes_to_client"] as? Int == 12000)
        #expect(byTarget["127.0.0.1:\(closed)"] == nil)
        let fresh = try #require(agent["new_destinations"] as? [[String: Any]])
        #expect(Set(fresh.compactMap { $0["target"] as? String }) == ["127.0.0.1:\(httpPort)", "127.0.0.1:\(echoPort)"])
        let failures = try #require(agent["failures"] as? [[String: Any]])
        #expect(failures.count == 1 && failures[0]["target"] as? String == "127.0.0.1:\(closed)" && failures[0]["count"] as? Int == 1)
        let daily = try #require(agent["daily"] as? [[String: Any]])
        #expect(daily.reduce(0) { $0 + ($1["connections"] as? Int ?? 0) } == 7)

        // The other forms render the same figures.
        let csv = try runCommand(Paths.proxyBinary, ["report", "--format", "csv", audit])
        #expect(csv.stdout.contains("review-agent,127.0.0.1:\(echoPort),"))
        #expect(csv.stdout.contains(",2,12000,12000,false,true,0,"))
        let table = try runCommand(Paths.proxyBinary, ["report", "--agent", "review-agent", audit])
        #expect(table.stdout.contains("Chain: intact (19 lines"))
        #expect(table.stdout.contains("7 connections to 2 destinations, 1 failed"))
        let other = try runCommand(Paths.proxyBinary, ["report", "--agent", "someone-else", audit])
        #expect(other.stdout.contains("No records in the period."))

        // An edited line: verify names it and fails; the report says the chain is broken.
        var lines = try String(contentsOfFile: audit, encoding: .utf8).components(separatedBy: "\n")
        lines[3] = lines[3].replacingOccurrences(of: "review-agent", with: "other-agent")
        try lines.joined(separator: "\n").write(toFile: audit, atomically: false, encoding: .utf8)
        let broken = try runCommand(Paths.proxyBinary, ["audit", "verify", audit])
        #expect(broken.status == 1)
        #expect(broken.stdout.hasPrefix("BROKEN \(audit):4: seq 4 was changed"), "\(broken.stdout)")
        let brokenReport = try runCommand(Paths.proxyBinary, ["report", audit])
        #expect(brokenReport.stdout.contains("Chain: BROKEN") && brokenReport.status == 1, "\(brokenReport.status)")
        let missing = try runCommand(Paths.proxyBinary, ["report", audit + ".nowhere"])
        #expect(missing.status != 0 && missing.stderr.contains(audit + ".nowhere"), "\(missing)")
    }

    @Test func inspectedRequestsAndInterceptionFailuresAreReported() throws {
        let pki = try TestPKI.mint()
        let untrusted = try TestPKI.mint()  // an origin whose CA the proxy does not trust
        let (origin, originPort) = try ChildProcess.origin(mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        let (stranger, strangerPort) = try ChildProcess.origin(
            mode: "https", cert: untrusted.serverCertificate, key: untrusted.serverKey)
        defer { withExtendedLifetime((origin, stranger)) {} }
        let ca = try InspectionTests.makeCA(in: pki.directory)
        let directory = pki.directory
        let proxy = try startProxy(directory: directory, extra: [
            "KAIZEN_CA_CERT": ca + "/ca.pem", "KAIZEN_CA_KEY": ca + "/ca.key", "KAIZEN_UPSTREAM_CA_FILE": pki.caCertificate,
        ])
        let curl = Paths.which("curl")
        func get(_ url: String, _ more: [String] = []) throws -> CommandResult {
            try runCommand(curl, ["-sS", "--max-time", "20", "-x", "127.0.0.1:\(proxy.port)", "--cacert", ca + "/ca.pem"] + more + [url])
        }
        // One connection with two GETs (curl reuses it for URLs given together), then a POST with a query.
        let two = try get("https://localhost:\(originPort)/hello", ["https://localhost:\(originPort)/hello"])
        #expect(two.stdout == "hello from origin\nhello from origin", "\(two.stderr)")
        let post = try get("https://localhost:\(originPort)/upload?token=secret", ["--data-binary", "abc"])
        #expect(post.stdout.hasPrefix("3 "), "\(post.stderr)")
        let refused = try get("https://localhost:\(strangerPort)/hello")
        #expect(refused.status != 0)
        try stop(proxy, actions: 4)

        let json = try runCommand(Paths.proxyBinary, ["report", "--format", "json", directory + "/audit.jsonl"])
        let report = try #require(try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])
        let agent = try #require((report["agents"] as? [[String: Any]])?.first)
        let destinations = try #require(agent["destinations"] as? [[String: Any]])
        let web = try #require(destinations.first { $0["target"] as? String == "localhost:\(originPort)" })
        #expect(web["inspected"] as? Bool == true)
        #expect(web["connections"] as? Int == 2)
        let requests = try #require(web["requests"] as? [[String: Any]])
        #expect(requests.count == 2)
        #expect(requests.first { $0["method"] as? String == "GET" && $0["path"] as? String == "/hello" }?["count"] as? Int == 2)
        #expect(requests.first { $0["method"] as? String == "POST" && $0["path"] as? String == "/upload" }?["count"] as? Int == 1)
        #expect(!json.stdout.contains("token=secret"))  // the query is not kept by default
        let failures = try #require(agent["interception_failures"] as? [[String: Any]])
        #expect(failures.count == 1)
        #expect(failures.first?["target"] as? String == "localhost:\(strangerPort)")
        #expect((failures.first?["reason"] as? String)?.contains("upstream not trusted") == true, "\(failures)")
        let start = try String(contentsOfFile: directory + "/audit.jsonl", encoding: .utf8).prefix { $0 != "\n" }
        #expect(start.contains(#""mode":"inspection""#))
    }

    /// Runs wherever chromium is installed, and always as root (CI), where `make test` installs it.
    static let chromiumExpected = FileManager.default.isExecutableFile(atPath: Paths.which("chromium")) || getuid() == 0

    @Test(.enabled(if: chromiumExpected, "needs chromium (make test installs it when run as root)"))
    func htmlReportRendersInHeadlessChromium() throws {
        let chromium = Paths.which("chromium")
        let directory = try TestPKI.mint().directory
        let (http, httpPort) = try ChildProcess.origin(mode: "http")
        defer { withExtendedLifetime(http) {} }
        let proxy = try startProxy(directory: directory)
        for path in ["/hello", "/hello", "/missing"] {
            _ = try runCommand(Paths.which("curl"), ["-s", "--max-time", "20", "-x", "127.0.0.1:\(proxy.port)", "http://127.0.0.1:\(httpPort)\(path)"])
        }
        try stop(proxy, actions: 3)
        let page = directory + "/report.html"
        let result = try runCommand(Paths.proxyBinary, ["report", "--format", "html", "-o", page, directory + "/audit.jsonl"])
        #expect(result.status == 0, "\(result.stderr)")
        let html = try String(contentsOfFile: page, encoding: .utf8)
        // Self-contained: no scripts, no external references.
        #expect(!html.contains("<script") && !html.contains("http://") && !html.contains("https://") && !html.contains("src="))
        #expect(html.contains("<svg") && html.contains("127.0.0.1:\(httpPort)"))

        let screenshot = directory + "/report.png"
        let shot = try runCommand(chromium, [
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
            "--user-data-dir=\(directory)/chromium", "--window-size=1200,1100", "--screenshot=\(screenshot)",
            "file://\(page)",
        ], timeout: 120)
        #expect(shot.status == 0, "\(shot.stderr)")
        let png = try Data(contentsOf: URL(fileURLWithPath: screenshot))
        #expect(png.starts(with: [0x89, 0x50, 0x4e, 0x47]))
        #expect(png.count > 20_000, "a blank page compresses to a few kB")
        // Kept for a person to look at: the test log names it.
        let kept = Paths.packageRoot.appendingPathComponent(".build/report-screenshot.png").path
        try? FileManager.default.removeItem(atPath: kept)
        try? FileManager.default.copyItem(atPath: screenshot, toPath: kept)
        print("report screenshot: \(kept)")
    }
}
