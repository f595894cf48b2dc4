#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// The file writes the spool, the action logs and the state files share.
package enum FileIO {
    /// Opens (creating, mode 0600) `path` and takes an exclusive flock on it, for one writer per file or directory.
    /// A process that forks holds a copy of a descriptor until its child execs, lock and all: a lock just released
    /// may stay held for a moment, so it is asked for again for a second before another holder is taken as for good.
    /// The descriptor on success; the errno otherwise (`EWOULDBLOCK`: another process holds it).
    package static func lockExclusively(_ path: String) -> Result<Int32, FileIO.Errno> {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return .failure(Errno(code: errno, call: "open")) }
        var locked = flock(fd, LOCK_EX | LOCK_NB) == 0
        var code = locked ? 0 : errno
        for _ in 0..<100 where !locked && code == EWOULDBLOCK {
            usleep(10_000)
            locked = flock(fd, LOCK_EX | LOCK_NB) == 0
            code = locked ? 0 : errno
        }
        guard locked else {
            close(fd)
            return .failure(Errno(code: code, call: "flock"))
        }
        return .success(fd)
    }

    /// A failed call's errno, and which call failed.
    package struct Errno: Error {
        package var code: Int32
        package var call: String
    }

    /// Writes all of `bytes` to `fd`, retrying short writes and EINTR. Returns the `errno` of a failure, nil when
    /// everything was written (after a failure, part of it may have been).
    package static func writeFully(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32? {
        var offset = 0
        while offset < bytes.count {
            let written = write(fd, bytes.baseAddress! + offset, bytes.count - offset)
            if written < 0 {
                if errno == EINTR { continue }
                return errno
            }
            offset += written
        }
        return nil
    }

    package struct Failure: Error, CustomStringConvertible {
        package var description: String

        package init(description: String) {
            self.description = description
        }
    }

    /// Something made durable, for tests to check the order of what the code does (`addObserver`).
    package enum Event: Sendable, Hashable {
        /// `fsync` of the file (or directory) at this path succeeded.
        case synced(String)
        /// `replace` renamed its fsynced temporary file over this path.
        case replaced(String)
    }

    private static let observers = Mutex<(next: Int, all: [Int: @Sendable (Event) -> Void])>((0, [:]))

    /// Calls `observer` with every `Event`, on the thread that caused it, until `removeObserver`; tests run side by
    /// side, so an observer looks only at its own paths.
    package static func addObserver(_ observer: @escaping @Sendable (Event) -> Void) -> Int {
        observers.withLock { state in
            state.next += 1
            state.all[state.next] = observer
            return state.next
        }
    }

    package static func removeObserver(_ token: Int) {
        _ = observers.withLock { $0.all.removeValue(forKey: token) }
    }

    private static func notify(_ event: Event) {
        let all = observers.withLock { Array($0.all.values) }
        for observer in all { observer(event) }
    }

    /// fsyncs `fd` (the file at `path`): the `errno` of a failure, nil when its data is on the disk.
    package static func sync(_ fd: Int32, path: String) -> Int32? {
        guard fsync(fd) == 0 else { return errno }
        notify(.synced(path))
        return nil
    }

    /// fsyncs the directory at `path`, so the names created, renamed or removed in it survive a crash of the
    /// machine: the `errno` of a failure, nil when done.
    package static func syncDirectory(_ path: String) -> Int32? {
        let fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return errno }
        defer { close(fd) }
        return sync(fd, path: path)
    }

    /// Replaces `path` with `bytes` atomically: written beside it (mode 0600 from creation), fsynced, renamed.
    package static func replace(_ path: String, with bytes: UnsafeRawBufferPointer) throws(Failure) {
        let temporary = path + ".tmp"
        unlink(temporary)
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw Failure(description: "open \(temporary): \(reason(errno))") }
        var failure: String? = writeFully(fd, bytes).map { "write \(temporary): \(reason($0))" }
        if failure == nil, fsync(fd) != 0 { failure = "fsync \(temporary): \(reason(errno))" }
        close(fd)
        if let failure {
            unlink(temporary)
            throw Failure(description: failure)
        }
        guard rename(temporary, path) == 0 else { throw Failure(description: "rename \(temporary): \(reason(errno))") }
        notify(.replaced(path))
    }

    package static func reason(_ code: Int32) -> String {
        String(decoding: UnsafeRawBufferPointer(start: strerror(code), count: strlen(strerror(code))), as: UTF8.self)
    }
}
