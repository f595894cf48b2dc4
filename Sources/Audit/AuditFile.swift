#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import ControlPlane
import Foundation
import OpenSSLTLS

/// Where the audit log's files are: the current file, the rotated files beside it, and its head file.
///
/// Rotated files are named after the current file plus the sequence number of their first line, twelve digits
/// (`audit.jsonl.000000000001`), so sorting the names sorts the chain. The head file (`audit.jsonl.head`)
/// holds the sequence number and hash of the last line known to be on disk, rewritten after every fsync: with
/// it, `audit verify` also notices lines cut from the end, which a hash chain alone cannot.
public struct AuditPaths: Sendable, Hashable {
    public var current: String

    public init(current: String) {
        self.current = current
    }

    /// The paths of the file `path` names, symbolic links resolved (in the file's name and in its directories), so
    /// that two proxies given two names for one log lock one lock file, and rotated files land beside the real file.
    /// A file not made yet is resolved through its directory.
    public static func resolving(_ path: String) -> AuditPaths { resolving(path, links: 0) }

    private static func resolving(_ path: String, links: Int) -> AuditPaths {
        if let resolved = realpath(path, nil) {
            defer { free(resolved) }
            return AuditPaths(current: String(cString: resolved))
        }
        // A link to a log not made yet: the log is where it points (the writer creates it there).
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let length = readlink(path, &buffer, buffer.count - 1)
        if length > 0, links < 8 {  // a loop of links ends here, as the kernel's own limit would
            let target = String(decoding: buffer.prefix(length).map { UInt8(bitPattern: $0) }, as: UTF8.self)
            let base = AuditPaths(current: path).directory
            let absolute = target.hasPrefix("/") ? target : base + "/" + target
            if absolute != path { return resolving(absolute, links: links + 1) }
        }
        let unresolved = AuditPaths(current: path)
        guard let directory = realpath(unresolved.directory, nil) else { return unresolved }
        defer { free(directory) }
        let parent = String(cString: directory)
        return AuditPaths(current: (parent == "/" ? "" : parent) + "/" + unresolved.baseName)
    }

    public var head: String { current + ".head" }
    /// Locked (flock) by the one process writing the log, for as long as it does.
    public var lock: String { current + ".lock" }

    public func rotated(firstSequence: UInt64) -> String {
        var digits = String(firstSequence)
        if digits.count < 12 { digits = String(repeating: "0", count: 12 - digits.count) + digits }
        return current + "." + digits
    }

    var directory: String {
        guard let slash = current.lastIndex(of: "/") else { return "." }
        let directory = String(current[..<slash])
        return directory.isEmpty ? "/" : directory
    }

    var baseName: String {
        guard let slash = current.lastIndex(of: "/") else { return current }
        return String(current[current.index(after: slash)...])
    }

    /// The rotated files that exist, oldest first.
    public func rotatedFiles() -> [String] {
        guard let dir = opendir(directory) else { return [] }
        defer { closedir(dir) }
        let prefix = baseName + "."
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
            }
            guard name.hasPrefix(prefix) else { continue }
            let suffix = name.dropFirst(prefix.count)
            guard suffix.count >= 12, suffix.allSatisfy({ $0.isASCII && $0.isNumber }) else { continue }
            names.append(name)
        }
        return names.sorted().map { directory == "." && !current.hasPrefix("./") ? $0 : directory + "/" + $0 }
    }
}

/// What a file's end looks like: its last complete line and any bytes after it that no newline ended.
struct FileTail {
    var lastLine: [UInt8]?
    var incompleteBytes: Int
    var size: Int64

