public import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// `KAIZEN_LOG_FORMAT=text` (the default): swift-log's stream format,
/// `2026-11-27T02:31:32+0000 info kaizen-egress: key=value … [source] message`, metadata sorted, times in UTC,
/// written through `LogOutput` (batched) instead of one unbuffered write per line.
public struct TextLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level
    private let label: String
    private let output: LogOutput

    public init(label: String, level: Logger.Level, output: LogOutput = .standardError) {
        self.label = label
        self.logLevel = level
        self.output = output
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = ""
        line.reserveCapacity(256)
        line += Self.timestamp()
        line += " "
        line += event.level.rawValue
        line += " "
        line += label
        line += ":"
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { $1 } }
        for key in merged.keys.sorted() {
            line += " "
            line += key
            line += "="
            line += merged[key]!.description
        }
        line += " ["
        line += event.source
        line += "] "
        line += event.message.description
        output.write(Array(line.utf8), urgent: event.level >= .warning)
    }

    /// `2026-11-27T02:31:32+0000`, UTC, formatted once per second.
    private static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return cache.withLock { cache in
            if cache.second == now.tv_sec { return cache.text }
            var seconds = now.tv_sec
            var parts = tm()
            gmtime_r(&seconds, &parts)
            func two(_ value: Int32) -> String { value < 10 ? "0\(value)" : "\(value)" }
            let text = "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec))+0000"
            cache = (now.tv_sec, text)
            return text
        }
    }

    private static let cache = Mutex<(second: Int, text: String)>((-1, ""))
}
