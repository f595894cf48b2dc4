import ArgumentParser
import Audit
import ControlPlane
import Foundation

/// `kaizen-egress audit verify FILE…`: checks the audit log's hash chain.
struct AuditCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "audit",
        abstract: "Check the tamper-evident audit log (KAIZEN_AUDIT_LOG).",
        subcommands: [Verify.self]
    )

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Check the hash chain and sequence of audit log files; print OK or the first broken line.",
            discussion: """
                Give the current file and its rotated files (audit.jsonl audit.jsonl.0000…), in any order. The \
                head file beside the current one (audit.jsonl.head) is used to detect lines cut from the end; \
                lines after its seq are intact but said not to be confirmed by it. \
                Exit status 0: intact (confirmed or not); 1: broken; 2: a file could not be read.
                """
        )

        @Flag(help: "Accept a log that does not start at seq 1 (its earlier files were archived elsewhere).")
        var continues = false

        @Argument(help: "Audit log files.")
        var files: [String]

        func run() throws {
            guard !files.isEmpty else { fail("audit verify: give the audit log files to check") }
            let report: AuditVerifier.Report
            do {
                report = try AuditVerifier(allowContinuation: continues).verify(files: files)
            } catch {
                fail("audit verify: \(error)")  // names the file and what is wrong with it
            }
            if let failure = report.failure {
                print("BROKEN \(failure)")
                throw ExitCode(1)
            }
            let range = report.firstSequence.map { "seq \($0)–\(report.lastSequence ?? $0)" } ?? "no lines"
            print("OK \(report.lines) lines, \(range), \(report.files.count) file\(report.files.count == 1 ? "" : "s")\(report.endSummary)")
            for note in report.notes { print("note: \(note)") }
        }
    }
}

/// `kaizen-egress report [--since 7d] [--agent NAME] [--format table|json|csv|html] FILE…`
struct ReportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "report",
        abstract: "Summarise audit log files for a review: destinations per agent, new ones, failures, volume per day.",
        discussion: """
            The chain is verified first and its status heads the report. --format html writes one self-contained \
            page (no scripts, no external assets) that can be opened offline. The report is written either way; \
            the exit status is 1 when the chain is broken, so a script cannot take a damaged log for a sound one.
            """
    )

    @Option(help: "Only records since then: a duration back from now (7d, 24h, 30m) or a date (2026-11-01, 2026-11-01T12:00:00Z).")
    var since: String?

    @Option(name: .customLong("agent"), help: "Only this agent.")
    var agentName: String?

    @Option(help: "table, json, csv or html.")
    var format: String = "table"

    @Option(name: .shortAndLong, help: "Write the report to this file (created 0600; an existing one is refused) instead of standard output.")
    var output: String?

    @Flag(help: "Replace the -o file if it exists (never one of the audit files given, never through a symbolic link).")
    var force = false

    @Flag(help: "Accept a log that does not start at seq 1 (its earlier files were archived elsewhere).")
    var continues = false

    @Argument(help: "Audit log files.")
    var files: [String]

    func run() throws {
        guard let format = ReportFormat(rawValue: format.lowercased()) else {
            fail("report: --format \(format) is not known: use table, json, csv or html")
        }
        guard !files.isEmpty else { fail("report: give the audit log files to summarise") }
        let now = WallClock.nowMillis()
        var sinceText: String? = nil
        if let since {
            guard let millis = Self.parseSince(since, now: now) else {
                fail("report: --since \(since) is not a duration or a date: use 7d, 24h, 30m or 2026-11-01")
            }
            sinceText = WallClock.rfc3339(unixMillis: millis)
        }
        let report: AuditReport
        do {
            report = try AuditReportBuilder(since: sinceText, agent: agentName)
                .build(files: files, now: WallClock.rfc3339(unixMillis: now), allowContinuation: continues)
        } catch {
            fail("report: \(error)")  // an AuditReadError names the file and what is wrong with it
        }
        let text = try format.render(report)
        if let output {
            if let problem = Self.write(Array(text.utf8), to: output, replacing: force, keeping: files) {
                fail("report: \(problem)")
            }
        } else {
            FileHandle.standardOutput.write(Data(text.utf8))
        }
        if !report.chain.intact { throw ExitCode(1) }
    }

    /// Writes the report to `path`, 0600 (it names the log's paths and what agents reached), or says why not. A
    /// file there is refused unless `replacing`, and even then when it is one of the audit files in `keeping` (or
    /// their head files): a slip of `-o` must not destroy the evidence the report is about. A symbolic link is never
    /// followed (it could point at the log), and nothing is truncated before the file is known to be safe to replace.
    static func write(_ bytes: [UInt8], to path: String, replacing: Bool, keeping: [String]) -> String? {
        let flags = O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | (replacing ? 0 : O_EXCL)
        let fd = open(path, flags, 0o600)
        guard fd >= 0 else {
            switch errno {
            case EEXIST: return "\(path) already exists: give --force to replace it, or another path"
            case ELOOP: return "\(path) is a symbolic link, which is never followed: give the path of the file itself"
            default: return "cannot create \(path): \(String(cString: strerror(errno)))"
            }
        }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return "cannot write \(path): \(String(cString: strerror(errno)))" }
        guard info.st_mode & S_IFMT == S_IFREG else { return "\(path) is not a regular file: give a file path" }
        for input in keeping + keeping.map({ $0 + ".head" }) {
            var other = stat()
            if stat(input, &other) == 0, other.st_dev == info.st_dev, other.st_ino == info.st_ino {
                return "\(path) is \(input), one of the audit files the report reads: give another path"
            }
        }
        guard ftruncate(fd, 0) == 0, fchmod(fd, 0o600) == 0 else {
            return "cannot write \(path): \(String(cString: strerror(errno)))"
        }
        var offset = 0
        while offset < bytes.count {
            let written = bytes[offset...].withUnsafeBytes { Foundation.write(fd, $0.baseAddress, $0.count) }
            if written < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                return "cannot write \(path): \(String(cString: strerror(errno)))"
            }
            offset += written
        }
        return nil
    }

    /// Unix milliseconds for `7d`, `24h`, `30m`, `90s`, `2026-11-01` or an RFC 3339 instant.
    static func parseSince(_ text: String, now: UInt64) -> UInt64? {
        let units: [Character: UInt64] = ["s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000]
        if let unit = text.last, let scale = units[unit], let amount = UInt64(text.dropLast()) {
            let (back, overflow) = amount.multipliedReportingOverflow(by: scale)
            return overflow || back > now ? 0 : now - back
        }
        let day = DateFormatter()
        day.locale = Locale(identifier: "en_US_POSIX")
        day.timeZone = TimeZone(identifier: "UTC")
        day.dateFormat = "yyyy-MM-dd"
        if let date = day.date(from: text) { return UInt64(max(0, date.timeIntervalSince1970 * 1000)) }
        let instant = ISO8601DateFormatter()
        if let date = instant.date(from: text) { return UInt64(max(0, date.timeIntervalSince1970 * 1000)) }
        instant.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = instant.date(from: text) { return UInt64(max(0, date.timeIntervalSince1970 * 1000)) }
        return nil
    }
}
