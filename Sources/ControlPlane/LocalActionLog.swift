import Logging
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Local mode: writes every record as one JSON object per line to standard output.
///
/// `record` only appends to an in-memory queue, so event loops never wait on a slow terminal or pipe. The
/// service's `run` takes the whole queue at once, encodes it and writes it with one `write`: under load many
/// records share one wake-up and one system call. On graceful shutdown it writes everything still queued before
/// returning, so it must be placed before the proxy in the `ServiceGroup` (services shut down in reverse order).
/// The tamper-evident file copy is the Audit module's `AuditLog`.
public final class LocalActionLog: ActionSink, Service {
    /// Records queued at most before new ones are counted as dropped (and the drop itself is logged).
    public static let defaultQueueLimit = 100_000

    /// How long the writer waits after the first record of a batch before writing it.
    static let lingerAfterWakeUp: Duration = .milliseconds(20)

    private let queue: BatchQueue<ActionRecord>
    private let logger: Logger

    public init(queueLimit: Int = defaultQueueLimit, logger: Logger) {
        self.queue = BatchQueue(limit: queueLimit)
        self.logger = logger
    }

    public func record(_ record: ActionRecord) {
        queue.append(record)
    }

    public func run() async throws {
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                var broken: Set<Int32> = []  // destinations that failed for good (a closed pipe)
                while let batch = await nextBatch() {
                    write(batch, broken: &broken)
                }
            } onGracefulShutdown: {
                self.finish()
            }
        } onCancel: {
            self.finish()
        }
    }

    /// Stops taking records; `run` returns once the queue is written.
    public func finish() {
        queue.finish()
    }

    /// Everything queued, waiting for at least one record; `nil` once finished and empty.
    private func nextBatch() async -> [ActionRecord]? {
        while true {
            let finished = queue.isFinished  // read first: once finished, nothing more can be added
            let (batch, dropped) = queue.takeAll()
            if dropped > 0 {
                logger.error("local action log could not keep up; records were dropped", metadata: ["dropped": "\(dropped)"])
            }
            if !batch.isEmpty { return batch }
            if finished { return nil }
            await queue.waitForItems()
            // Group commit: let the records of the next moment join this one's batch, so a busy proxy wakes
            // this task and calls write(2) hundreds of times a second, not once per connection.
            if !queue.isFinished {
                try? await Task.sleep(for: Self.lingerAfterWakeUp)
            }
        }
    }

    private func write(_ batch: [ActionRecord], broken: inout Set<Int32>) {
        var json = JSONWriter(capacity: batch.count * 1024)  // an inspected request's action is about 1,000 bytes
        for record in batch {
            record.writeJSONLine(to: &json)
        }
        json.withUnsafeBytes { writeAll(fd: STDOUT_FILENO, $0, name: "standard output", broken: &broken) }
    }

    /// Writes everything, retrying short writes. A reader that went away (EPIPE) is given up on with one log
    /// line; other errors are logged per batch and retried with the next one.
    private func writeAll(fd: Int32, _ bytes: UnsafeRawBufferPointer, name: String, broken: inout Set<Int32>) {
        guard !broken.contains(fd) else { return }
        let failure = FileIO.writeFully(fd, bytes)
        guard let failure else { return }
        if failure == EPIPE {
            broken.insert(fd)
            logger.error("\(name) was closed; action records are no longer written there", metadata: ["to": "\(name)"])
        } else {
            logger.error(
                "cannot write action records",
                metadata: ["to": "\(name)", "error": "\(String(cString: strerror(failure)))"]
            )
        }
    }
}
