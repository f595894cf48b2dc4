import Audit
import ControlPlane
import Foundation
import Logging
import OpenSSLTLS
import PropertyBased
import TestSupport
import Testing

/// The audit log's chain as a reviewer relies on it: an untouched log verifies, and every kind of tampering the
/// issue names (a flipped byte, a deleted line, two lines swapped, the file cut short) is found, every time.
@Suite struct AuditChainTests {
    /// A log of `count` records written by the real writer, with its head file; the records carry hostile values.
    static func writeLog(records count: Int, in directory: String, maxBytes: Int64 = 0) throws -> AuditPaths {
        let paths = AuditPaths(current: directory + "/audit.jsonl")
        var writer = try AuditFileWriter(paths: paths, maxBytes: maxBytes)
        var batch: [[UInt8]] = []
        for index in 0..<count {
            var json = JSONWriter()
            sampleAction(index: index).writeJSON(to: &json)
            batch.append(json.take())
            if batch.count == 7 {
                try writer.append(batch)
                batch.removeAll()
            }
        }
        try writer.append(batch)
        try writer.sync(now: "2026-11-26T00:00:00.000Z")
        return paths
    }

    static func sampleAction(index: Int) -> ConnectAction {
        let hosts = ["example.org", "a\"b\\c\u{2028}d", "x\u{0}y\n{\"seq\":1}", "ünïcødé.test", String(repeating: "z", count: 300)]
        var metadata = ConnectMetadata(
            eventID: EventID.generate(), transport: .connect, host: hosts[index % hosts.count], port: 443,
            client: "127.0.0.1:5000", startedAt: "2026-11-26T00:00:00.000Z", outcome: .connected
        )
        metadata.sni = hosts[(index + 1) % hosts.count]
        metadata.tls = true
        return ConnectAction(agent: "egress-agent", target: "\(hosts[index % hosts.count]):443", metadata: metadata)
    }

    static func temporaryDirectory() throws -> String {
        let path = NSTemporaryDirectory() + "audit-test-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        return path
    }

    /// Verifies `bytes` as the log file, with the original head file beside it.
    static func verify(_ bytes: [UInt8], head: Data) throws -> AuditVerifier.Report {
        let directory = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/audit.jsonl"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        try head.write(to: URL(fileURLWithPath: path + ".head"))
        return try AuditVerifier().verify(files: [path])
    }

    struct Fixture {
        var bytes: [UInt8]
        var head: Data
        var lines: [ArraySlice<UInt8>] {
            bytes.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).dropLast().map { $0 }
        }

        static func make(records: Int = 40) throws -> Fixture {
            let directory = try temporaryDirectory()
            defer { try? FileManager.default.removeItem(atPath: directory) }
            let paths = try writeLog(records: records, in: directory)
            return Fixture(
                bytes: [UInt8](try Data(contentsOf: URL(fileURLWithPath: paths.current))),
                head: try Data(contentsOf: URL(fileURLWithPath: paths.head))
            )
        }

