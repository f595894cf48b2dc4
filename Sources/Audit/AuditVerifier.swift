import Foundation
import OpenSSLTLS

/// Checks an audit log's hash chain across its files: `kaizen-egress audit verify FILE…`.
///
/// Files are put in chain order by their first line's sequence number, whatever order they are given in. The
/// check fails at the first line that was edited (the next line's `prev_sha256` no longer matches it), deleted
/// (a gap in `seq`), moved or repeated (`seq` goes back), or cut short (no newline, or not a chain line), and
/// when lines are missing from the end (the head file records a later line than the files hold).
public struct AuditVerifier {
    public struct Report: Sendable, Hashable {
        public var files: [String]
        public var lines: Int
        public var firstSequence: UInt64?
        public var lastSequence: UInt64?
        /// The first broken line; nil when the chain is intact.
        public var failure: Failure?
        /// True when the head file matched: no line is missing from the end.
        public var headChecked: Bool
        /// The seq the head file confirmed (the line there hashes to what it records); lines after it are not
        /// confirmed by it (written after its last fsync, before a crash, or appended by someone else).
        public var confirmedThrough: UInt64?

        /// The lines after the head file's seq, when the log runs past it.
        public var unconfirmed: ClosedRange<UInt64>? {
            guard let confirmedThrough, let lastSequence, lastSequence > confirmedThrough else { return nil }
            return (confirmedThrough + 1)...lastSequence
        }

        /// `, end confirmed by the head file`, or which lines the head file does not confirm, for the summary line.
        public var endSummary: String {
            Self.endSummary(headChecked: headChecked, confirmedThrough: confirmedThrough, lastSequence: lastSequence)
        }

        static func endSummary(headChecked: Bool, confirmedThrough: UInt64?, lastSequence: UInt64?) -> String {
            if let confirmedThrough, let lastSequence, lastSequence > confirmedThrough {
                // Never "confirmed" for lines the head file does not cover (after a crash, or appended by someone).
                return lastSequence == confirmedThrough + 1
                    ? "; seq \(lastSequence) comes after the head file's seq \(confirmedThrough) and is not confirmed by it"
                    : "; seq \(confirmedThrough + 1)–\(lastSequence) come after the head file's seq \(confirmedThrough) and are not confirmed by it"
            }
            return headChecked ? ", end confirmed by the head file" : ""
        }

        /// Things that hold but that a reviewer should know (a recovered crash, no head file, …).
        public var notes: [String]

        public var intact: Bool { failure == nil }
    }

    public struct Failure: Sendable, Hashable, CustomStringConvertible {
        public var file: String
        /// 1-based line number within `file`.
        public var line: Int
        public var reason: String
        public var description: String { "\(file):\(line): \(reason)" }
    }

    /// Accept a log whose first line is not seq 1 (its earlier files were archived elsewhere).
    public var allowContinuation: Bool

    public init(allowContinuation: Bool = false) {
        self.allowContinuation = allowContinuation
    }

