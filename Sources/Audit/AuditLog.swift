public import ControlPlane
public import Logging
public import ServiceLifecycle
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One value of the settings a start or reload record carries: a string, or a list (a JSON array, so that no item
/// needs a separator it could itself contain).
public enum AuditSetting: Sendable, Hashable, ExpressibleByStringLiteral, CustomStringConvertible {
    case text(String)
    case list([String])

    public init(stringLiteral value: String) { self = .text(value) }

    public var description: String {
        switch self {
        case .text(let text): text
        case .list(let items): "[\(items.joined(separator: ", "))]"
        }
    }

    func write(to json: inout JSONWriter) {
        switch self {
        case .text(let text): json.string(text)
        case .list(let items):
            json.beginArray()
            for item in items { json.string(item) }
            json.endArray()
        }
    }
}

/// The tamper-evident audit log (`KAIZEN_AUDIT_LOG`): every action and close record as a hash-chained JSON line.
///
/// Besides the records, the chain holds the log's own events, so a reviewer sees them in order with the traffic:
/// `{"seq":…,"prev_sha256":…,"schema_version":"1","audit":{"event":"start","at":…,"settings":{…}}}` when the
/// proxy starts (with what it is set to capture), `"event":"dropped"` if records were lost because the disk could
/// not keep up, and `"event":"stop"` on a clean shutdown.
///
/// `record` only queues. The service's task writes each batch with one `write(2)`, fsyncs and rewrites the head
/// file every `fsyncInterval` (zero: after every batch), and rotates by size. Like `LocalActionLog`, it must be
/// placed before the proxy in the `ServiceGroup` so that it writes everything queued before it stops.
public final class AuditLog: ActionSink, Service {
    public struct Configuration: Sendable {
        public var path: String
        /// Rotate when the current file would grow past this; zero never rotates.
        public var maxBytes: Int64
        public var fsyncInterval: Duration
        /// What the proxy is set to capture, written into the start record (`inspection`, `report_query`, …).
        public var settings: [(String, AuditSetting)]

        public init(path: String, maxBytes: Int64, fsyncInterval: Duration, settings: [(String, AuditSetting)]) {
            self.path = path
            self.maxBytes = maxBytes
            self.fsyncInterval = fsyncInterval
            self.settings = settings
        }
    }

    public static let defaultMaxBytes: Int64 = 100 << 20
    public static let defaultFsyncInterval: Duration = .seconds(1)
    static let queueLimit = 100_000

    private let queue: BatchQueue<ActionRecord>
    private let writer: Mutex<AuditFileWriter>
    private let configuration: Configuration
    private let logger: Logger
    /// Reload events waiting for the writer.
    private let reloads = Mutex<[[(String, AuditSetting)]]>([])

    /// Opens the log, continues its chain and writes the start record.
    public init(configuration: Configuration, logger: Logger) throws(AuditFileError) {
        var writer = try AuditFileWriter(paths: AuditPaths.resolving(configuration.path), maxBytes: configuration.maxBytes)
        if let cut = writer.truncatedTail {
            logger.warning(
                "the audit log ended in an unfinished line (the proxy stopped mid-write); it was cut off and the start record says so",
                metadata: ["file": "\(configuration.path)", "bytes": "\(cut.bytes)"]
            )
        }
        var json = JSONWriter()
        json.beginObject()
        json.field("schema_version", "1")
        json.key("audit")
        json.beginObject()
        json.field("event", "start")
        json.field("at", WallClock.rfc3339(unixMillis: WallClock.nowMillis()))
        json.field("pid", Int(getpid()))
        if let cut = writer.truncatedTail {
            // An unfinished line (never part of the chain) was cut off the end: its length and hash stay on record.
            json.key("truncated_incomplete_line")
            json.beginObject()
            json.field("bytes", cut.bytes)
            json.field("sha256", hexString(cut.sha256))
            json.endObject()
        }
        json.key("settings")
        json.beginObject()
        for (key, value) in configuration.settings {
            json.key(named: key)
            value.write(to: &json)
        }
        json.endObject()
        json.endObject()
        json.endObject()
        try writer.append([json.take()])
        try writer.sync(now: WallClock.rfc3339(unixMillis: WallClock.nowMillis()))
        self.writer = Mutex(writer)
        self.queue = BatchQueue(limit: Self.queueLimit)
        self.configuration = configuration
        self.logger = logger
    }

    public func record(_ record: ActionRecord) {
        queue.append(record)
    }

    /// A reload (SIGHUP) was applied: `{"audit":{"event":"reload","at":…,"settings":{…}}}` with the capture settings
    /// in force from then on (changed or not), in the chain between the records before and after it.
    public func recordReload(settings: [(String, AuditSetting)]) {
        reloads.withLock { $0.append(settings) }
        queue.wake()
    }

    /// The last sequence number written and that line's hash, as the head file will hold them.
    public var position: (sequence: UInt64, hash: String) {
        writer.withLock { ($0.chain.nextSequence - 1, hexString($0.chain.previousHash)) }
    }

    public func run() async throws {
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                await writeUntilFinished()
            } onGracefulShutdown: {
                self.queue.finish()
            }
        } onCancel: {
            self.queue.finish()
        }
    }

    private func writeUntilFinished() async {
        let clock = ContinuousClock()
        var lastSync = clock.now
        var failing = false
        var lost = 0  // records that could not be written; a `dropped` record says so once writing works again
        while true {
            let finished = queue.isFinished
            let (batch, dropped) = queue.takeAll()
            var lines: [[UInt8]] = []
            lines.reserveCapacity(batch.count + 1)
            if dropped > 0 {
                logger.error("the audit log could not keep up; records were dropped", metadata: ["dropped": "\(dropped)"])
            }
            if dropped + lost > 0 {
                lines.append(Self.eventRecord("dropped", extra: [("records", dropped + lost)]))
            }
            let reloaded = reloads.withLock { pending in
                defer { pending = [] }
                return pending
            }
            for settings in reloaded {
                lines.append(Self.eventRecord("reload", extra: [], settings: settings))
            }
            for record in batch {
                var json = JSONWriter()
                switch record {
                case .action(let action): action.writeJSON(to: &json)
                case .close(let close): close.writeJSON(to: &json)
                }
                lines.append(json.take())
            }
            if finished {
                lines.append(Self.eventRecord("stop", extra: []))
            }
            if !lines.isEmpty {
                let hasEvent = dropped + lost > 0
                // Event lines (a dropped record, reload records) come before the batch's records.
                let eventLines = (hasEvent ? 1 : 0) + reloaded.count
                failing = write(lines, failing: failing)
                if failing {
                    // The batch's records that did not reach the file.
                    let written = writer.withLock { $0.linesWrittenByLastAppend }
                    let recordsWritten = max(0, written - eventLines)
                    lost = (hasEvent && written == 0 ? lost + dropped : 0) + (lines.count - eventLines) - recordsWritten
                } else {
                    lost = 0
                }
            }
            if finished || clock.now - lastSync >= configuration.fsyncInterval {
                sync()
                lastSync = clock.now
            }
            if finished {
                let (sequence, hash) = position
                logger.info("audit log closed", metadata: ["file": "\(configuration.path)", "seq": "\(sequence)", "sha256": "\(hash)"])
                return
            }
            if queue.count == 0 {
                // Wake for new records, or for the next fsync when some are not yet on disk.
                if configuration.fsyncInterval > .zero, writer.withLock({ $0.hasUnsyncedLines }) {
                    let interval = configuration.fsyncInterval
                    let timer = Task { [queue] in
                        try await Task.sleep(for: interval)
                        queue.wake()
                    }
                    await queue.waitForItems()
                    timer.cancel()
                } else {
                    await queue.waitForItems()
                }
                if !queue.isFinished {
                    try? await Task.sleep(for: .milliseconds(2))  // let the moment's records share one write
                }
            }
        }
    }

    /// Writes `lines`; logs the first failure of a run of them, and the recovery.
    private func write(_ lines: [[UInt8]], failing: Bool) -> Bool {
        do {
            try writer.withLock { try $0.append(lines) }
            if failing { logger.notice("the audit log is being written again", metadata: ["file": "\(configuration.path)"]) }
            return false
        } catch {
            if !failing {
                logger.error(
                    "cannot write the audit log; records are lost until it can be written",
                    metadata: ["file": "\(configuration.path)", "error": "\(error)", "records": "\(lines.count)"]
                )
            }
            return true
        }
    }

    private func sync() {
        do {
            try writer.withLock { try $0.sync(now: WallClock.rfc3339(unixMillis: WallClock.nowMillis())) }
        } catch {
            logger.error("cannot sync the audit log", metadata: ["file": "\(configuration.path)", "error": "\(error)"])
        }
    }

    static func eventRecord(_ event: String, extra: [(String, Int)], settings: [(String, AuditSetting)]? = nil) -> [UInt8] {
        var json = JSONWriter()
        json.beginObject()
        json.field("schema_version", "1")
        json.key("audit")
        json.beginObject()
        json.field("event", event)
        json.field("at", WallClock.rfc3339(unixMillis: WallClock.nowMillis()))
        for (key, value) in extra {
            json.key(named: key)
            json.int(value)
        }
        if let settings {
            json.key("settings")
            json.beginObject()
            for (key, value) in settings {
                json.key(named: key)
                value.write(to: &json)
            }
            json.endObject()
        }
        json.endObject()
        json.endObject()
        return json.take()
    }
}
