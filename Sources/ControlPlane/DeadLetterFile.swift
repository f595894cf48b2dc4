#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Actions the control plane will not take, one JSON object a line (`dead-letter.jsonl` in the spool directory,
/// mode 0600), capped: a line that would take the file past `maxBytes` first renames it `dead-letter.1.jsonl`
/// (replacing the older one), so the two hold at most twice `maxBytes` and the oldest go first.
package struct DeadLetterFile: Sendable {
    package let directory: String
    package let path: String
    package let previousPath: String
    package let maxBytes: Int64

    package init(directory: String, maxBytes: Int64) {
        self.directory = directory
        path = directory + "/dead-letter.jsonl"
        previousPath = directory + "/dead-letter.1.jsonl"
        self.maxBytes = maxBytes
    }

    /// Appends `line` (newline included) and makes it durable (fsynced; the directory too when the file was created
    /// or rotated), so the caller may then record the action as done in the spool: a crash of the machine never
    /// leaves it marked done there and absent here. The `errno` of a failure, nil when written and synced. A failed
    /// write or fsync is cut back off the file (as far as the disk lets it), so the line, tried again later, is
    /// written whole, once.
    package func append(_ line: [UInt8]) -> Int32? {
        var info = stat()
        var created = stat(path, &info) != 0
        if !created, info.st_size > 0, Int64(info.st_size) + Int64(line.count) > maxBytes {
            if rename(path, previousPath) != 0 { return errno }
            created = true
        }
        let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        var before = stat()
        guard fstat(fd, &before) == 0 else { return errno }
        if let failure = line.withUnsafeBytes({ FileIO.writeFully(fd, $0) }) ?? FileIO.sync(fd, path: path) {
            _ = ftruncate(fd, before.st_size)
            return failure
        }
        return created ? FileIO.syncDirectory(directory) : nil
    }
}

/// A problem logged at most once per `interval`, with how many times it happened since the last line.
package struct LogEvery: Sendable {
    package let interval: Duration
    private var last: ContinuousClock.Instant?
    private var unlogged = 0

    package init(_ interval: Duration = .seconds(60)) {
        self.interval = interval
    }

    /// Counts `count` occurrences at `now`; the number to log when a line is due (the first at once), nil otherwise.
    package mutating func note(_ count: Int = 1, now: ContinuousClock.Instant = .now) -> Int? {
        unlogged += count
        if let last, now - last < interval { return nil }
        last = now
        defer { unlogged = 0 }
        return unlogged
    }
}
