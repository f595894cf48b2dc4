import EgressProxy
import Foundation
import TestSupport
import Testing

/// The `kaizen-egress` binary as a user runs it: refusals, local mode on stdout, the audit file, SIGTERM.
@Suite struct CommandLineTests {
    func environment(_ extra: [String: String]) -> [String: String] {
        ProxyEnvironment.make(extra)
    }

    /// The process holds secrets (the API key in its environment, the CA key, tokens, decrypted traffic): it makes no
    /// core dump, and the user it runs as cannot attach to it or read its environment (not dumpable: the kernel then
    /// gives its /proc files to root). Run as an unprivileged user, as in production.
    @Test(.enabled(if: getuid() == 0 && FileManager.default.isExecutableFile(atPath: Paths.which("setpriv")), "needs root and setpriv"))
    func theProcessMakesNoCoreDumpAndCannotBeReadByItsOwnUser() throws {
        let state = FileManager.default.temporaryDirectory.appendingPathComponent("kaizen-dumpable-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: false)
        defer { try? FileManager.default.removeItem(atPath: state) }
        chown(state, 1337, 1337)
        let proxy = try ChildProcess(
            Paths.which("setpriv"),
            ["--reuid", "1337", "--regid", "1337", "--clear-groups", Paths.proxyBinary, "--local", "--port", "0"],
            environment: ProxyEnvironment.make(["KAIZEN_STATE_DIR": state, "KAIZEN_ADMIN_LISTEN": "off"]))
        _ = try proxy.listeningPort()
        var info = stat()
        #expect(stat("/proc/\(proxy.pid)/environ", &info) == 0 && info.st_uid == 0, "owned by \(info.st_uid)")
        let limits = try String(contentsOfFile: "/proc/\(proxy.pid)/limits", encoding: .utf8)
        let core = limits.split(separator: "\n").first { $0.hasPrefix("Max core file size") }.map(String.init) ?? ""
        #expect(core.split(separator: " ", omittingEmptySubsequences: true).dropFirst(4).prefix(2) == ["0", "0"], "\(core)")
    }

    @Test func withoutAKeyOrLocalModeItRefusesWithOneLine() throws {
        let child = try ChildProcess(Paths.proxyBinary, [], environment: environment([:]))
        #expect(try child.waitForExit(timeout: 30) == 2)
        let lines = child.stderr.split(separator: "\n")
        #expect(lines.count == 1)
        #expect(lines.first?.contains("KAIZEN_API_KEY") == true)
        #expect(lines.first?.contains("--local") == true)
    }

    @Test(arguments: [
        (["--local", "--port", "99999"], "PORT"), (["--local", "--listen", "example.org"], "KAIZEN_LISTEN"),
        (["--local", "--api-url", "http://api.getkaizen.io"], "KAIZEN_API_URL"),
        (["--local", "--audit-log", "/nonexistent-dir/audit.jsonl"], "KAIZEN_AUDIT_LOG"),
        (["--local", "--state-dir", "/proc/kaizen-state"], "KAIZEN_STATE_DIR"),
        (["--local", "--audit-max-bytes", "10"], "KAIZEN_AUDIT_MAX_BYTES"),
        (["--local", "--audit-fsync", "often"], "KAIZEN_AUDIT_FSYNC"),
        (["--local", "--baseline-learn", "a while"], "KAIZEN_BASELINE_LEARN"),
        (["--local", "--baseline-max", "lots"], "KAIZEN_BASELINE_MAX"),
        (["--local", "--event-loops", "0"], "KAIZEN_EVENT_LOOPS"),
    ])
    func badFlagsRefuseNamingTheVariable(_ arguments: [String], _ variable: String) throws {
        let child = try ChildProcess(Paths.proxyBinary, arguments, environment: environment([:]))
        #expect(try child.waitForExit(timeout: 30) == 2)
        let lines = child.stderr.split(separator: "\n")
        #expect(lines.count == 1, "\(child.stderr)")
        #expect(lines.first?.hasPrefix("kaizen-egress: \(variable)") == true, "\(child.stderr)")
    }

    /// A log with a second name (a hard link) is refused with one line that says how to find the other names.
    @Test func aHardLinkedAuditLogRefusesWithOneLine() throws {
        let directory = FileManager.default.temporaryDirectory.path + "/kz-hardlink-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = directory + "/audit.jsonl"
        #expect(FileManager.default.createFile(atPath: log, contents: nil, attributes: [.posixPermissions: 0o600]))
        #expect(link(log, directory + "/copy.jsonl") == 0)
        let child = try ChildProcess(
            Paths.proxyBinary, ["--local", "--port", "0", "--admin-listen", "off", "--audit-log", log],
            environment: environment([:]))
        #expect(try child.waitForExit(timeout: 30) == 2)
        #expect(child.stderr == "kaizen-egress: KAIZEN_AUDIT_LOG: \(log) has 2 hard links, and a second name would let another proxy write the same chain: remove the other names (find / -xdev -samefile \(log) lists them) or set KAIZEN_AUDIT_LOG (or --audit-log) to a new file\n")
    }

    /// Lines cut from the end of the audit log show against its head file only as long as the head file is not
    /// rewritten: a restart refuses to continue such a log, with one line, and leaves the files as they were.
    @Test func anAuditLogCutFromTheEndRefusesWithOneLine() throws {
        let directory = FileManager.default.temporaryDirectory.path + "/kz-cut-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let log = directory + "/audit.jsonl"
        let arguments = ["--local", "--port", "0", "--admin-listen", "off", "--audit-log", log]
        let first = try ChildProcess(Paths.proxyBinary, arguments, environment: environment([:]))
        _ = try first.listeningPort()
        first.signal(SIGTERM)
        #expect(try first.waitForExit(timeout: 30) == 0)
        // Its start and stop records, the head file at seq 2: cut the stop record.
        let lines = try String(contentsOfFile: log, encoding: .utf8).split(separator: "\n")
        try #require(lines.count == 2)
        let cut = lines[0] + "\n"
        try cut.write(toFile: log, atomically: false, encoding: .utf8)
        let second = try ChildProcess(Paths.proxyBinary, arguments, environment: environment([:]))
        #expect(try second.waitForExit(timeout: 30) == 2)
        #expect(second.stderr == "kaizen-egress: KAIZEN_AUDIT_LOG: \(log) ends at seq 1 but its head file \(log).head records seq 2: lines were removed from the end of the log, and continuing it would hide that: keep the evidence: move the log, its rotated files and its head file aside (to start a new log), or restore the missing lines\n")
        #expect(try String(contentsOfFile: log, encoding: .utf8) == cut)
        let verify = try runCommand(Paths.proxyBinary, ["audit", "verify", log, log + ".head"])
        #expect(verify.status == 1 && verify.stdout.contains("lines were removed from the end"), "\(verify.stdout)")
        // Moved aside, a new log starts.
        #expect(rename(log, directory + "/cut.jsonl") == 0 && rename(log + ".head", directory + "/cut.jsonl.head") == 0)
        let third = try ChildProcess(Paths.proxyBinary, arguments, environment: environment([:]))
        _ = try third.listeningPort()
        third.signal(SIGTERM)
        #expect(try third.waitForExit(timeout: 30) == 0)
    }

    @Test func aTakenPortRefusesWithOneLine() throws {
        let blocker = try Blackhole()  // a listener on a loopback port
        let child = try ChildProcess(
            Paths.proxyBinary, ["--local", "--port", "\(blocker.port)"], environment: environment([:]))
        #expect(try child.waitForExit(timeout: 30) == 2)
        #expect(child.stderr == "kaizen-egress: PORT: cannot listen on 127.0.0.1 port \(blocker.port): address already in use: set PORT (or --port) to a free port, or stop what uses it\n")
        withExtendedLifetime(blocker) {}
    }

    @Test func theKeyNeverAppearsWhenItIsRefused() throws {
        let canary = "kz_live_CANARY_must_not_leak_42"
        let child = try ChildProcess(
            Paths.proxyBinary, [], environment: environment(["KAIZEN_API_KEY": canary, "KAIZEN_API_URL": "http://example.org"]))
        #expect(try child.waitForExit(timeout: 30) == 2)
        #expect(child.stderrEventually("KAIZEN_API_URL"))
        #expect(!child.stderr.contains(canary))
        #expect(child.stdoutLines.isEmpty)
    }

    @Test func localModeWritesActionLinesToStdoutAndTheAuditFile() async throws {
        let pki = try TestPKI.mint()
        let (origin, originPort) = try ChildProcess.origin(
            mode: "https", cert: pki.serverCertificate, key: pki.serverKey)
        defer { withExtendedLifetime(origin) {} }
        let audit = pki.directory + "/audit.jsonl"
        let proxy = try ChildProcess(
            Paths.proxyBinary,
            ["--port", "0", "--agent", "cli-agent"],
            environment: environment([
                "KAIZEN_LOCAL": "1", "KAIZEN_AUDIT_LOG": audit, "KAIZEN_STATE_DIR": pki.directory + "/state",
            ])
        )
        let port = try proxy.listeningPort()

        let result = try runCommand(Paths.which("curl"), [
            "-sS", "--max-time", "20", "-x", "http://127.0.0.1:\(port)", "--cacert", pki.caCertificate,
            "https://localhost:\(originPort)/hello",
        ])
        #expect(result.stdout == "hello from origin")

        let actionLine = try proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
        let object = try JSONSerialization.jsonObject(with: Data(actionLine.utf8)) as? [String: Any]
        #expect(object?["schema_version"] as? String == "1")
        #expect(object?["agent"] as? String == "cli-agent")
        let action = object?["action"] as? [String: Any]
        #expect(action?["kind"] as? String == "connect")
        #expect(action?["target"] as? String == "localhost:\(originPort)")
        let metadata = action?["metadata"] as? [String: Any]
        #expect(metadata?["sni"] as? String == "localhost")
        #expect(metadata?["source"] as? String == "egress")
        let verdict = object?["verdict"] as? [String: Any]
        #expect(verdict?["decision"] as? String == "allow")
        let closeLine = try proxy.waitForLine(timeout: 20) { $0.contains("\"close\"") }

        // SIGTERM: a clean exit. The audit file holds the same records, chained, between the log's own start
        // and stop records, mode 0600, and `audit verify` accepts it.
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
        let auditLines = try String(contentsOfFile: audit, encoding: .utf8).split(separator: "\n").map(String.init)
        try #require(auditLines.count == 4)
        #expect(auditLines[0].hasPrefix(#"{"seq":1,"prev_sha256":"0000"#) && auditLines[0].contains(#""event":"start""#))
        #expect(auditLines[0].contains(#""mode":"destination-only""#))
        func record(_ chained: String) -> String {
            guard let start = chained.range(of: #""schema_version""#) else { return chained }
            return "{" + chained[start.lowerBound...]
        }
        #expect(auditLines[1].hasPrefix(#"{"seq":2,"prev_sha256":""#))
        #expect(record(auditLines[1]) == actionLine)
        #expect(record(auditLines[2]) == closeLine)
        #expect(auditLines[3].contains(#""event":"stop""#))
        let verify = try runCommand(Paths.proxyBinary, ["audit", "verify", audit])
        #expect(verify.status == 0 && verify.stdout.hasPrefix("OK 4 lines"), "\(verify.stdout)")
        let attributes = try FileManager.default.attributesOfItem(atPath: audit)
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o600)
        #expect(!proxy.stderr.contains("error"))
    }

    @Test func aKeyInLocalModeIsNeitherLoggedNorWritten() async throws {
        let canary = "kz_live_CANARY_local_mode_77"
        let directory = try TestPKI.mint().directory
        let keyFile = directory + "/api-key"
        try canary.write(toFile: keyFile, atomically: true, encoding: .utf8)
        let audit = directory + "/audit.jsonl"
        // The control plane is a closed loopback port: the reporter retries and spools, and must not leak.
        let controlPlane = try FreePort.refusing()
        let proxy = try ChildProcess(
            Paths.proxyBinary,
            [
                "--local", "--port", "0", "--api-key-file", keyFile, "--audit-log", audit, "--log-level", "trace",
                "--api-url", "http://127.0.0.1:\(controlPlane)", "--spool-dir", directory + "/spool",
            ],
            environment: environment([:])
        )
        let port = try proxy.listeningPort()
        let closed = try FreePort.refusing()
        _ = try runCommand(Paths.which("curl"), [
            "-s", "--max-time", "20", "-x", "http://127.0.0.1:\(port)", "-U", "agent:\(canary)",
            "http://127.0.0.1:\(closed)/",
        ])
        _ = try proxy.waitForLine(timeout: 20) { $0.contains("\"action\"") }
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
        #expect(!proxy.stderr.contains(canary))
        #expect(!proxy.stdoutLines.joined().contains(canary))
        #expect(!(try String(contentsOfFile: audit, encoding: .utf8)).contains(canary))
        let spooled = try FileManager.default.contentsOfDirectory(atPath: directory + "/spool")
        for file in spooled {
            #expect(!(try String(decoding: Data(contentsOf: URL(fileURLWithPath: directory + "/spool/" + file)), as: UTF8.self)).contains(canary))
        }
        // The Proxy-Authorization header (base64 of agent:key) is not echoed anywhere either.
        let basic = Data("agent:\(canary)".utf8).base64EncodedString()
        #expect(!proxy.stderr.contains(basic) && !proxy.stdoutLines.joined().contains(basic))
    }

    @Test func helpListsEveryVariable() throws {
        let result = try runCommand(Paths.proxyBinary, ["run", "--help"])
        #expect(result.status == 0)
        for key in ConfigurationKey.all {
            #expect(result.stdout.contains(key.variable), "\(key.variable)")
            #expect(result.stdout.contains(key.flag), "\(key.flag)")
        }
        // With no subcommand the proxy runs, and says where its options are listed.
        #expect(try runCommand(Paths.proxyBinary, ["--help"]).stdout.contains("kaizen-egress run --help"))
    }

    /// `--event-loops` (or `KAIZEN_EVENT_LOOPS`, which wins over SwiftNIO's own `NIO_SINGLETON_GROUP_LOOP_COUNT`)
    /// is the number of event-loop threads the running proxy has; unset, SwiftNIO's count applies.
    @Test(arguments: [
        (["--event-loops", "3"], [String: String](), 3),
        ([], ["KAIZEN_EVENT_LOOPS": "1", "NIO_SINGLETON_GROUP_LOOP_COUNT": "2"], 1),
        ([], ["NIO_SINGLETON_GROUP_LOOP_COUNT": "2"], 2),
    ])
    func theEventLoopSettingIsTheNumberOfLoopThreads(_ arguments: [String], _ extra: [String: String], _ loops: Int) throws {
        let proxy = try ChildProcess(
            Paths.proxyBinary, ["--local", "--port", "0"] + arguments, environment: environment(extra))
        _ = try proxy.listeningPort()
        let tasks = try FileManager.default.contentsOfDirectory(atPath: "/proc/\(proxy.pid)/task")
        let names = tasks.compactMap { try? String(contentsOfFile: "/proc/\(proxy.pid)/task/\($0)/comm", encoding: .utf8) }
        #expect(names.filter { $0.hasPrefix("NIO-SGLTN-") }.count == loops, "\(names.sorted())")
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
    }

    @Test func probeExitsZeroOnlyWhileTheProxyListens() throws {
        let proxy = try ChildProcess(Paths.proxyBinary, ["--local", "--port", "0"], environment: environment([:]))
        let port = try proxy.listeningPort()
        #expect(try runCommand(Paths.proxyBinary, ["probe", "\(port)"]).status == 0)
        proxy.signal(SIGTERM)
        #expect(try proxy.waitForExit(timeout: 30) == 0)
        #expect(try runCommand(Paths.proxyBinary, ["probe", "\(port)"]).status == 1)
    }
}