    /// Reads the `chunk` bytes of `fd` before `offset` (fewer at the start of the file) in front of `buffer`, and
    /// moves `offset` back over them: reading a file backwards, a piece at a time.
    static func prependPiece(of fd: Int32, to buffer: inout [UInt8], offset: inout Int64, chunk: Int64) throws(AuditFileError) {
        let start = max(0, offset - chunk)
        var piece = [UInt8](repeating: 0, count: Int(offset - start))
        let got = piece.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(start)) }
        guard got == piece.count else { throw .system("pread", got < 0 ? errno : EIO) }
        buffer = piece + buffer
        offset = start
    }

    /// Reads backwards from the end of `fd` until the last complete line is whole (at most `limit` bytes).
    static func read(fd: Int32, limit: Int = 64 << 20) throws(AuditFileError) -> FileTail {
        var info = stat()
        guard fstat(fd, &info) == 0 else { throw .system("fstat", errno) }
        let size = Int64(info.st_size)
        var buffer: [UInt8] = []
        var offset = size
        let chunk: Int64 = 64 * 1024
        while offset > 0, buffer.lazy.filter({ $0 == UInt8(ascii: "\n") }).count < 2 {
            guard buffer.count < limit else { throw .lineTooLong }
            try prependPiece(of: fd, to: &buffer, offset: &offset, chunk: chunk)
        }
        guard let lastNewline = buffer.lastIndex(of: UInt8(ascii: "\n")) else {
            return FileTail(lastLine: nil, incompleteBytes: buffer.count, size: size)
        }
        let incomplete = buffer.count - lastNewline - 1
        let before = buffer[..<lastNewline]
        let lineStart = before.lastIndex(of: UInt8(ascii: "\n")).map { $0 + 1 } ?? before.startIndex
        return FileTail(lastLine: Array(buffer[lineStart..<lastNewline]), incompleteBytes: incomplete, size: size)
    }
}

/// Reads the chain fields of a file's first line (its first 128 bytes hold them).
func firstLinePrefix(path: String) -> AuditLinePrefix? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: 128)
    let got = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard got > 0 else { return nil }
    return AuditLinePrefix.parse(bytes.prefix(got))
}

/// What the head file records: the sequence number and hash of the last line known to be on disk.
public struct AuditHead: Sendable, Hashable {
    public var sequence: UInt64
    public var hash: [UInt8]

    /// `{"file":…,"seq":N,"sha256":"…",…}`: nil when it is not that.
    public static func parse(_ bytes: [UInt8]) -> AuditHead? {
        guard let object = try? JSONSerialization.jsonObject(with: Data(bytes)) as? [String: Any],
            let sequence = (object["seq"] as? NSNumber)?.uint64Value,
            let text = object["sha256"] as? String, let hash = parseHex(Array(text.utf8)), hash.count == 32
        else { return nil }
        return AuditHead(sequence: sequence, hash: hash)
    }
}

/// The line with seq `sequence` among `fd`'s first `end` bytes (whole lines), read backwards from `end`: lines are
/// in sequence order, so the search stops at the first line before it, and a head that lags the log by a moment's
/// lines (the fsync interval) is found after reading that much. Nil when the file does not hold it.
func findLine(sequence: UInt64, fd: Int32, end: Int64) throws(AuditFileError) -> [UInt8]? {
    var buffer: [UInt8] = []  // the bytes from `offset` to the start of the lines already passed, ending in a newline
    var offset = end
    let chunk: Int64 = 256 * 1024
    while offset > 0 || !buffer.isEmpty {
        let body = buffer.dropLast()  // the newline that ends the last line
        let start: Int
        if let newline = body.lastIndex(of: UInt8(ascii: "\n")) {
            start = newline + 1
        } else if offset == 0 {
            start = 0
        } else {
            guard buffer.count < 64 << 20 else { throw .lineTooLong }
            try FileTail.prependPiece(of: fd, to: &buffer, offset: &offset, chunk: chunk)
            continue
        }
        let line = Array(body[start...])
        guard let prefix = AuditLinePrefix.parse(line), prefix.sequence >= sequence else { return nil }
        if prefix.sequence == sequence { return line }
        buffer.removeSubrange(start...)
    }
    return nil
}

public enum AuditFileError: Error, CustomStringConvertible, Equatable {
    case system(String, Int32)
    case notChained(String)
    case lineTooLong
    case file(String)
    /// Another process holds the log's lock: it is writing the same chain.
    case inUse(String)
    /// The log has other names (hard links): a second proxy given one would lock another lock file and write the
    /// same chain. Symbolic links are resolved; hard links cannot be, so the log is refused.
    case hardLinked(String, links: Int)
    /// The log ends before the line its head file records (`logEnds` nil: it holds no line): lines were cut from
    /// its end. Continuing would chain new lines onto the shortened log and rewrite the head file, hiding the cut.
    case endsBeforeHead(String, logEnds: UInt64?, head: UInt64, headPath: String)
    /// The line at the head file's seq is not the line the head file records: it, or the head file, was changed.
    case differsFromHead(String, sequence: UInt64, headPath: String)
    /// The head file is not one the writer wrote.
    case invalidHead(String)