    public func verify(files given: [String]) throws -> Report {
        // A glob such as `audit.jsonl*` also names the head file (and its temporary), and the writer's lock file:
        // those are not logs.
        let files = given.filter { !$0.hasSuffix(".head") && !$0.hasSuffix(".head.tmp") && !$0.hasSuffix(".lock") }
        var headPaths: [String] = []
        for path in given where path.hasSuffix(".head") && !headPaths.contains(path) { headPaths.append(path) }
        for path in files where FileManager.default.fileExists(atPath: path + ".head") && !headPaths.contains(path + ".head") {
            headPaths.append(path + ".head")
        }
        guard !files.isEmpty else {
            // Only a head or lock file: a log with no lines would be a misleading answer to a missing argument.
            let path = given.first ?? ""
            let what = path.hasSuffix(".lock") ? "the writer's lock file" : "a head file"
            throw AuditReadError(path: path, problem: "is \(what), not the log: give the log files too (audit.jsonl*)")
        }
        var ordered: [(path: String, data: Data, first: UInt64)] = []
        var unordered: [(path: String, data: Data)] = []
        for path in files {
            let data = try AuditReadError.read(path)
            if let prefix = AuditLinePrefix.parse(data.prefix(128)) {
                ordered.append((path, data, prefix.sequence))
            } else {
                unordered.append((path, data))
            }
        }
        ordered.sort { $0.first < $1.first }
        var report = Report(files: [], lines: 0, headChecked: false, confirmedThrough: nil, notes: [])
        // A file whose first line is not a chain line fails where it stands; it is checked last.
        let all = ordered.map { (path: $0.path, data: $0.data) } + unordered
        report.files = all.map(\.path)

        var heads: [(path: String, sequence: UInt64, hash: [UInt8])] = []
        for path in headPaths {
            guard let head = AuditHead.parse([UInt8](try AuditReadError.read(path))) else {
                report.failure = Failure(file: path, line: 1, reason: "the head file is not valid")
                return report
            }
            heads.append((path, head.sequence, head.hash))
        }

        var walker = ChainWalker(
            allowContinuation: allowContinuation, watched: Set(heads.map(\.sequence)), watchedHashes: Set(heads.map(\.hash)))
        for file in all {
            if let failure = walker.walk(file: file.path, data: file.data) {
                report.failure = failure
                break
            }
        }
        if report.failure == nil, let failure = walker.finish() {
            report.failure = failure
        }
        report.lines = walker.lines
        report.firstSequence = walker.firstSequence
        report.lastSequence = walker.lastSequence
        report.notes = walker.notes
        guard report.failure == nil else { return report }

        for head in heads {
            guard let last = walker.lastSequence, head.sequence <= last else {
                // Where the log now ends: its last line (the file it is in, not an empty file given after it).
                let (file, line) = walker.lastSequence == nil ? (head.path, 1) : walker.previousLocation
                let holds = walker.lastSequence.map { "the log ends at seq \($0)" } ?? "the files hold no lines"
                report.failure = Failure(
                    file: file, line: line,
                    reason: "\(holds) but \(head.path) records seq \(head.sequence): lines were removed from the end"
                )
                return report
            }
            if let seen = walker.watchedLines[head.sequence], seen.hash != head.hash {
                // Which was changed, the line or the head file, shows when the head's hash is another line's.
                if let other = walker.linesWithWatchedHash[head.hash] {
                    report.failure = Failure(
                        file: head.path, line: 1,
                        reason: "\(head.path) records seq \(head.sequence) with the hash of seq \(other.sequence) (\(other.file):\(other.line)): the head file was changed"
                    )
                } else {
                    report.failure = Failure(
                        file: seen.file, line: seen.line,
                        reason: "seq \(head.sequence) does not hash to what \(head.path) records for it: the line or the head file was changed"
                    )
                }
                return report
            }
            if walker.watchedLines[head.sequence] == nil {
                report.notes.append("\(head.path) records seq \(head.sequence), which is not among the files given")
            } else {
                report.headChecked = true
                report.confirmedThrough = max(report.confirmedThrough ?? 0, head.sequence)
            }
        }
        if heads.isEmpty {
            report.notes.append(
                "no head file was found beside the files given: lines removed from the end of the log cannot be detected"
            )
        }
        return report
    }
}

/// Walks lines in chain order, remembering just enough to check the next one.
private struct ChainWalker {
    let allowContinuation: Bool
    let watched: Set<UInt64>
    let watchedHashes: Set<[UInt8]>
    var expected: UInt64?
    var previousHash: [UInt8] = AuditChain.genesisHash
    var lines = 0
    var firstSequence: UInt64?
    var lastSequence: UInt64?
    var previousLocation = ("", 0)
    var notes: [String] = []
    /// The lines at the head files' seqs, and the lines whose hash a head file records.
    var watchedLines: [UInt64: (file: String, line: Int, hash: [UInt8])] = [:]
    var linesWithWatchedHash: [[UInt8]: (file: String, line: Int, sequence: UInt64)] = [:]

    init(allowContinuation: Bool, watched: Set<UInt64>, watchedHashes: Set<[UInt8]>) {
        self.allowContinuation = allowContinuation
        self.watched = watched
        self.watchedHashes = watchedHashes
    }

    mutating func walk(file: String, data: Data) -> AuditVerifier.Failure? {
        let bytes = [UInt8](data)
        if bytes.isEmpty {
            notes.append("\(file) is empty")
            return nil
        }
        var lineNumber = 0
        var start = 0
        while start < bytes.count {
            lineNumber += 1
            guard let end = bytes[start...].firstIndex(of: UInt8(ascii: "\n")) else {
                return .init(
                    file: file, line: lineNumber,
                    reason: "the last line is incomplete (no newline): the file was cut short or is still being written"
                )
            }
            let line = bytes[start..<end]
            start = end + 1
            if let failure = check(line, file: file, lineNumber: lineNumber) { return failure }
        }
        return nil
    }