        static func join(_ lines: [ArraySlice<UInt8>]) -> [UInt8] {
            lines.reduce(into: []) { $0 += $1; $0.append(UInt8(ascii: "\n")) }
        }
    }

    @Test func untouchedLogVerifies() throws {
        let fixture = try Fixture.make()
        let report = try Self.verify(fixture.bytes, head: fixture.head)
        #expect(report.intact, "\(String(describing: report.failure))")
        #expect(report.lines == 40)
        #expect(report.firstSequence == 1 && report.lastSequence == 40)
        #expect(report.headChecked)
        // Every line is still one JSON object that parses, hostile values and all.
        for line in fixture.lines {
            #expect((try? JSONSerialization.jsonObject(with: Data(line))) is [String: Any])
        }
    }

    @Test func flippedByteIsFound() async throws {
        let fixture = try Fixture.make()
        await propertyCheck(count: 300, input: Gen.int(in: 0...Int(Int32.max)), Gen.int(in: 1...255)) { position, mask in
            var bytes = fixture.bytes
            let offset = position % bytes.count
            bytes[offset] ^= UInt8(mask)
            let report = try? Self.verify(bytes, head: fixture.head)
            #expect(report?.intact == false, "byte \(offset) ^ \(mask) went unnoticed")
        }
    }

    @Test func deletedLineIsFound() async throws {
        let fixture = try Fixture.make()
        let lines = fixture.lines
        await propertyCheck(count: 100, input: Gen.int(in: 0...(lines.count - 1))) { index in
            var edited = lines
            edited.remove(at: index)
            let report = try? Self.verify(Fixture.join(edited), head: fixture.head)
            #expect(report?.intact == false, "deleting line \(index + 1) went unnoticed")
        }
    }

    @Test func swappedLinesAreFound() async throws {
        let fixture = try Fixture.make()
        let lines = fixture.lines
        await propertyCheck(count: 200, input: Gen.int(in: 0...(lines.count - 1)), Gen.int(in: 1...(lines.count - 1))) {
            first, distance in
            var edited = lines
            let second = (first + distance) % lines.count
            edited.swapAt(first, second)
            let report = try? Self.verify(Fixture.join(edited), head: fixture.head)
            #expect(report?.intact == false, "swapping lines \(first + 1) and \(second + 1) went unnoticed")
        }
    }

    @Test func truncationIsFound() async throws {
        let fixture = try Fixture.make()
        // Every length short of the whole file, line boundaries included.
        await propertyCheck(count: 300, input: Gen.int(in: 0...(fixture.bytes.count - 1))) { length in
            let report = try? Self.verify(Array(fixture.bytes.prefix(length)), head: fixture.head)
            #expect(report?.intact == false, "cutting the file to \(length) bytes went unnoticed")
        }
        // The exact line boundaries, each one.
        var offset = 0
        for line in fixture.lines.dropLast() {
            offset += line.count + 1
            let report = try Self.verify(Array(fixture.bytes.prefix(offset)), head: fixture.head)
            #expect(!report.intact, "cutting after byte \(offset) went unnoticed")
        }
    }

    @Test func failureNamesTheLine() throws {
        let fixture = try Fixture.make()
        var lines = fixture.lines
        lines.remove(at: 9)  // seq 10
        let report = try Self.verify(Fixture.join(lines), head: fixture.head)
        #expect(report.failure?.line == 10)
        #expect(report.failure?.reason.contains("seq 11 follows seq 9") == true)

        var edited = fixture.lines
        let index = edited[4].dropFirst(120).firstIndex(of: UInt8(ascii: "e"))!  // past the chain fields
        edited[4][index] = UInt8(ascii: "E")
        let changed = try Self.verify(Fixture.join(edited), head: fixture.head)
        #expect(changed.failure?.line == 5)
        #expect(changed.failure?.reason.contains("seq 5 was changed") == true)
    }

    /// Lines after the head file's seq (written after its last fsync before a crash, or appended by someone) are
    /// intact as a chain but not confirmed by it, and the summary says so instead of "end confirmed".
    @Test func linesPastTheHeadAreNotCalledConfirmed() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = try Self.writeLog(records: 10, in: directory)
        let confirmed = try AuditVerifier().verify(files: [paths.current])
        #expect(confirmed.confirmedThrough == 10 && confirmed.unconfirmed == nil)
        #expect(confirmed.endSummary == ", end confirmed by the head file")
        do {
            var writer = try AuditFileWriter(paths: paths, maxBytes: 0)
            try writer.append(Array(repeating: Array(#"{"schema_version":"1"}"#.utf8), count: 3))  // not synced
        }
        let report = try AuditVerifier().verify(files: [paths.current])
        #expect(report.intact && report.headChecked && report.lastSequence == 13)
        #expect(report.unconfirmed == 11...13)
        #expect(report.endSummary == "; seq 11–13 come after the head file's seq 10 and are not confirmed by it")
        let built = try AuditReportBuilder().build(files: [paths.current], now: "2026-11-27T00:00:00.000Z")
        #expect(try ReportFormat.table.render(built).contains(
            "Chain: intact (13 lines, seq 1–13; seq 11–13 come after the head file's seq 10 and are not confirmed by it)"))
        #expect(built.chain.confirmedThrough == 10)
    }

    /// Each failure is placed where it is and says what it can know: the line the log now ends at (not an empty
    /// file given after it), a head file whose seq was edited, and a head file given without its log.
    @Test func verifyMessagesSayWhatChanged() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = try Self.writeLog(records: 30, in: directory, maxBytes: 4096)
        let rotated = paths.rotatedFiles()
        // The current file emptied: the log now ends in the newest rotated file, at its last line.
        let current = try Data(contentsOf: URL(fileURLWithPath: paths.current))
        try Data().write(to: URL(fileURLWithPath: paths.current))
        let emptied = try AuditVerifier().verify(files: rotated + [paths.current])
        let newest = try String(contentsOfFile: rotated.last!, encoding: .utf8).split(separator: "\n")
        let lastSeq = try #require(AuditLinePrefix.parse(Array(newest.last!.utf8))?.sequence)
        #expect(emptied.failure?.file == rotated.last && emptied.failure?.line == newest.count, "\(String(describing: emptied.failure))")
        #expect(emptied.failure?.reason.hasPrefix("the log ends at seq \(lastSeq) but \(paths.head) records seq 30") == true)
        try current.write(to: URL(fileURLWithPath: paths.current))

        // The head file's seq edited (its hash is still seq 30's): the head file changed, not the line.
        let head = try String(contentsOfFile: paths.head, encoding: .utf8)
        try head.replacingOccurrences(of: #""seq":30"#, with: #""seq":20"#).write(toFile: paths.head, atomically: false, encoding: .utf8)
        let edited = try AuditVerifier().verify(files: [paths.current] + rotated)
        #expect(edited.failure?.file == paths.head)
        #expect(edited.failure?.reason.hasPrefix("\(paths.head) records seq 20 with the hash of seq 30 (") == true, "\(String(describing: edited.failure))")
        #expect(edited.failure?.reason.hasSuffix("the head file was changed") == true)
        try head.write(toFile: paths.head, atomically: false, encoding: .utf8)

        // The head file alone: not a log with no lines, but a missing argument.
        #expect(throws: AuditReadError(path: paths.head, problem: "is a head file, not the log: give the log files too (audit.jsonl*)")) {
            _ = try AuditVerifier().verify(files: [paths.head])
        }
        #expect(try AuditVerifier().verify(files: [paths.current] + rotated).intact)
    }

    @Test func chainContinuesAcrossRotationAndRestart() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        _ = try Self.writeLog(records: 30, in: directory, maxBytes: 4096)
        let paths = try Self.writeLog(records: 30, in: directory, maxBytes: 4096)  // a restart continues the chain
        let rotated = paths.rotatedFiles()
        #expect(rotated.count >= 3)
        for file in rotated + [paths.current] {
            let attributes = try FileManager.default.attributesOfItem(atPath: file)
            #expect((attributes[.posixPermissions] as? Int) == 0o600)
            #expect(((attributes[.size] as? Int) ?? .max) <= 4096)
        }
        // Given in any order, the files verify as one chain of 60 lines; a shell glob that also names the head
        // file (audit.jsonl*) works the same.
        let report = try AuditVerifier().verify(files: ([paths.current] + rotated).shuffled())
        #expect(report.intact, "\(String(describing: report.failure))")
        #expect(report.lines == 60 && report.lastSequence == 60 && report.headChecked)
        let globbed = try AuditVerifier().verify(files: ([paths.current, paths.head] + rotated).sorted())
        #expect(globbed.intact && globbed.lines == 60 && globbed.headChecked && globbed.files.count == rotated.count + 1)

        // Without the oldest file, the chain does not start at 1: refused, unless the reviewer says so.
        let partial = Array(rotated.dropFirst()) + [paths.current]
        #expect(try AuditVerifier().verify(files: partial).intact == false)
        #expect(try AuditVerifier(allowContinuation: true).verify(files: partial).intact)
        // Without a middle file: a gap.
        var gap = rotated
        gap.remove(at: 1)
        #expect(try AuditVerifier().verify(files: gap + [paths.current]).intact == false)
    }

    @Test(arguments: [28, 130, 5000])
    func crashMidLineIsCutOffAndRecorded(fragmentLength: Int) throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = try Self.writeLog(records: 5, in: directory)
        // A crash mid-write leaves part of the next line, its chain fields included when it is long enough.
        let original = try Data(contentsOf: URL(fileURLWithPath: paths.current))
        let next = Array(original.split(separator: UInt8(ascii: "\n")).last!)
        let fragment = (next + next + next).prefix(fragmentLength)
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: paths.current))
        try handle.seekToEnd()
        try handle.write(contentsOf: Data(fragment))
        try handle.close()
        #expect(try AuditVerifier().verify(files: [paths.current]).intact == false)

        // The restarted proxy cuts the unfinished line off and says so in its start record; the chain holds.
        let log = try AuditLog(
            configuration: .init(path: paths.current, maxBytes: 0, fsyncInterval: .zero, settings: [("mode", "test")]),
            logger: .init(label: "test")
        )
        #expect(log.position.sequence == 6)
        let report = try AuditVerifier().verify(files: [paths.current])
        #expect(report.intact, "\(String(describing: report.failure))")
        let lines = try String(contentsOfFile: paths.current, encoding: .utf8).split(separator: "\n")
        #expect(lines.count == 6)
        #expect(lines[5].contains("\"truncated_incomplete_line\":{\"bytes\":\(fragment.count),\"sha256\":\"\(hexString(OpenSSLDigest.sha256(Array(fragment))))\""))
    }

    /// Lines cut from the end of a log are what its head file shows. A restart must not hide them by going on from
    /// the shortened log and rewriting the head file: the writer refuses, and leaves the files as they were.
    @Test func aLogCutBeforeItsHeadIsNotContinued() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = try Self.writeLog(records: 14, in: directory)
        let original = try Data(contentsOf: URL(fileURLWithPath: paths.current))
        let head = try Data(contentsOf: URL(fileURLWithPath: paths.head))
        let lines = original.split(separator: UInt8(ascii: "\n"), omittingEmptySubsequences: false).dropLast().map { Array($0) }
        func attempt(_ bytes: [UInt8]) throws -> AuditFileError? {
            try Data(bytes).write(to: URL(fileURLWithPath: paths.current))
            let headBefore = try Data(contentsOf: URL(fileURLWithPath: paths.head))
            defer { #expect((try? Data(contentsOf: URL(fileURLWithPath: paths.current))) == Data(bytes), "the refused log was changed") }
            do {
                _ = try AuditFileWriter(paths: paths, maxBytes: 0)
                return nil
            } catch {
                #expect((try? Data(contentsOf: URL(fileURLWithPath: paths.head))) == headBefore)
                return error
            }
        }
        // sed -i '12,$d': the last three lines gone.
        #expect(try attempt(Fixture.join(lines.prefix(11).map { $0[...] }))
            == .endsBeforeHead(paths.current, logEnds: 11, head: 14, headPath: paths.head))
        // The last line and the newline before it gone: seq 13 now looks like a crash's unfinished line, but the head
        // confirmed it, so it is not cut.
        let unfinished = Array(Fixture.join(lines.prefix(13).map { $0[...] }).dropLast())
        #expect(try attempt(unfinished) == .endsBeforeHead(paths.current, logEnds: 12, head: 14, headPath: paths.head))
        // Everything gone but the head file.
        #expect(try attempt([]) == .endsBeforeHead(paths.current, logEnds: nil, head: 14, headPath: paths.head))
        // The line at the head's seq edited: it no longer hashes to what the head records.
        var edited = lines
        edited[13][200] ^= 0x20
        #expect(try attempt(Fixture.join(edited.map { $0[...] })) == .differsFromHead(paths.current, sequence: 14, headPath: paths.head))
        // A head file that is not one: refused rather than overwritten.
        try Data("{}".utf8).write(to: URL(fileURLWithPath: paths.head))
        #expect(try attempt(Array(original)) == .invalidHead(paths.head))
        try head.write(to: URL(fileURLWithPath: paths.head))
        // The log file itself deleted, its head left: refused, and no empty log is made in its place.
        try FileManager.default.removeItem(atPath: paths.current)
        #expect(throws: AuditFileError.endsBeforeHead(paths.current, logEnds: nil, head: 14, headPath: paths.head)) {
            _ = try AuditFileWriter(paths: paths, maxBytes: 0)
        }
        #expect(!FileManager.default.fileExists(atPath: paths.current))
        // Restored, the log goes on.
        #expect(try attempt(Array(original)) == nil)
    }

    /// The head file lags the log by up to the fsync interval, so after a crash the log runs past it: that is no
    /// cut, and the chain goes on, an unfinished line after the head's seq cut off as before. The line at the head's
    /// seq is still checked, in the current file or, after a rotation, in the rotated one.
    @Test func aLogThatRunsPastItsHeadGoesOn() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = try Self.writeLog(records: 10, in: directory, maxBytes: 4096)  // head: seq 10
        do {
            var writer = try AuditFileWriter(paths: paths, maxBytes: 4096)
            var json = JSONWriter()
            Self.sampleAction(index: 1).writeJSON(to: &json)
            try writer.append(Array(repeating: json.take(), count: 12))  // rotates; no sync: the head stays at 10
        }
        #expect(paths.rotatedFiles().count >= 2)
        let head = try Data(contentsOf: URL(fileURLWithPath: paths.head))
        #expect(AuditHead.parse(Array(head))?.sequence == 10)
        // A crash mid-write after them.
        let handle = try FileHandle(forWritingTo: URL(fileURLWithPath: paths.current))
        try handle.seekToEnd()
        let fragment = Data(#"{"seq":23,"prev_sha256":"00"#.utf8)
        try handle.write(contentsOf: fragment)
        try handle.close()
        do {
            let writer = try AuditFileWriter(paths: paths, maxBytes: 4096)
            #expect(writer.chain.nextSequence == 23 && writer.truncatedTail?.bytes == fragment.count)
        }
        // The line at the head's seq, in a rotated file now, edited: refused.
        let holder = try #require(paths.rotatedFiles().last { file in
            (try? String(contentsOfFile: file, encoding: .utf8))?.contains(#"{"seq":10,"#) == true
        })
        var text = try String(contentsOfFile: holder, encoding: .utf8)
        let range = try #require(text.range(of: #"{"seq":10,"#))
        let lineEnd = try #require(text[range.upperBound...].firstIndex(of: "\n"))
        text.replaceSubrange(text.index(before: lineEnd)..<lineEnd, with: " ")
        try text.write(toFile: holder, atomically: false, encoding: .utf8)
        #expect(throws: AuditFileError.differsFromHead(holder, sequence: 10, headPath: paths.head)) {
            _ = try AuditFileWriter(paths: paths, maxBytes: 4096)
        }
    }

    /// Two processes appending to one log would break its chain (each numbering its own lines): the writer holds a
    /// lock for as long as it writes, and a second writer is refused until the first has gone.
    @Test func oneWriterAtATime() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = AuditPaths(current: directory + "/audit.jsonl")
        do {
            let first = try AuditFileWriter(paths: paths, maxBytes: 0)
            #expect(throws: AuditFileError.inUse(paths.current)) { _ = try AuditFileWriter(paths: paths, maxBytes: 0) }
            _ = consume first
        }
        var again = try AuditFileWriter(paths: paths, maxBytes: 0)
        try again.append([Array(#"{"schema_version":"1"}"#.utf8)])
        // Another process is refused too (flock is per open file, so this checks what a second proxy would meet).
        let probe = try runCommand("/usr/bin/flock", ["-n", paths.lock, "true"])
        #expect(probe.status != 0)
        // The lock file is not a log: a glob (audit.jsonl*) that names it verifies the log alone.
        try again.sync(now: "2026-11-27T00:00:00.000Z")
        let report = try AuditVerifier().verify(files: [paths.current, paths.lock, paths.head])
        #expect(report.intact && report.files == [paths.current], "\(report.files)")
    }

    /// Two names for one log (a symbolic link to it, or to its directory) are one log: the second writer is refused.
    @Test func aLinkToTheLogIsTheSameLog() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let real = directory + "/audit.jsonl"
        let first = try AuditFileWriter(paths: AuditPaths.resolving(real), maxBytes: 0)
        try FileManager.default.createSymbolicLink(atPath: directory + "/link.jsonl", withDestinationPath: real)
        try FileManager.default.createSymbolicLink(atPath: directory + "/dir", withDestinationPath: directory)
        for other in [directory + "/link.jsonl", directory + "/dir/audit.jsonl"] {
            let paths = AuditPaths.resolving(other)
            #expect(paths == AuditPaths.resolving(real), "\(other)")
            #expect(throws: AuditFileError.self) { _ = try AuditFileWriter(paths: paths, maxBytes: 0) }
        }
        // A link to a log not made yet is the log it points to.
        try FileManager.default.createSymbolicLink(atPath: directory + "/ahead.jsonl", withDestinationPath: "later.jsonl")
        #expect(AuditPaths.resolving(directory + "/ahead.jsonl") == AuditPaths.resolving(directory + "/later.jsonl"))
        // A loop of links resolves to something (and the writer then fails to open it), never forever.
        try FileManager.default.createSymbolicLink(atPath: directory + "/loop1", withDestinationPath: "loop2")
        try FileManager.default.createSymbolicLink(atPath: directory + "/loop2", withDestinationPath: "loop1")
        #expect(throws: AuditFileError.self) { _ = try AuditFileWriter(paths: AuditPaths.resolving(directory + "/loop1"), maxBytes: 0) }
        // A log not made yet is resolved through its directory.
        let realDirectory = String(AuditPaths.resolving(real).current.dropLast("/audit.jsonl".count))
        #expect(AuditPaths.resolving(directory + "/dir/new.jsonl").current == realDirectory + "/new.jsonl")
        _ = consume first
    }

    /// A hard link is a second name for the log that no path resolution can see: a proxy given it would lock its
    /// own lock file and write the same chain as the first. A log with more than one name is refused, whichever
    /// name a proxy is given, and the error says how to find the other names.
    @Test func aHardLinkedLogIsRefused() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let real = directory + "/audit.jsonl"
        do {
            var first = try AuditFileWriter(paths: AuditPaths.resolving(real), maxBytes: 0)
            try first.append([Array(#"{"schema_version":"1"}"#.utf8)])
        }
        #expect(link(real, directory + "/other.jsonl") == 0)
        for name in [real, directory + "/other.jsonl"] {
            let paths = AuditPaths.resolving(name)
            #expect(throws: AuditFileError.hardLinked(paths.current, links: 2)) { _ = try AuditFileWriter(paths: paths, maxBytes: 0) }
        }
        #expect(AuditFileError.hardLinked(real, links: 2).description.contains("-samefile \(real)"))
        // With the other name gone, the log opens again and its chain goes on.
        #expect(unlink(directory + "/other.jsonl") == 0)
        var again = try AuditFileWriter(paths: AuditPaths.resolving(real), maxBytes: 0)
        try again.append([Array(#"{"schema_version":"1"}"#.utf8)])
        #expect(again.chain.nextSequence == 3)
    }

    @Test func aFailedWriteLeavesNoHalfLineAndTheChainGoesOn() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        // A file that cannot grow: RLIMIT_FSIZE would kill the process, so use a full tmpfs? Simpler and exact:
        // rotation into a name that already exists fails after the first part is written.
        let paths = AuditPaths(current: directory + "/audit.jsonl")
        var writer = try AuditFileWriter(paths: paths, maxBytes: 2048)
        var json = JSONWriter()
        Self.sampleAction(index: 0).writeJSON(to: &json)
        let record = json.take()
        try writer.append([record])
        // The next rotation would rename to the first line's name: make that name taken.
        #expect(FileManager.default.createFile(atPath: paths.rotated(firstSequence: 1), contents: Data()))
        #expect(throws: AuditFileError.self) { try writer.append(Array(repeating: record, count: 20)) }
        // The lines before the failed rotation were written and stay in the chain; the rest did not happen.
        let written = writer.linesWrittenByLastAppend
        #expect(written >= 1 && written < 20)
        try FileManager.default.removeItem(atPath: paths.rotated(firstSequence: 1))
        try writer.append(Array(repeating: record, count: 20))
        try writer.sync(now: "2026-11-27T00:00:00.000Z")
        let report = try AuditVerifier().verify(files: [paths.current] + paths.rotatedFiles())
        #expect(report.intact, "\(String(describing: report.failure))")
        #expect(report.lastSequence == UInt64(1 + written + 20) && report.headChecked)
    }

    /// The docs promise files 0600: a log someone created, or loosened, with another mode is made 0600 when opened.
    @Test func anExistingLogIsMadeOwnerOnly() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let paths = try Self.writeLog(records: 3, in: directory)
        #expect(chmod(paths.current, 0o644) == 0)
        do {
            var writer = try AuditFileWriter(paths: paths, maxBytes: 0)
            try writer.append([Array(#"{"schema_version":"1"}"#.utf8)])
        }
        let attributes = try FileManager.default.attributesOfItem(atPath: paths.current)
        #expect((attributes[.posixPermissions] as? Int) == 0o600)
    }

    @Test func refusesAFileThatIsNotAChain() throws {
        let directory = try Self.temporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = directory + "/old.jsonl"
        try Data("{\"schema_version\":\"1\"}\n".utf8).write(to: URL(fileURLWithPath: path))
        #expect(throws: AuditFileError.notChained(path)) {
            _ = try AuditFileWriter(paths: AuditPaths(current: path), maxBytes: 0)
        }
    }
}