    public var description: String {
        switch self {
        case .system(let call, let code): "\(call): \(String(cString: strerror(code)))"
        case .notChained(let path):
            "\(path) is not a hash-chained audit log (written by an older version, or by something else)"
        case .lineTooLong: "its last line is longer than 64 MiB"
        case .file(let reason): reason
        case .inUse(let path): "\(path) is being written by another process"
        case .hardLinked(let path, let links):
            "\(path) has \(links) hard links: remove the other names (find / -xdev -samefile \(path) lists them)"
        case .endsBeforeHead(let path, let ends, let head, let headPath):
            "\(path) ends at \(ends.map { "seq \($0)" } ?? "no line") but \(headPath) records seq \(head): lines were removed from the end of the log"
        case .differsFromHead(let path, let sequence, let headPath):
            "seq \(sequence) of \(path) does not hash to what \(headPath) records for it: the line or the head file was changed"
        case .invalidHead(let path): "\(path) is not a head file the proxy wrote"
        }
    }
}

/// The audit log's file: appends chained lines, rotates by size, fsyncs and rewrites the head file on demand.
/// One owner (the `AuditLog` service's writer task) calls it; it is not thread-safe.
public struct AuditFileWriter: ~Copyable {
    public let paths: AuditPaths
    public let maxBytes: Int64
    private var fd: Int32
    /// The lock file's descriptor, holding its flock: two processes appending to one chain would break it.
    private let lockFD: Int32
    private var size: Int64
    private var firstSequenceInFile: UInt64?
    public private(set) var chain: AuditChain
    /// The unfinished line a crash mid-write left at the end of the file, cut off on open: its length and
    /// SHA-256, for the start record. Nil when the file ended cleanly.
    public let truncatedTail: (bytes: Int, sha256: [UInt8])?
    private var syncedSequence: UInt64 = 0