    mutating func check(_ line: ArraySlice<UInt8>, file: String, lineNumber: Int) -> AuditVerifier.Failure? {
        guard let prefix = AuditLinePrefix.parse(line) else {
            return .init(file: file, line: lineNumber, reason: "not a chain line (edited, or cut short)")
        }
        if let expected {
            if prefix.sequence > expected {
                let missing = prefix.sequence - expected
                return .init(
                    file: file, line: lineNumber,
                    reason: "seq \(prefix.sequence) follows seq \(expected - 1): \(missing) line\(missing == 1 ? " is" : "s are") missing"
                )
            }
            if prefix.sequence < expected {
                return .init(
                    file: file, line: lineNumber,
                    reason: "seq \(prefix.sequence) follows seq \(expected - 1): lines are out of order or repeated"
                )
            }
            if prefix.previousHash != previousHash {
                let (previousFile, previousLine) = previousLocation
                let next = previousFile == file ? "line \(lineNumber)" : "\(file):\(lineNumber)"
                return .init(
                    file: previousFile, line: previousLine,
                    reason: "seq \(expected - 1) was changed: its hash does not match prev_sha256 of the next line (\(next))"
                )
            }
        } else {
            if prefix.sequence != 1 || prefix.previousHash != AuditChain.genesisHash {
                guard allowContinuation, prefix.sequence > 1 else {
                    return .init(
                        file: file, line: lineNumber,
                        reason: "the log starts at seq \(prefix.sequence), not 1: earlier lines or files are missing (with --continues, a log whose earlier files were archived is accepted)"
                    )
                }
                notes.append("the files start at seq \(prefix.sequence); lines before it were not checked")
            }
            firstSequence = prefix.sequence
        }
        let hash = OpenSSLDigest.sha256(line)
        if watched.contains(prefix.sequence) {
            watchedLines[prefix.sequence] = (file, lineNumber, hash)
        }
        if watchedHashes.contains(hash) {
            linesWithWatchedHash[hash] = (file, lineNumber, prefix.sequence)
        }
        previousHash = hash
        previousLocation = (file, lineNumber)
        expected = prefix.sequence + 1
        lastSequence = prefix.sequence
        lines += 1
        return nil
    }

    func finish() -> AuditVerifier.Failure? { nil }
}

/// A file `audit verify` or `report` could not read, named, with what is wrong in plain words.
public struct AuditReadError: Error, CustomStringConvertible, Hashable {
    public var path: String
    public var problem: String

    public init(path: String, problem: String) {
        self.path = path
        self.problem = problem
    }

    public var description: String { "\(path) \(problem)" }

    /// The whole of the regular file `path`. Opened without blocking (a FIFO would wait for a writer) and checked
    /// to be a regular file before it is read: Foundation's errors name no file and say "error 256" for a directory.
    static func read(_ path: String) throws(AuditReadError) -> Data {
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { throw AuditReadError(path: path, problem: Self.explain(errno)) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw AuditReadError(path: path, problem: Self.explain(errno)) }
        switch info.st_mode & S_IFMT {
        case S_IFREG: break
        case S_IFDIR: throw AuditReadError(path: path, problem: "is a directory, not an audit log file")
        default: throw AuditReadError(path: path, problem: "is not a regular file (a device, socket or pipe), not an audit log file")
        }
        var data = Data()
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let got = buffer.withUnsafeMutableBytes { Foundation.read(fd, $0.baseAddress, $0.count) }
            if got < 0 {
                if errno == EINTR { continue }
                throw AuditReadError(path: path, problem: "could not be read: \(String(cString: strerror(errno)))")
            }
            if got == 0 { return data }
            data.append(contentsOf: buffer[..<got])
        }
    }

    private static func explain(_ code: Int32) -> String {
        switch code {
        case ENOENT: "does not exist"
        case EACCES, EPERM: "cannot be read: permission denied (run as the user that owns the audit log, or give a copy)"
        case ENOTDIR: "does not exist (a part of the path is not a directory)"
        default: "cannot be opened: \(String(cString: strerror(code)))"
        }
    }
}
