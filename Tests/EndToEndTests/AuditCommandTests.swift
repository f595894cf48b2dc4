import Foundation
import TestSupport
import Testing

/// `audit verify` and `report` as a reviewer runs them, on logs the real proxy wrote: what they claim about the
/// end of the log, how they name a file they cannot read, and where `report -o` will and will not write.
@Suite struct AuditCommandTests {
    /// A directory with a log the proxy wrote in `runs` runs (a start and a stop record each), and the head file
    /// as it was after each run.
    static func makeLog(runs: Int) throws -> (directory: String, log: String, heads: [Data]) {
        let directory = FileManager.default.temporaryDirectory.path + "/kz-audit-cli-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let log = directory + "/audit.jsonl"
        var heads: [Data] = []
        for _ in 0..<runs {
            let proxy = try ChildProcess(
                Paths.proxyBinary, ["--local", "--port", "0", "--admin-listen", "off", "--audit-log", log],
                environment: ProxyEnvironment.make([:]))
            _ = try proxy.listeningPort()
            proxy.signal(SIGTERM)
            #expect(try proxy.waitForExit(timeout: 30) == 0)
            heads.append(try Data(contentsOf: URL(fileURLWithPath: log + ".head")))
        }
        return (directory, log, heads)
    }

    /// Lines after the head file's seq (a crash before the next fsync, or a line someone appended) keep the chain
    /// intact, exit 0, but are never called confirmed: verify and report say which lines the head does not cover.
    @Test func linesPastTheHeadFileAreSaidToBeUnconfirmed() throws {
        let (directory, log, heads) = try Self.makeLog(runs: 2)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let confirmed = try runCommand(Paths.proxyBinary, ["audit", "verify", log, log + ".head"])
        #expect(confirmed.status == 0 && confirmed.stdout == "OK 4 lines, seq 1–4, 1 file, end confirmed by the head file", "\(confirmed)")

        try heads[0].write(to: URL(fileURLWithPath: log + ".head"))  // the head as the first run left it: seq 2
        let verify = try runCommand(Paths.proxyBinary, ["audit", "verify", log, log + ".head"])
        #expect(verify.status == 0, "\(verify)")
        #expect(verify.stdout == "OK 4 lines, seq 1–4, 1 file; seq 3–4 come after the head file's seq 2 and are not confirmed by it")
        let table = try runCommand(Paths.proxyBinary, ["report", log])
        #expect(table.status == 0 && table.stdout.contains(
            "Chain: intact (4 lines, seq 1–4; seq 3–4 come after the head file's seq 2 and are not confirmed by it)"), "\(table)")
        #expect(!table.stdout.contains("end confirmed"))
        let json = try runCommand(Paths.proxyBinary, ["report", "--format", "json", log])
        let chain = try #require((try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any])?["chain"] as? [String: Any])
        #expect(chain["confirmed_through"] as? Int == 2 && chain["last_seq"] as? Int == 4)
        let html = try runCommand(Paths.proxyBinary, ["report", "--format", "html", log])
        #expect(html.stdout.contains("seq 3–4 come after the head file&#39;s seq 2 and are not confirmed by it"))
    }

    /// A file that cannot be read is named, with what is wrong in plain words, and exit status 2.
    @Test func aFileThatCannotBeReadIsNamed() throws {
        let (directory, log, _) = try Self.makeLog(runs: 1)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let cases: [([String], String)] = [
            ([directory + "/missing.jsonl"], "\(directory)/missing.jsonl does not exist"),
            ([directory], "\(directory) is a directory, not an audit log file"),
            (["/dev/null"], "/dev/null is not a regular file (a device, socket or pipe), not an audit log file"),
            ([log + ".head"], "\(log).head is a head file, not the log: give the log files too (audit.jsonl*)"),
        ]
        for (files, problem) in cases {
            let verify = try runCommand(Paths.proxyBinary, ["audit", "verify"] + files)
            #expect(verify.status == 2 && verify.stderr == "kaizen-egress: audit verify: \(problem)\n", "\(verify)")
            let report = try runCommand(Paths.proxyBinary, ["report"] + files)
            #expect(report.status == 2 && report.stderr == "kaizen-egress: report: \(problem)\n", "\(report)")
        }
    }

    /// `report -o` creates its file 0600 and replaces one only with --force; never an audit file it reads (or its
    /// head file), and never through a symbolic link, which could point at the log.
    @Test func reportOutputNeverDestroysTheLog() throws {
        let (directory, log, _) = try Self.makeLog(runs: 1)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let original = try Data(contentsOf: URL(fileURLWithPath: log))
        let head = try Data(contentsOf: URL(fileURLWithPath: log + ".head"))
        let out = directory + "/report.txt"
        func mode(_ path: String) throws -> Int? {
            (try FileManager.default.attributesOfItem(atPath: path)[.posixPermissions] as? NSNumber)?.intValue
        }

        let created = try runCommand(Paths.proxyBinary, ["report", "-o", out, log])
        #expect(created.status == 0, "\(created)")
        #expect(try String(contentsOfFile: out, encoding: .utf8).hasPrefix("Kaizen egress report"))
        #expect(try mode(out) == 0o600)

        try "keep me".write(toFile: out, atomically: false, encoding: .utf8)
        #expect(chmod(out, 0o644) == 0)
        let refused = try runCommand(Paths.proxyBinary, ["report", "-o", out, log])
        #expect(refused.status == 2 && refused.stderr == "kaizen-egress: report: \(out) already exists: give --force to replace it, or another path\n", "\(refused)")
        #expect(try String(contentsOfFile: out, encoding: .utf8) == "keep me")
        let forced = try runCommand(Paths.proxyBinary, ["report", "--force", "-o", out, log])
        #expect(forced.status == 0, "\(forced)")
        #expect(try String(contentsOfFile: out, encoding: .utf8).hasPrefix("Kaizen egress report"))
        #expect(try mode(out) == 0o600)

        for target in [log, log + ".head"] {
            let result = try runCommand(Paths.proxyBinary, ["report", "--force", "-o", target, log])
            #expect(result.status == 2 && result.stderr.contains("one of the audit files the report reads"), "\(result)")
        }
        let link = directory + "/link.txt"
        try FileManager.default.createSymbolicLink(atPath: link, withDestinationPath: log)
        let throughLink = try runCommand(Paths.proxyBinary, ["report", "--force", "-o", link, log])
        #expect(throughLink.status == 2 && throughLink.stderr.contains("is a symbolic link, which is never followed"), "\(throughLink)")
        let unforcedLink = try runCommand(Paths.proxyBinary, ["report", "-o", link, log])
        #expect(unforcedLink.status == 2 && unforcedLink.stderr.contains("already exists"), "\(unforcedLink)")
        #expect(try Data(contentsOf: URL(fileURLWithPath: log)) == original)
        #expect(try Data(contentsOf: URL(fileURLWithPath: log + ".head")) == head)
    }
}