    /// Opens (or creates, mode 0600) the current file and continues the chain from its last line, or from the
    /// newest rotated file's when the current one is new or empty. An unfinished last line (a crash in the middle
    /// of a write: it was never part of the chain) is cut off, and `truncatedTail` says what it was.
    public init(paths: AuditPaths, maxBytes: Int64) throws(AuditFileError) {
        self.paths = paths
        self.maxBytes = maxBytes
        // Another proxy holding it is refused after a second of asking (FileIO.lockExclusively).
        let lockFD: Int32
        switch FileIO.lockExclusively(paths.lock) {
        case .success(let fd): lockFD = fd
        case .failure(let failure) where failure.code == EWOULDBLOCK: throw .inUse(paths.current)
        case .failure(let failure): throw .system("\(failure.call) \(paths.lock)", failure.code)
        }
        // Made only when missing, and removed again when the log is refused: a refused start leaves the files as
        // they were (a head file whose log was deleted keeps saying so).
        var created = false
        var fd = open(paths.current, O_RDWR | O_APPEND | O_CLOEXEC)
        if fd < 0 && errno == ENOENT {
            fd = open(paths.current, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
            created = fd >= 0
        }
        guard fd >= 0 else {
            let code = errno
            close(lockFD)
            throw .system("open", code)
        }
        do {
            var info = stat()
            guard fstat(fd, &info) == 0 else { throw AuditFileError.system("fstat", errno) }
            guard info.st_nlink <= 1 else { throw AuditFileError.hardLinked(paths.current, links: Int(info.st_nlink)) }
            if info.st_mode & 0o7777 != 0o600 {
                // The log holds what agents reached: only the proxy's user reads it, whoever created the file.
                guard fchmod(fd, 0o600) == 0 else { throw AuditFileError.system("chmod 0600 \(paths.current)", errno) }
            }
            var tail = try FileTail.read(fd: fd)
            // The chain's last whole line: the current file's, or the newest rotated file's when the current one
            // is new or empty (it must be readable: starting again at seq 1 would break the chain for good).
            var last: (line: [UInt8], prefix: AuditLinePrefix)? = nil
            var first: UInt64? = nil
            if let line = tail.lastLine {
                guard let prefix = AuditLinePrefix.parse(line) else { throw AuditFileError.notChained(paths.current) }
                last = (line, prefix)
                first = firstLinePrefix(path: paths.current)?.sequence
            } else if let newest = paths.rotatedFiles().last {
                let rotated = open(newest, O_RDONLY | O_CLOEXEC)
                guard rotated >= 0 else { throw AuditFileError.system("open \(newest)", errno) }
                defer { close(rotated) }
                guard let line = try FileTail.read(fd: rotated).lastLine, let prefix = AuditLinePrefix.parse(line) else {
                    throw AuditFileError.notChained(newest)
                }
                last = (line, prefix)
            }
            // Before anything is cut or written: the log must still hold the line its head file records. Lines cut
            // from the end would otherwise be hidden for good, the chain going on from the shortened log and the
            // head file rewritten. A log that runs past its head is a crash before the next fsync: it goes on.
            try Self.checkHead(paths: paths, current: fd, currentEnd: tail.size - Int64(tail.incompleteBytes), last: last)
            var truncated: (Int, [UInt8])? = nil
            if tail.incompleteBytes > 0 {
                // Beyond the head's seq (checked above), so never a line the head confirmed.
                let keep = tail.size - Int64(tail.incompleteBytes)
                var fragment = [UInt8](repeating: 0, count: tail.incompleteBytes)
                let got = fragment.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, off_t(keep)) }
                guard got == fragment.count else { throw AuditFileError.system("pread", got < 0 ? errno : EIO) }
                guard ftruncate(fd, off_t(keep)) == 0 else { throw AuditFileError.system("ftruncate", errno) }
                truncated = (tail.incompleteBytes, OpenSSLDigest.sha256(fragment))
                tail.size = keep
            }
            var chain = AuditChain()
            if let last {
                chain = AuditChain(lastSequence: last.prefix.sequence, lastLineHash: OpenSSLDigest.sha256(last.line))
            }
            self.fd = fd
            self.lockFD = lockFD
            self.size = tail.size
            self.firstSequenceInFile = first
            self.chain = chain
            self.truncatedTail = truncated
            self.syncedSequence = chain.nextSequence - 1
        } catch let error as AuditFileError {
            close(fd)
            if created { unlink(paths.current) }
            close(lockFD)
            throw error
        } catch {
            close(fd)
            if created { unlink(paths.current) }
            close(lockFD)
            throw .system("open", EIO)
        }
    }

    deinit {
        close(fd)
        close(lockFD)  // and with it the lock
    }

    /// Throws when the head file records a line the log no longer holds as it was: the log ends before it, or the
    /// line at its seq hashes to something else. No head file (a new log, or one from before head files) passes.
    /// `current` is the current file, its whole lines ending at `currentEnd`; `last` the chain's last whole line.
    private static func checkHead(
        paths: AuditPaths, current: Int32, currentEnd: Int64, last: (line: [UInt8], prefix: AuditLinePrefix)?
    ) throws(AuditFileError) {
        let headFD = open(paths.head, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)
        guard headFD >= 0 else {
            if errno == ENOENT { return }
            throw .system("open \(paths.head)", errno)
        }
        var bytes = [UInt8](repeating: 0, count: 4096)
        let got = bytes.withUnsafeMutableBytes { read(headFD, $0.baseAddress, $0.count) }
        close(headFD)
        guard got >= 0 else { throw .system("read \(paths.head)", errno) }
        guard let head = AuditHead.parse(Array(bytes.prefix(got))) else { throw .invalidHead(paths.head) }
        guard let last, last.prefix.sequence >= head.sequence else {
            throw .endsBeforeHead(paths.current, logEnds: last?.prefix.sequence, head: head.sequence, headPath: paths.head)
        }
        var line: [UInt8]? = nil
        var holder = paths.current
        if last.prefix.sequence == head.sequence {
            line = last.line
        } else if let first = firstLinePrefix(path: paths.current)?.sequence, first <= head.sequence {
            line = try findLine(sequence: head.sequence, fd: current, end: currentEnd)
        } else {
            // A rotation after the head was last written: the line is in the newest rotated file that starts at or
            // before it. None does when those files were archived; the log runs past the head, nothing was cut.
            let starts = paths.rotatedFiles().compactMap { path in
                path.split(separator: ".").last.flatMap { UInt64($0) }.map { (path: path, first: $0) }
            }
            guard let file = starts.last(where: { $0.first <= head.sequence }) else { return }
            holder = file.path
            let fd = open(file.path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw .system("open \(file.path)", errno) }
            defer { close(fd) }
            var info = stat()
            guard fstat(fd, &info) == 0 else { throw .system("fstat", errno) }
            line = try findLine(sequence: head.sequence, fd: fd, end: Int64(info.st_size))
        }
        guard let line, OpenSSLDigest.sha256(line) == head.hash else {
            throw .differsFromHead(holder, sequence: head.sequence, headPath: paths.head)
        }
    }

    /// Appends `records` (JSON objects without newlines) as chained lines; rotates first when the current file
    /// would grow past `maxBytes` (a file always takes at least one line). On failure nothing half-written stays
    /// in the file and the chain goes back to its last written line, so the next append continues it.
    public mutating func append(_ records: [[UInt8]]) throws(AuditFileError) {
        linesWrittenByLastAppend = 0
        var committed = (chain: chain, size: size, first: firstSequenceInFile)
        let startSequence = chain.nextSequence
        var pending: [UInt8] = []
        pending.reserveCapacity(records.reduce(0) { $0 + $1.count + 100 })
        do {
            for record in records {
                let before = chain
                let lineStart = pending.count
                let sequence = chain.nextSequence
                chain.append(record: record, to: &pending)
                if maxBytes > 0, size + Int64(lineStart) > 0, size + Int64(pending.count) > maxBytes {
                    // This line would overflow the file: write what precedes it, then start a new file with it.
                    try writeAll(pending[..<lineStart])
                    committed = (before, size, firstSequenceInFile)
                    pending.removeFirst(lineStart)
                    try rotate()
                    committed = (before, 0, nil)
                    firstSequenceInFile = sequence
                } else if firstSequenceInFile == nil {
                    firstSequenceInFile = sequence
                }
            }
            try writeAll(pending[...])
            linesWrittenByLastAppend = records.count
        } catch {
            _ = ftruncate(fd, off_t(committed.size))
            size = committed.size
            chain = committed.chain
            firstSequenceInFile = committed.first
            linesWrittenByLastAppend = Int(chain.nextSequence - startSequence)
            throw error
        }
    }

    /// How many of the last `append`'s lines are in the file (all of them unless it threw).
    public private(set) var linesWrittenByLastAppend = 0

    /// Whether lines were written since the last `sync`.
    public var hasUnsyncedLines: Bool { chain.nextSequence - 1 != syncedSequence }

    /// fsyncs the file and rewrites the head file when lines were written since the last call.
    public mutating func sync(now: String) throws(AuditFileError) {
        let last = chain.nextSequence - 1
        guard last != syncedSequence else { return }
        guard fsync(fd) == 0 else { throw .system("fsync", errno) }
        try writeHead(sequence: last, hash: chain.previousHash, now: now)
        syncedSequence = last
    }

    private mutating func writeAll(_ bytes: ArraySlice<UInt8>) throws(AuditFileError) {
        guard !bytes.isEmpty else { return }
        if let failure = bytes.withUnsafeBytes({ FileIO.writeFully(fd, $0) }) { throw .system("write", failure) }
        size += Int64(bytes.count)
    }

    /// Renames the current file after its first line's sequence number and opens a new one.
    private mutating func rotate() throws(AuditFileError) {
        guard fsync(fd) == 0 else { throw .system("fsync", errno) }
        let first = firstSequenceInFile ?? chain.nextSequence
        let target = paths.rotated(firstSequence: first)
        guard access(target, F_OK) != 0 else { throw .system("rename to \(target)", EEXIST) }
        guard rename(paths.current, target) == 0 else { throw .system("rename", errno) }
        let newFD = open(paths.current, O_RDWR | O_APPEND | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard newFD >= 0 else { throw .system("open", errno) }
        close(fd)
        fd = newFD
        size = 0
        _ = FileIO.syncDirectory(paths.directory)
    }

    /// `{"file":"audit.jsonl","seq":N,"sha256":"…","written_at":"…"}`, replaced atomically.
    private func writeHead(sequence: UInt64, hash: [UInt8], now: String) throws(AuditFileError) {
        var json = JSONWriter()
        json.beginObject()
        json.field("file", paths.baseName)
        json.field("seq", sequence)
        json.field("sha256", hexString(hash))
        json.field("written_at", now)
        json.endObject()
        var bytes = json.take()
        bytes.append(UInt8(ascii: "\n"))
        do {
            try bytes.withUnsafeBytes { try FileIO.replace(paths.head, with: $0) }
        } catch {
            throw .file("\(error)")
        }
    }
}
