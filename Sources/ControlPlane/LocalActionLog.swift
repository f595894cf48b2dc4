import Foundation
import Logging
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Writes every record as one JSON object per line to standard output (local mode) and/or an audit file.
///
/// `record` only enqueues, so event loops never wait on a slow terminal or disk; the service's `run` does the
/// encoding and writing. On graceful shutdown it writes everything still queued before returning, so it must
/// be placed before the proxy in the `ServiceGroup` (services shut down in reverse order).
public final class LocalActionLog: ActionSink, Service {
    /// Where the lines go.
    public struct Destinations: Sendable {
        public var standardOutput: Bool
        public var auditLogPath: String?

        public init(standardOutput: Bool, auditLogPath: String?) {
            self.standardOutput = standardOutput
            self.auditLogPath = auditLogPath
        }
    }

    /// The audit file could not be opened.
    public struct OpenError: Error, CustomStringConvertible {
        public var path: String
        public var reason: String
        public var description: String { "cannot open \(path): \(reason)" }
    }

    /// Records queued at most before new ones are counted as dropped (and the drop itself is logged).
    public static let defaultQueueLimit = 100_000

    private let stream: AsyncStream<ActionRecord>
    private let continuation: AsyncStream<ActionRecord>.Continuation
    private let destinations: Destinations
    private let auditFD: Int32?
    private let logger: Logger
    private let dropped = DropCounter()

    /// Opens the audit file (created with mode 0600, appended to) before anything is accepted.
    public init(destinations: Destinations, queueLimit: Int = defaultQueueLimit, logger: Logger) throws {
        (self.stream, self.continuation) = AsyncStream.makeStream(
            of: ActionRecord.self,
            bufferingPolicy: .bufferingOldest(queueLimit)
        )
        self.destinations = destinations
        self.logger = logger
        if let path = destinations.auditLogPath {
            let fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o600)
            guard fd >= 0 else {
                throw OpenError(path: path, reason: String(cString: strerror(errno)))
            }
            self.auditFD = fd
        } else {
            self.auditFD = nil
        }
    }

    deinit {
        if let auditFD { close(auditFD) }
    }

    public func record(_ record: ActionRecord) {
        if case .dropped = continuation.yield(record) {
            dropped.increment()
        }
    }

    public func run() async throws {
        await withGracefulShutdownHandler {
            for await record in stream {
                write(record)
                let lost = dropped.take()
                if lost > 0 {
                    logger.error(
                        "local action log could not keep up; records were dropped",
                        metadata: ["dropped": "\(lost)"]
                    )
                }
            }
        } onGracefulShutdown: { [continuation] in
            continuation.finish()
        }
    }

    /// Stops taking records; `run` returns once the queue is written.
    public func finish() {
        continuation.finish()
    }

    private func write(_ record: ActionRecord) {
        let line = record.jsonLine()
        if destinations.standardOutput {
            writeAll(fd: STDOUT_FILENO, line, name: "standard output")
        }
        if let auditFD {
            writeAll(fd: auditFD, line, name: destinations.auditLogPath ?? "audit log")
        }
    }

    private func writeAll(fd: Int32, _ bytes: [UInt8], name: String) {
        bytes.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = systemWrite(fd, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    logger.error(
                        "cannot write an action record",
                        metadata: ["to": "\(name)", "error": "\(String(cString: strerror(errno)))"]
                    )
                    return
                }
                offset += written
            }
        }
    }
}

/// Counts records the queue refused, across threads.
private final class DropCounter: @unchecked Sendable {
    // Guarded by `lock`: incremented on event loops, taken by the writer.
    private let lock = NSLock()
    private var count = 0

    func increment() {
        lock.lock()
        count += 1
        lock.unlock()
    }

    func take() -> Int {
        lock.lock()
        defer { count = 0; lock.unlock() }
        return count
    }
}

/// `write(2)`, named apart from the methods above.
private func systemWrite(_ fd: Int32, _ pointer: UnsafeRawPointer, _ count: Int) -> Int {
    write(fd, pointer, count)
}
